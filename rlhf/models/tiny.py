"""Embedded LLaMA models built from a config, so every stage runs offline on a fresh checkout.

``embedded:<name>`` resolves to an HF dir under the cache, written once (deterministic weights from a fixed seed)
and then loaded through the same ``from_pretrained`` path as any hub or local model.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

from rlhf.errors import UserError
from rlhf.paths import cache_root

PREFIX = "embedded:"

# name -> LlamaConfig overrides. vocab_size comes from the tokenizer.
SIZES: dict[str, dict] = {
    # ~2.5M params: the default for tiny configs and tests.
    "tiny-llama": dict(hidden_size=192, intermediate_size=512, num_hidden_layers=4, num_attention_heads=6,
                       num_key_value_heads=6, max_position_embeddings=1024),
    # ~26M params (with the embedded tokenizer): the SFT throughput benchmark's model.
    "llama-25m": dict(hidden_size=512, intermediate_size=1280, num_hidden_layers=8, num_attention_heads=8,
                      num_key_value_heads=8, max_position_embeddings=2048),
    # ~1.1B params (TinyLlama shape): the GPU benchmark's model.
    "llama-1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                     num_key_value_heads=4, max_position_embeddings=2048),
}


def cache_dir() -> Path:
    return cache_root() / "embedded"


def is_embedded(path: str) -> bool:
    return path.startswith(PREFIX)


def llama_config(name: str, vocab_size: int, bos_id: int, eos_id: int, pad_id: int, **overrides):
    from transformers import LlamaConfig

    if name not in SIZES:
        raise UserError(f"unknown embedded model '{PREFIX}{name}'; choose one of: {', '.join(PREFIX + n for n in SIZES)}")
    return LlamaConfig(
        vocab_size=vocab_size, bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id,
        rms_norm_eps=1e-5, tie_word_embeddings=False, **{**SIZES[name], **overrides},
    )


def materialize(path: str, tokenizer_path: str | None = None, seed: int = 0) -> str:
    """``embedded:NAME[@tokenizer]`` -> a local HF dir (built on first use, atomically)."""
    import torch
    from transformers import LlamaForCausalLM

    from rlhf.models.tokenizer import EMBEDDED_TOKENIZER, load_tokenizer

    name = path[len(PREFIX):]
    tok_name = tokenizer_path or EMBEDDED_TOKENIZER
    tok_key = "embtok" if tok_name == EMBEDDED_TOKENIZER else hashlib.sha256(tok_name.encode()).hexdigest()[:10]
    key = f"{name}-{tok_key}-s{seed}"
    target = cache_dir() / key
    if (target / "config.json").is_file():
        return str(target)
    tok = load_tokenizer(tok_name)
    config = llama_config(name, len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # an internal build step: no shard-writing bar on the user's stderr
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tok.save_pretrained(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(tmp, target)
    except OSError:  # another process won the race; its copy is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return str(target)
