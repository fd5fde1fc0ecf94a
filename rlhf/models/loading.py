"""Load any LLaMA-architecture model by HF id, local dir, or embedded name."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Literal

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


# Weights of a model that only runs forward passes. "auto" = bf16 on a GPU, fp32 on a CPU (where bf16 matmuls are
# slow without AMX); "amp_bf16" (a training mode: fp32 weights, bf16 matmuls) loads fp32 weights.
InferencePrecision = Literal["auto", "fp32", "bf16", "fp16"]
INFERENCE_PRECISION_HELP = "weights of models that only run forward passes: auto = bf16 on GPU, fp32 on CPU"


def inference_device(device: str | torch.device = "auto") -> torch.device:
    """"auto" = this process's GPU when there is one (the current CUDA device), else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    return torch.device(device)


def inference_dtype(precision: str, device: str | torch.device) -> torch.dtype:
    """The dtype an inference model loads in for a stage's ``precision`` on ``device``."""
    if precision == "auto":
        return torch.bfloat16 if inference_device(device).type == "cuda" else torch.float32
    return torch_dtype(precision)


def load_for_inference(path: str, kind: Literal["causal_lm", "reward"] = "causal_lm", precision: str = "auto",
                       device: str | torch.device = "auto", **kwargs) -> torch.nn.Module:
    """Every frozen model (PPO reference and reward, eval policies and RM, collect teachers, chat server) loads
    here: in the stage's precision (``inference_dtype``), on ``device``, in eval mode with gradients off.
    ``kind="reward"`` takes ``load_reward_model``'s keywords (pad_token_id). ``device="keep"`` leaves the weights
    where loading put them (a ZeRO-3 partitioned load for an inference engine, dtype as on this rank's GPU)."""
    keep = str(device) == "keep"
    dev = inference_device("auto" if keep else device)
    dtype = inference_dtype(precision, dev)
    if kind == "reward":
        from rlhf.models.reward import load_reward_model

        model = load_reward_model(path, dtype, **kwargs)
    else:
        model = load_causal_lm(path, dtype)
    return (model if keep else model.to(dev)).eval().requires_grad_(False)


@contextmanager
def partitioned(ds_config: dict | None) -> Iterator[None]:
    """While active, ``from_pretrained`` builds a ZeRO-3 model already partitioned over the ranks: transformers sees
    its ``HfDeepSpeedConfig`` and wraps construction in ``deepspeed.zero.Init``, then loads each weight into its
    shards, so no rank ever holds the whole model. A no-op unless ``ds_config`` is a ZeRO stage-3 config; needs the
    process group to be up."""
    if not ds_config or ds_config.get("zero_optimization", {}).get("stage") != 3:
        yield
        return
    from transformers.integrations.deepspeed import HfDeepSpeedConfig, unset_hf_deepspeed_config

    hf_config = HfDeepSpeedConfig(ds_config)  # transformers keeps only a weak reference: hold it while loading
    try:
        yield
    finally:
        unset_hf_deepspeed_config()
        del hf_config
