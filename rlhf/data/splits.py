"""Train/eval splits and the tokenized example files a stage hands its workers."""

from __future__ import annotations

import random
from pathlib import Path
from typing import TypeVar

import torch

T = TypeVar("T")


def split_eval(items: list[T], fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """A seeded hold-out: (train, eval). At least one eval item when fraction > 0 and there are 2+ items."""
    if fraction <= 0 or len(items) < 2:
        return list(items), []
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    n_eval = min(len(items) - 1, max(1, round(fraction * len(items))))
    held = set(order[:n_eval])
    return [x for i, x in enumerate(items) if i not in held], [items[i] for i in sorted(held)]


def examples_path(out: str | Path, split: str) -> Path:
    return Path(out) / "data" / f"{split}.pt"


def save_examples(out: str | Path, split: str, examples: list[dict]) -> Path:
    """Tokenized examples as one torch file under OUT/data/ (workers read it; OUT is shared storage on a cluster)."""
    path = examples_path(out, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(examples, tmp)
    tmp.replace(path)
    return path


def load_examples(out: str | Path, split: str) -> list[dict]:
    path = examples_path(out, split)
    return torch.load(path, weights_only=False) if path.is_file() else []
