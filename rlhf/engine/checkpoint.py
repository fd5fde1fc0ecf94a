"""Saving and restoring: HF model dirs (ZeRO-3 consolidated) and DeepSpeed state with per-rank RNG."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from rlhf.engine.collectives import barrier, rank

LATEST = "latest"  # DeepSpeed writes this file last, naming the newest complete tag


def full_state_dict(engine) -> dict[str, torch.Tensor] | None:
    """The whole model's weights on rank 0 (None elsewhere). Every rank must call this: ZeRO-3 gathers shards."""
    if engine.zero_optimization_stage() == 3:
        sd = engine._zero3_consolidated_16bit_state_dict()
        return sd if rank() == 0 else None
    if rank() != 0:
        return None
    return {k: v.detach().cpu() for k, v in engine.module.state_dict().items()}


def save_hf_dir(model: torch.nn.Module, state_dict: dict, tokenizer, out_dir: str | Path, extra_config: dict | None = None) -> Path:
    """Write an HF dir (config, safetensors, tokenizer) that plain ``from_pretrained`` loads; atomic by rename."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    state_dict = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    if extra_config:
        for key, value in extra_config.items():
            setattr(model.config, key, value)
    model.save_pretrained(tmp, state_dict=state_dict, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_training_state(engine, ckpt_root: Path, step: int, client_state: dict) -> Path:
    """DeepSpeed state (model, optimizer, scheduler) under ckpt_root/step_N plus this rank's RNG.

    RNG files go first; DeepSpeed writes ``latest`` after its own files, so a kill mid-save leaves the previous
    checkpoint as the one resume picks.
    """
    tag = f"step_{step}"
    (ckpt_root / tag).mkdir(parents=True, exist_ok=True)
    torch.save(rng_state(), ckpt_root / tag / f"rng_rank{rank()}.pt")
    barrier()
    engine.save_checkpoint(str(ckpt_root), tag=tag, client_state=dict(client_state, step=step))
    barrier()
    return ckpt_root / tag


def latest_tag(ckpt_root: Path) -> str | None:
    p = ckpt_root / LATEST
    if not p.is_file():
        return None
    tag = p.read_text().strip()
    return tag if (ckpt_root / tag).is_dir() else None


def load_training_state(engine, ckpt_root: Path) -> dict | None:
    """Restore the newest checkpoint into ``engine``; returns its client state (with "step"), or None if there is none."""
    tag = latest_tag(ckpt_root)
    if tag is None:
        return None
    _, client_state = engine.load_checkpoint(str(ckpt_root), tag=tag)
    rng_file = ckpt_root / tag / f"rng_rank{rank()}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    return client_state


def prune_checkpoints(ckpt_root: Path, keep: int) -> None:
    """Keep the newest ``keep`` step_N dirs (rank 0 only)."""
    if rank() != 0:
        return
    tags = sorted((p for p in ckpt_root.glob("step_*") if p.is_dir()), key=lambda p: int(p.name.split("_")[1]))
    for old in tags[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
