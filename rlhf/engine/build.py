"""Build a DeepSpeed engine for one model inside an already-formed process group (Ray Train or a PPO role group)."""

from __future__ import annotations

import math
import os
import socket
import sys
from contextlib import contextmanager

import torch

from rlhf.engine import collectives
from rlhf.engine.deepspeed_config import deepspeed_config
from rlhf.sections import DeepSpeedSection, OptimSection


def import_deepspeed():
    """``import deepspeed``, without the MLflow import its autotuner makes whenever MLflow is installed (we install it
    as the tracker extra). That import is ~1 s of DeepSpeed's ~2.5 s, paid by every worker process; the autotuner
    is never used here. MLflow is hidden for this one import only and stays importable (rlhf.trackers uses it)."""
    if "deepspeed" in sys.modules:
        return sys.modules["deepspeed"]
    hide = "mlflow" not in sys.modules
    if hide:
        sys.modules["mlflow"] = None  # makes `import mlflow` raise ImportError, which DeepSpeed treats as absent
    try:
        import deepspeed
    finally:
        if hide and sys.modules.get("mlflow", 0) is None:
            del sys.modules["mlflow"]
    return deepspeed


def quiet_deepspeed() -> None:
    """Keep DeepSpeed from JIT-building its shared-memory comm op (~30 s) on CPU; must run before init_distributed."""
    deepspeed = import_deepspeed()

    if not torch.cuda.is_available():
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def init_distributed(backend: str | None = None) -> None:
    """Join the process group Ray Train set up, or form our role group with ``backend`` (a torch backend string,
    see ``rlhf.engine.collectives.resolve_backend``; default gloo on CPU, NCCL on GPU). Pins this rank's GPU first:
    NCCL and gloo's CUDA path use the current device."""
    deepspeed = import_deepspeed()

    quiet_deepspeed()
    if torch.cuda.is_available():
        torch.cuda.set_device(device())
    deepspeed.init_distributed(dist_backend=backend or ("nccl" if torch.cuda.is_available() else "gloo"), verbose=False)


def shutdown_distributed() -> None:
    """Leave the process group and forget DeepSpeed's clone of the world group. DeepSpeed caches that clone
    (``deepspeed.utils.groups._WORLD_GROUP``) for the life of the process; after a destroy/init cycle in the same
    process (tests, notebooks) the stale clone makes ``deepspeed.initialize`` fail with "Group ... is not
    registered". A worker process that inits once never needs this."""
    import torch.distributed as dist

    import_deepspeed()
    from deepspeed.utils import groups

    if dist.is_initialized():
        dist.destroy_process_group()
    groups._WORLD_GROUP = None


@contextmanager
def single_rank(threads: int, backend: str | None = None):
    """This process as rank 0 of a one-rank process group on loopback, with ``threads`` torch threads: what Ray Train
    gives each worker (the rendezvous env, the group), for ``resources.in_process`` and tests. Leaves the group and
    restores the env and thread count on exit."""
    import torch.distributed as dist

    from rlhf.errors import UserError

    if dist.is_available() and dist.is_initialized():  # joining would be skipped, and leaving would end the caller's
        raise UserError("one in-process rank needs a process without a process group; this one already has one")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
           "LOCAL_WORLD_SIZE": "1", "OMP_NUM_THREADS": str(threads)}
    saved_env = {k: os.environ.get(k) for k in env}
    saved_threads = torch.get_num_threads()
    os.environ.update(env)
    torch.set_num_threads(threads)
    try:
        init_distributed(backend)
        yield
    finally:
        shutdown_distributed()
        torch.set_num_threads(saved_threads)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return torch.device("cpu")


def lr_lambda(optim: OptimSection, total_steps: int):
    """Multiplier on the peak LR at optimizer step s: linear warmup, then cosine/linear/constant decay to min_lr_ratio."""
    warmup = max(optim.warmup_steps, int(optim.warmup_ratio * total_steps))
    floor = optim.min_lr_ratio

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if optim.schedule == "constant" or total_steps <= warmup:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if optim.schedule == "linear":
            return floor + (1 - floor) * (1 - progress)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def zero3_config(ds: DeepSpeedSection, optim: OptimSection | None) -> dict | None:
    """The DeepSpeed config ``build_engine`` will use, when it is ZeRO-3 (for ``rlhf.models.loading.partitioned``:
    load the model already sharded), else None. Call inside the process group."""
    if ds.zero_stage != 3:
        return None
    return deepspeed_config(ds, optim, collectives.world_size(), torch.cuda.is_available())


def build_engine(
    model: torch.nn.Module,
    ds: DeepSpeedSection,
    optim: OptimSection | None,
    total_steps: int,
    trainable: bool = True,
) -> "deepspeed.DeepSpeedEngine":
    """Wrap ``model`` in DeepSpeed. ``trainable=False`` gives an inference engine (ZeRO-3 sharded if asked) with no optimizer."""
    deepspeed = import_deepspeed()

    on_gpu = torch.cuda.is_available()
    world = collectives.world_size()
    config = deepspeed_config(ds, optim if trainable else None, world, on_gpu)
    if not trainable:
        model.requires_grad_(False)
        if ds.zero_stage != 3:
            config["zero_optimization"] = {"stage": 0}
        engine, *_ = deepspeed.initialize(model=model, config=config)
        engine.eval()
        return engine
    params = [p for p in model.parameters() if p.requires_grad]

    def make_scheduler(optimizer):
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(optim, total_steps))

    engine, *_ = deepspeed.initialize(model=model, model_parameters=params, config=config, lr_scheduler=make_scheduler)
    if ds.zero_stage == 0 and engine.dp_world_size == 1:
        # One data-parallel rank has nothing to reduce, but DeepSpeed's ZeRO-0 path still flattens every gradient,
        # all-reduces it over a group of one and copies it back after each backward (~4.5 ms a step on the tiny
        # CPU model). ZeRO 1-3 reduce inside their own optimizer and are left alone.
        engine.enable_backward_allreduce = False
    return engine
