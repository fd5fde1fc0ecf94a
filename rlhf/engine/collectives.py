"""How the project talks across ranks: the one module that calls ``torch.distributed`` directly.

A process group serves some device types only: NCCL serves CUDA tensors and nothing else (torch maps "nccl" to
"cuda:nccl"), gloo serves CPU and CUDA. So a collective on a CPU tensor fails under NCCL ("No backend type
associated with device type cpu"); every tensor sent here is first placed on a device the group's backend serves
(``collective_device``). Outside a process group (or with one rank) every function is the identity.

Backends: ``auto`` is NCCL when each worker owns a whole GPU, gloo otherwise. NCCL refuses two ranks on one GPU
("Duplicate GPU detected"), so fractional GPUs per worker need gloo, which serves CUDA tensors as well.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.distributed as dist

Backend = Literal["auto", "nccl", "gloo"]


def resolve_backend(choice: str, on_gpu: bool, gpus_per_worker: float = 1.0) -> str:
    """The torch backend string for ``resources.backend``: gloo on CPU; on GPU, auto = NCCL for whole GPUs."""
    if not on_gpu:
        return "gloo"
    if choice == "auto":
        return "nccl" if gpus_per_worker >= 1 else "gloo"
    return choice


def active() -> bool:
    """True inside a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def served_device_types() -> list[str]:
    """Device types the default group's backend serves, from its public config: "cuda:nccl" -> ["cuda"]."""
    config = dist.get_backend_config()
    return [item.split(":", 1)[0] for item in config.split(",") if ":" in item] or ["cpu"]


def collective_device_type() -> str:
    """CPU when the backend serves it (values start on the CPU: no copy), else the first device type it serves."""
    types = served_device_types()
    return "cpu" if "cpu" in types else types[0]


def collective_device() -> torch.device:
    """Where this rank's collective tensors live: the CPU, or this rank's current accelerator (e.g. under NCCL)."""
    kind = collective_device_type()
    if kind == "cpu":
        return torch.device("cpu")
    return torch.device(kind, getattr(torch, kind).current_device())


def all_reduce_sums(values: dict[str, float]) -> dict[str, float]:
    """Sum a dict of floats over ranks (same keys on every rank), in float64."""
    if not active():
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=collective_device())
    dist.all_reduce(t)
    return dict(zip(keys, t.cpu().tolist()))


def all_reduce_sum_(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks in place (on whatever device it lives; it travels via the group's device) and return it."""
    if not active():
        return t
    on_wire = t.to(collective_device())
    dist.all_reduce(on_wire)
    if on_wire is not t:
        t.copy_(on_wire)
    return t


def all_true(flag: bool) -> bool:
    """True when ``flag`` is true on every rank (a MIN all-reduce): ranks that must act together agree."""
    if not active():
        return bool(flag)
    t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=collective_device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() == 1)


def all_finite(*tensors: torch.Tensor) -> bool:
    """True when every element of ``tensors`` is finite on every rank."""
    return all_true(all(bool(torch.isfinite(t.detach()).all()) for t in tensors))


def barrier() -> None:
    if active():
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (picklable objects; torch picks the group's object device)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
