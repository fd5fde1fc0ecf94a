"""A LLaMA-architecture model's shape and parameter counts from its config alone: never from its weights.

The shape comes from a local dir's ``config.json``, an ``embedded:<name>`` (rlhf.models.tiny.SIZES plus the embedded
tokenizer's vocabulary), or, for hub ids (which cannot be fetched offline), the published configs of the LLaMA
family below. Parameter counts follow ``LlamaForCausalLM`` module by module (no biases, two RMSNorms per layer, an
untied LM head unless ``tie_word_embeddings``); tests check them against the published totals.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from rlhf.errors import UserError
from rlhf.models import tiny
from rlhf.paths import resolve_path

# Published HF configs (config.json of each hub repo), for planning without network access.
_LLAMA2_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=32, vocab_size=32000)
_LLAMA2_13B = dict(hidden_size=5120, intermediate_size=13824, num_hidden_layers=40, num_attention_heads=40,
                   num_key_value_heads=40, vocab_size=32000)
_LLAMA2_70B = dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                   num_key_value_heads=8, vocab_size=32000)
_LLAMA3_8B = dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=8, vocab_size=128256)
_LLAMA3_70B = dict(_LLAMA2_70B, vocab_size=128256)
_TINYLLAMA = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                  num_key_value_heads=4, vocab_size=32000)
KNOWN: dict[str, dict] = {
    "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T": _TINYLLAMA,
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0": _TINYLLAMA,
    "huggyllama/llama-7b": _LLAMA2_7B,  # LLaMA-1 7B has Llama-2-7B's shape
    "huggyllama/llama-13b": _LLAMA2_13B,
    "meta-llama/Llama-2-7b-hf": _LLAMA2_7B,
    "meta-llama/Llama-2-7b-chat-hf": _LLAMA2_7B,
    "meta-llama/Llama-2-13b-hf": _LLAMA2_13B,
    "meta-llama/Llama-2-13b-chat-hf": _LLAMA2_13B,
    "meta-llama/Llama-2-70b-hf": _LLAMA2_70B,
    "meta-llama/Llama-2-70b-chat-hf": _LLAMA2_70B,
    "meta-llama/Meta-Llama-3-8B": _LLAMA3_8B,
    "meta-llama/Meta-Llama-3-8B-Instruct": _LLAMA3_8B,
    "meta-llama/Llama-3.1-8B": _LLAMA3_8B,
    "meta-llama/Llama-3.1-8B-Instruct": _LLAMA3_8B,
    "meta-llama/Meta-Llama-3-70B": _LLAMA3_70B,
    "meta-llama/Meta-Llama-3-70B-Instruct": _LLAMA3_70B,
    "meta-llama/Llama-3.1-70B": _LLAMA3_70B,
    "meta-llama/Llama-3.1-70B-Instruct": _LLAMA3_70B,
}


@dataclass(frozen=True)
class ModelShape:
    """What the memory model needs of a decoder-only LLaMA: sizes, not weights."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    head_dim: int
    tie_word_embeddings: bool = False

    @property
    def kv_size(self) -> int:
        """Width of K (and of V): kv_heads * head_dim."""
        return self.num_key_value_heads * self.head_dim

    @property
    def layer_params(self) -> int:
        """One decoder layer: q, k, v, o projections, the SwiGLU MLP (gate, up, down) and two RMSNorm weights."""
        h, i = self.hidden_size, self.intermediate_size
        attn = h * self.num_attention_heads * self.head_dim * 2 + h * self.kv_size * 2
        return attn + 3 * h * i + 2 * h

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    def body_params(self) -> int:
        """Embeddings + layers + final norm: everything but the head."""
        return self.embedding_params + self.num_hidden_layers * self.layer_params + self.hidden_size

    def causal_lm_params(self) -> int:
        """``LlamaForCausalLM``: the body plus the LM head (none of its own when tied)."""
        return self.body_params() + (0 if self.tie_word_embeddings else self.embedding_params)

    def value_model_params(self) -> int:
        """``LlamaForSequenceClassification`` with one label (reward model, critic): the body plus a [1, h] score head."""
        return self.body_params() + self.hidden_size

    def largest_layer_params(self) -> int:
        """The largest single module's own parameters (the embedding or one MLP Linear), as DeepSpeed's
        ``stage3.model_to_params`` counts them for its ZeRO-3 estimate."""
        return max(self.embedding_params, self.hidden_size * self.intermediate_size)

    def lora_params(self, r: int, target_modules: list[str]) -> int:
        """Adapter parameters: r * (in + out) for each targeted Linear of every layer (rlhf.models.lora)."""
        h, i, q = self.hidden_size, self.intermediate_size, self.num_attention_heads * self.head_dim
        dims = {"q_proj": (h, q), "k_proj": (h, self.kv_size), "v_proj": (h, self.kv_size), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}
        unknown = [m for m in target_modules if m not in dims]
        if unknown:
            raise UserError(f"lora.target_modules {unknown}: not a LLaMA Linear ({', '.join(dims)})")
        return self.num_hidden_layers * sum(r * sum(dims[m]) for m in target_modules)

    def to_dict(self) -> dict:
        return {**asdict(self), "causal_lm_params": self.causal_lm_params()}


def shape_from_config(name: str, config: dict) -> ModelShape:
    """A ``config.json`` mapping -> ModelShape; a non-LLaMA-shaped config is a one-line error."""
    need = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
    missing = [k for k in need if k not in config]
    if missing:
        raise UserError(f"{name}: config has no {', '.join(missing)} (not a LLaMA-architecture model)")
    heads = int(config["num_attention_heads"])
    return ModelShape(
        name=name,
        hidden_size=int(config["hidden_size"]),
        intermediate_size=int(config["intermediate_size"]),
        num_hidden_layers=int(config["num_hidden_layers"]),
        num_attention_heads=heads,
        num_key_value_heads=int(config.get("num_key_value_heads") or heads),
        vocab_size=int(config["vocab_size"]),
        head_dim=int(config.get("head_dim") or config["hidden_size"] // heads),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
    )


def embedded_vocab_size(tokenizer: str | None) -> int:
    """The vocabulary an embedded model is built with (the tokenizer's length; a tokenizer is not weights)."""
    from rlhf.models.tokenizer import EMBEDDED_TOKENIZER, load_tokenizer

    return len(load_tokenizer(tokenizer or EMBEDDED_TOKENIZER))


def model_shape(path: str, tokenizer: str | None = None) -> ModelShape:
    """``embedded:<name>``, a local HF dir (its config.json) or a known hub id -> ModelShape. Reads no weights."""
    if tiny.is_embedded(path):
        name = path[len(tiny.PREFIX):]
        if name not in tiny.SIZES:
            raise UserError(f"unknown embedded model '{path}'; choose one of: "
                            f"{', '.join(tiny.PREFIX + n for n in tiny.SIZES)}")
        return shape_from_config(path, {**tiny.SIZES[name], "vocab_size": embedded_vocab_size(tokenizer)})
    local = resolve_path(path)
    if (local / "config.json").is_file():
        try:
            config = json.loads((local / "config.json").read_text())
        except json.JSONDecodeError:
            raise UserError(f"{local / 'config.json'}: not valid JSON") from None
        return shape_from_config(path, config)
    if local.exists():
        raise UserError(f"model path {path} has no config.json (not an HF model dir)")
    if path in KNOWN:
        return shape_from_config(path, KNOWN[path])
    raise UserError(f"cannot plan for model '{path}': not a local HF dir and not a known hub id "
                    f"(known: {', '.join(sorted(KNOWN))}); download its config.json into a dir and give that")
