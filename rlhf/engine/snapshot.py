"""Undo an update: a per-rank, in-memory copy of everything a DeepSpeed optimizer step changes.

PPO applies an update as many optimizer steps (minibatch epochs); when a later one meets a non-finite loss, or the
other trained role's update fails, the whole update must be undone, not left half applied. ``take`` copies, on
this rank and to CPU memory: the module's parameters as this rank holds them (ZeRO-3: its partition), the base
optimizer's parameters (ZeRO's fp32 master partitions) and state (Adam moments, step), the LR scheduler, the fp16
loss scaler and the engine's step counters. ``restore`` writes them back in place and drops any gradient
accumulated since. No collective is involved: each rank restores its own shard.

Cost: one extra CPU copy of this rank's share of weights + optimizer state, taken once per update.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

COUNTERS = ("global_steps", "global_samples", "micro_steps", "skipped_steps")


def base_optimizer(engine) -> torch.optim.Optimizer | None:
    """The torch optimizer under DeepSpeed's wrappers (ZeRO, bf16), which owns the master weights and state."""
    opt = engine.optimizer
    while opt is not None and not isinstance(opt, torch.optim.Optimizer):
        opt = getattr(opt, "optimizer", None)
    return opt


def master_params(engine) -> list[torch.Tensor]:
    """The tensors the optimizer step updates and keys its state by: ZeRO-3's fp32 partitions (it puts them in the
    torch optimizer's groups only during a step), else the torch optimizer's own parameters."""
    flat = getattr(engine.optimizer, "fp32_partitioned_groups_flat", None)
    if flat is not None:
        return list(flat)
    opt = base_optimizer(engine)
    return [p for g in opt.param_groups for p in g["params"]] if opt is not None else []


def local_param_data(param: torch.nn.Parameter) -> torch.Tensor:
    """The storage this rank holds for ``param``: its ZeRO-3 partition, or the whole tensor."""
    return param.ds_tensor if hasattr(param, "ds_tensor") else param.data


def _cpu_copy(x: Any) -> Any:
    if torch.is_tensor(x):
        return x.detach().to("cpu", copy=True)
    return copy.deepcopy(x)


def _write(dst: torch.Tensor, src: torch.Tensor) -> None:
    with torch.no_grad():
        dst.copy_(src.to(dst.device, non_blocking=False))


@dataclass
class Snapshot:
    tensors: list[tuple[torch.Tensor, torch.Tensor]]  # (live tensor, CPU copy)
    optim_state: dict[int, dict[str, Any]]  # base optimizer param index -> its state (CPU copies)
    group_settings: list[dict[str, Any]]  # each param group's hyperparameters (lr as the scheduler last set it)
    scheduler: dict | None
    counters: dict[str, int]
    micro_step_id: int | None
    loss_scaler: dict | None


def take(engine) -> Snapshot:
    seen: set[int] = set()
    tensors = []

    def keep(t: torch.Tensor) -> None:
        if t.data_ptr() not in seen and t.numel():
            seen.add(t.data_ptr())
            tensors.append((t, _cpu_copy(t)))

    for p in engine.module.parameters():
        if p.requires_grad:
            keep(local_param_data(p))
    opt = base_optimizer(engine)
    optim_state: dict[int, dict[str, Any]] = {}
    group_settings = [copy.deepcopy({k: v for k, v in g.items() if k != "params"}) for g in opt.param_groups] if opt else []
    if opt is not None:
        for i, p in enumerate(master_params(engine)):
            keep(p.data)
            if p in opt.state:
                optim_state[i] = {k: _cpu_copy(v) for k, v in opt.state[p].items()}
    scaler = getattr(engine.optimizer, "loss_scaler", None)
    return Snapshot(
        tensors=tensors,
        optim_state=optim_state,
        group_settings=group_settings,
        scheduler=copy.deepcopy(engine.lr_scheduler.state_dict()) if engine.lr_scheduler is not None else None,
        counters={k: getattr(engine, k) for k in COUNTERS if hasattr(engine, k)},
        micro_step_id=getattr(engine.optimizer, "micro_step_id", None),
        loss_scaler=copy.deepcopy(vars(scaler)) if scaler is not None else None,
    )


def restore(engine, snap: Snapshot) -> None:
    """Put ``engine`` back to the moment of ``take``; gradients accumulated since are dropped."""
    for live, saved in snap.tensors:
        _write(live, saved)
    opt = base_optimizer(engine)
    if opt is not None:
        for group, settings in zip(opt.param_groups, snap.group_settings):
            group.update(copy.deepcopy(settings))
        for i, p in enumerate(master_params(engine)):
            if i not in snap.optim_state:
                opt.state.pop(p, None)  # no state yet at snapshot time (before the first step)
                continue
            state = opt.state[p]
            for k, v in snap.optim_state[i].items():
                if torch.is_tensor(v) and torch.is_tensor(state.get(k)) and state[k].shape == v.shape:
                    _write(state[k], v)
                else:
                    state[k] = v.to(p.device) if torch.is_tensor(v) and v.dim() else copy.deepcopy(v)
    if snap.scheduler is not None:
        engine.lr_scheduler.load_state_dict(snap.scheduler)
    for k, v in snap.counters.items():
        setattr(engine, k, v)
    if snap.micro_step_id is not None:
        engine.optimizer.micro_step_id = snap.micro_step_id  # the next backward overwrites, not adds to, grad buffers
    if snap.loss_scaler is not None:
        vars(engine.optimizer.loss_scaler).update(copy.deepcopy(snap.loss_scaler))
    engine.optimizer.zero_grad(set_to_none=True)
    if hasattr(engine.optimizer, "_release_ipg_buffers"):
        # ZeRO-1/2's gradient partition buffer and its fill offset: an accumulation cut short leaves them mid-way,
        # and the next backward would append after the stale gradients (DeepSpeed releases them at a step).
        engine.optimizer._release_ipg_buffers()
    for name in ("all_grad_tensors", "averaged_gradients"):  # ZeRO-1/2's per-group gradient accumulators
        if isinstance(getattr(engine.optimizer, name, None), dict):
            setattr(engine.optimizer, name, {})
    if hasattr(engine.optimizer, "clear_hp_grads"):  # bf16 optimizer's fp32 gradient accumulators
        engine.optimizer.clear_hp_grads()
