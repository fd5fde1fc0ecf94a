"""Load any LLaMA-architecture model by HF id, local dir, or embedded name."""

from __future__ import annotations

from pathlib import Path

import torch

from rlhf.errors import UserError
from rlhf.models import tiny
from rlhf.paths import resolve_path


def looks_local(path: str) -> bool:
    return path.startswith(("/", "./", "../", "~")) or Path(path).exists() or path.count("/") != 1


def resolve_model_path(path: str, tokenizer: str | None = None) -> str:
    """Embedded names are built; local paths must exist; anything else is a hub id left to transformers."""
    if tiny.is_embedded(path):
        return tiny.materialize(path, tokenizer)
    p = resolve_path(path)
    if p.exists():
        if not (p / "config.json").is_file():
            raise UserError(f"model path {path} has no config.json (not an HF model dir)")
        return str(p)
    if looks_local(path):
        raise UserError(f"model path does not exist: {path}")
    return path


def torch_dtype(precision: str) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, torch.float32)


def load_pretrained(cls, path: str, dtype: torch.dtype = torch.float32, **kwargs):
    """``cls.from_pretrained`` with hub/offline failures turned into one-line errors."""
    try:
        return cls.from_pretrained(path, dtype=dtype, **kwargs)
    except OSError as err:
        raise UserError(f"cannot load model '{path}': {str(err).splitlines()[0]}") from None


def load_causal_lm(path: str, dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM

    return load_pretrained(AutoModelForCausalLM, path, dtype)
