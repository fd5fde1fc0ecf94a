"""The reference policy's log-probs, computed once on the training workers before the first step and cached in
OUT (Rafailov et al. 2023 keep pi_ref fixed, so its log-probs are constants of the data).

The cache is ``OUT/reference_logps.pt``: ``{"fingerprint", "ids" [M], "logps" [M, 2]}`` keyed by example id over
the train and eval examples. A resumed run whose examples and reference are unchanged reuses it; anything else
recomputes it, with the weights the caller passes (the initial policy, before any checkpoint is loaded).
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Callable

import torch

from rlhf.engine import collectives

CACHE = "reference_logps.pt"


def fingerprint(examples: list[dict], reference: str) -> str:
    """Changes when any token of any example, or the reference model's path, does."""
    h = hashlib.sha256(reference.encode())
    for e in examples:
        h.update(repr((e["id"], e["ids"], e["resp"])).encode())
    return h.hexdigest()


def shard_logps(logps_fn: Callable[[list[dict]], torch.Tensor], examples: list[dict], micro: int) -> torch.Tensor:
    """[len(examples), 2] float64: each rank scores examples[rank::world] with ``logps_fn(chunk) -> [len(chunk), 2]``;
    a sum over ranks fills the table. Every rank runs the same number of batches (ZeRO-3 forwards are collective)."""
    rank, world = collectives.rank(), collectives.world_size()
    table = torch.zeros(len(examples), 2, dtype=torch.float64)
    mine = list(range(rank, len(examples), world))
    n_batches = math.ceil(math.ceil(len(examples) / world) / micro) if examples else 0
    with torch.no_grad():
        for b in range(n_batches):
            index = mine[b * micro:(b + 1) * micro]
            chunk = [examples[i] for i in index] or examples[:1]  # a filler batch keeps collectives in step
            values = logps_fn(chunk).to(torch.float64).cpu()
            if index:
                table[index] = values
    return collectives.all_reduce_sum_(table)


def load_or_compute(out: Path, examples: list[dict], reference: str,
                    logps_fn: Callable[[list[dict]], torch.Tensor], micro: int) -> dict[int, torch.Tensor]:
    """id -> [2] reference log-probs, from the cache when its fingerprint matches, else computed and written
    (rank 0) before every rank reads it back. Collective: every rank calls it."""
    path = out / CACHE
    key = fingerprint(examples, reference)
    cached = torch.load(path, weights_only=True) if path.is_file() else None
    if cached is None or cached.get("fingerprint") != key:
        table = shard_logps(logps_fn, examples, micro)
        if collectives.rank() == 0:
            tmp = path.with_suffix(".tmp")
            torch.save({"fingerprint": key, "ids": torch.tensor([e["id"] for e in examples], dtype=torch.long),
                        "logps": table.float()}, tmp)
            tmp.replace(path)
            print(f"[rlhf] dpo: reference log-probs of {len(examples)} examples -> {path}", flush=True)
        collectives.barrier()
        cached = torch.load(path, weights_only=True)
    elif collectives.rank() == 0:
        print(f"[rlhf] dpo: reusing reference log-probs from {path}", flush=True)
    return dict(zip(cached["ids"].tolist(), cached["logps"]))
