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
        # Both ranks finish their collectives before either tears down: a rank that destroys the group (and exits)
        # while its peer is still inside a gloo collective aborted the peer once in CI ("terminate called without
        # an active exception"). (The CUDA-only group has no CPU barrier; its test runs no collective on CPU.)
        if backend == "gloo":
            dist.barrier()
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
    table = torch.full((2, 2), float(rank + 1), dtype=torch.float64)
    assert collectives.all_reduce_sum_(table) is table and torch.equal(table, torch.full((2, 2), 3.0, dtype=torch.float64))
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


def check_zero3_partitioned_load(rank: int, world: int) -> None:
    import deepspeed

    from rlhf.engine.build import init_distributed, zero3_config
    from rlhf.models.loading import load_causal_lm, partitioned
    from rlhf.sections import DeepSpeedSection

    init_distributed()  # DeepSpeed joins the group _rank_main formed
    path = os.environ["RLHF_TEST_MODEL"]
    plain = load_causal_lm(path)
    config = zero3_config(DeepSpeedSection(zero_stage=3, precision="fp32", micro_batch_size=1), None)
    with partitioned(config):
        model = load_causal_lm(path)
    params = list(model.named_parameters())
    assert all(hasattr(p, "ds_id") and p.numel() == 0 for _, p in params)  # nothing whole outside a gather
    local = sum(p.ds_tensor.numel() for _, p in params)
    total = sum(p.numel() for p in plain.parameters())
    assert abs(local - total / world) <= 16 * len(params), (local, total)  # half each, up to per-tensor padding
    expected = dict(plain.named_parameters())
    with deepspeed.zero.GatheredParameters([p for _, p in params]):
        for name, p in params:
            assert torch.equal(p.data, expected[name].data), name


@pytest.mark.slow
def test_zero3_load_is_partitioned_and_equal_to_a_plain_load(monkeypatch) -> None:
    """Each rank holds about half of the weights from the start (no whole fp32 copy per rank), and gathering the
    shards gives exactly the weights of a plain load."""
    from rlhf.models.loading import resolve_model_path

    monkeypatch.setenv("RLHF_TEST_MODEL", resolve_model_path("embedded:tiny-llama"))
    spawn("check_zero3_partitioned_load", backend="gloo")
