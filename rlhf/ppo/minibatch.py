"""PPO's inner loop on one worker: minibatch epochs over its share of the rollout, with a non-finite-loss guard.

Schulman et al. 2017 (Algorithm 1): "optimize surrogate L wrt theta, with K epochs and minibatch size M <= NT".
Each epoch is a fresh permutation of the rows cut into minibatches, as in TRL's PPOTrainer and OpenRLHF.
One minibatch is one optimizer step (DeepSpeed gradient_accumulation_steps = 1), so a non-finite loss can skip
a step cleanly, before any gradient of it is accumulated.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.distributed as dist

from rlhf.engine.loop import all_reduce_sums
from rlhf.ppo.experience import Experience, map_tensors, select_rows

LossFn = Callable[[object, Experience], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def minibatch_order(n: int, size: int, epochs: int, seed: int) -> list[torch.Tensor]:
    """``epochs`` passes over rows 0..n-1, each a seeded permutation cut into n / size index tensors of ``size``."""
    if size < 1 or n % size:
        raise ValueError(f"{n} rows do not split into minibatches of {size}")
    g = torch.Generator().manual_seed(seed)
    order = []
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        order.extend(perm[i:i + size] for i in range(0, n, size))
    return order


def finite_everywhere(loss: torch.Tensor) -> bool:
    """True when ``loss`` is finite on every rank of the group (all ranks must skip together: ZeRO steps are collective)."""
    flag = torch.tensor([1.0 if bool(torch.isfinite(loss.detach()).all()) else 0.0])
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item() == 1.0)


def run_update(engine, experience: Experience, epochs: int, size: int, seed: int, loss_fn: LossFn,
               device: torch.device) -> dict[str, float]:
    """Minibatch epochs of ``loss_fn`` on this worker's rows; returns stats averaged over steps and ranks.

    ``size``: rows per minibatch on this worker. On a non-finite loss the remaining steps of this update are
    skipped (stats then carry ``nonfinite_loss`` = 1).
    """
    sums: dict[str, float] = {}
    steps, nonfinite = 0, 0.0
    for idx in minibatch_order(len(experience), size, epochs, seed):
        batch = map_tensors(select_rows(experience, idx), lambda t: t.to(device, non_blocking=True))
        loss, stats = loss_fn(engine, batch)
        if not finite_everywhere(loss):
            nonfinite = 1.0
            break
        engine.backward(loss)
        engine.step()
        steps += 1
        for k, v in dict(stats, loss=loss.detach()).items():
            sums[k] = sums.get(k, 0.0) + float(v)
    reduced = all_reduce_sums(dict(sums, _steps=float(steps)))
    total = max(reduced.pop("_steps"), 1.0)
    out = {k: v / total for k, v in reduced.items()}
    out["nonfinite_loss"] = nonfinite
    return out

