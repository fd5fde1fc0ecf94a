"""PPO's inner loop on one worker: minibatch epochs over its share of the rollout, applied whole or not at all.

Schulman et al. 2017 (Algorithm 1): "optimize surrogate L wrt theta, with K epochs and minibatch size M <= NT".
Each epoch is a fresh permutation of the rows cut into minibatches, as in TRL's PPOTrainer and OpenRLHF.
One minibatch is one optimizer step; a worker's share of it runs as ``micro``-row micro-batches with gradient
accumulation (DeepSpeed's gradient_accumulation_steps = rows per worker / micro; engine.step() steps at the
boundary). Each micro-batch's loss is weighted by its share of the minibatch's response tokens, so the
accumulated gradient is the one of the whole minibatch's token-mean loss.

Non-finite guard: before each backward, all ranks agree the loss is finite (``collectives.all_finite``). When it
is not, the update stops and the engine is put back to how it was before the update (``rlhf.engine.snapshot``):
weights, optimizer and scheduler state as if the update had never run.
"""

from __future__ import annotations

from typing import Callable

import torch

from rlhf.engine import snapshot
from rlhf.engine.collectives import all_finite, all_reduce_sums
from rlhf.ppo.experience import Experience, map_tensors, select_rows

# loss_fn(engine, batch) -> (loss, stats): loss a mean over the batch's response tokens, stats token means too.
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


def micro_weights(mask: torch.Tensor, micro: int) -> list[float]:
    """Each micro-batch's share of the minibatch's response tokens, times the number of micro-batches.

    mask: [M, R] response mask of one worker's minibatch, cut into M / micro consecutive micro-batches. DeepSpeed
    divides each micro-batch's loss by the accumulation steps; with these weights the accumulated gradient is that
    of the token mean over the whole minibatch. A minibatch without response tokens weights its micro-batches 1.
    """
    parts = mask.shape[0] // micro
    tokens = mask.reshape(parts, micro, -1).float().sum(dim=(1, 2))
    total = float(tokens.sum())
    if total == 0:
        return [1.0] * parts
    return [float(t) * parts / total for t in tokens]


def run_update(engine, experience: Experience, epochs: int, size: int, seed: int, loss_fn: LossFn,
               device: torch.device, micro: int | None = None, snap: snapshot.Snapshot | None = None
               ) -> dict[str, float]:
    """Minibatch epochs of ``loss_fn`` on this worker's rows; returns stats averaged over steps and ranks.

    ``size``: rows per minibatch on this worker; ``micro``: rows per forward/backward (default ``size``; must
    divide it and match the engine's gradient_accumulation_steps = size / micro). ``snap``: the engine's state
    before this update (taken here when not given). On a non-finite loss the engine is restored to ``snap`` and
    stats carry ``nonfinite_loss`` = 1.
    """
    micro = micro or size
    if size % micro:
        raise ValueError(f"a minibatch of {size} rows does not split into micro-batches of {micro}")
    snap = snap or snapshot.take(engine)
    sums: dict[str, float] = {}
    steps, nonfinite = 0, 0.0
    for idx in minibatch_order(len(experience), size, epochs, seed):
        batch = map_tensors(select_rows(experience, idx), lambda t: t.to(device, non_blocking=True))
        weights = micro_weights(batch.rollout.response_mask, micro)
        step_sums: dict[str, float] = {}
        for m, weight in enumerate(weights):
            loss, stats = loss_fn(engine, select_rows(batch, slice(m * micro, (m + 1) * micro)))
            if not all_finite(loss):
                nonfinite = 1.0
                break
            engine.backward(loss * weight)
            engine.step()  # DeepSpeed takes the optimizer step at the accumulation boundary only
            share = weight / len(weights)
            for k, v in dict(stats, loss=loss.detach()).items():
                step_sums[k] = step_sums.get(k, 0.0) + share * float(v)
        if nonfinite:
            snapshot.restore(engine, snap)
            sums, steps = {}, 0
            break
        steps += 1
        for k, v in step_sums.items():
            sums[k] = sums.get(k, 0.0) + v
    reduced = all_reduce_sums(dict(sums, _steps=float(steps)))
    total = max(reduced.pop("_steps"), 1.0)
    out = {k: v / total for k, v in reduced.items()}
    out["nonfinite_loss"] = nonfinite
    return out
