"""Two real ranks on 127.0.0.1: the collectives module under gloo and under a backend that serves CUDA only, and a
ZeRO-3 partitioned model load.

``cuda:gloo`` is gloo registered for CUDA tensors only: torch maps "nccl" the same way ("cuda:nccl"), so a
collective on a CPU tensor fails there exactly as it does under NCCL on a GPU cluster, without needing NCCL.
"""

from __future__ import annotations

import os
import socket
import traceback

import pytest
import torch
import torch.multiprocessing as mp

from tests.helpers import needs_loopback

pytestmark = needs_loopback()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, backend: str, fn_name: str, errors) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    try:
        if torch.cuda.is_available():
            torch.cuda.set_device(rank % torch.cuda.device_count())
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
        globals()[fn_name](rank, world)
    except BaseException:  # noqa: BLE001 - the parent reports every rank's failure
        errors.put(f"rank {rank}: {traceback.format_exc()}")
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def spawn(fn_name: str, backend: str = "gloo", world: int = 2) -> None:
    """Run ``fn_name(rank, world)`` on ``world`` processes in one process group; fail with every rank's traceback."""
    ctx = mp.get_context("spawn")
    errors = ctx.Queue()
    mp.start_processes(_rank_main, args=(world, free_port(), backend, fn_name, errors), nprocs=world,
                       join=True, start_method="spawn")
    failures = []
    while not errors.empty():
        failures.append(errors.get())
    assert not failures, "\n".join(failures)


def check_collectives(rank: int, world: int) -> None:
    from rlhf.engine import collectives

    sums = collectives.all_reduce_sums({"a": 1.0 + rank, "b": 10.0})
    assert sums == {"a": 3.0, "b": 20.0}, sums
    assert collectives.all_true(True)
    assert not collectives.all_true(rank == 0)  # one false rank makes every rank false
    assert not collectives.all_finite(torch.tensor(float("nan") if rank == 1 else 1.0))
    assert collectives.all_finite(torch.tensor(2.0))
    collectives.barrier()
    assert collectives.broadcast_object({"from": rank}) == {"from": 0}


def check_cuda_only_group(rank: int, world: int) -> None:
    import torch.distributed as dist

    from rlhf.engine import collectives

    assert collectives.served_device_types() == ["cuda"]
    assert collectives.collective_device_type() == "cuda"
    with pytest.raises(RuntimeError, match="device type cpu"):  # what the old CPU-tensor collectives did
        dist.all_reduce(torch.ones(1))
    if torch.cuda.is_available():  # with a GPU the whole module runs through the CUDA-only group
        check_collectives(rank, world)


def test_collectives_on_two_ranks() -> None:
    spawn("check_collectives", backend="gloo")


def test_collectives_use_the_device_the_backend_serves() -> None:
    """Before the fix ``all_reduce_sums`` and PPO's finite check all-reduced CPU tensors: under NCCL (here
    ``cuda:gloo``) they died with 'No backend type associated with device type cpu' at the first log step."""
    spawn("check_cuda_only_group", backend="cuda:gloo")
