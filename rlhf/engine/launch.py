"""Run a function on N Ray Train workers (TorchTrainer) with a progress bar on the driver.

The driver joins the Ray cluster named by the config or RAY_ADDRESS (a job submitted to a cluster), or starts a local
instance. Progress comes from tailing the stage's metrics.jsonl, so workers never pay for ``ray.train.report``.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

from rlhf.engine.collectives import resolve_backend
from rlhf.errors import UserError
from rlhf.metrics import read_metrics
from rlhf.sections import ResourcesSection

# Environment a worker needs to behave like the driver (offline hubs, quiet tokenizers).
PASS_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "RLHF_CACHE")
# Library progress bars and warnings that would drown the stage's own progress line in worker logs.
QUIET_ENV = {"TOKENIZERS_PARALLELISM": "false", "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
             "PYTHONWARNINGS": "ignore::FutureWarning,ignore::UserWarning"}


def worker_env() -> dict[str, str]:
    env = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
    return {**QUIET_ENV, **env}


def ensure_ray(address: str | None = None) -> None:
    """Join RAY_ADDRESS / ``address`` if given (``auto`` finds a ``ray start`` head on this machine), else start a
    private local instance (dashboard on: Ray Train needs it)."""
    import ray

    if ray.is_initialized():
        return
    target = address or os.environ.get("RAY_ADDRESS")
    kwargs: dict[str, Any] = {"runtime_env": {"env_vars": worker_env()}, "log_to_driver": True}
    if target:
        ray.init(address=target, **kwargs)
    else:
        ray.init(address="local", include_dashboard=True, **kwargs)


def cluster_has_gpus() -> bool:
    import ray

    return ray.cluster_resources().get("GPU", 0) > 0


def _entry(config: dict) -> None:
    """Ray Train worker entry: threads first (Ray starts workers with one), then the stage's function."""
    import torch

    import ray.train

    threads = int(config["threads"])
    os.environ["OMP_NUM_THREADS"] = str(threads)
    torch.set_num_threads(threads)
    record_pid(Path(config["out"]), ray.train.get_context().get_world_rank())
    config["fn"](config["arg"])


def record_pid(out: Path, rank: int) -> None:
    """Which process is which rank, for an operator (py-spy, kill): OUT/workers/rank<R>.pid, rewritten on a restart."""
    pids = out / "workers"
    pids.mkdir(parents=True, exist_ok=True)
    (pids / f"rank{rank}.pid").write_text(f"{os.getpid()}\n")


def worker_threads(resources: ResourcesSection) -> int:
    return resources.threads_per_worker or max(1, int(resources.cpus_per_worker))


class Progress:
    """A tqdm bar fed by the rows rank 0 appends to metrics.jsonl."""

    def __init__(self, out: Path, total: int | None, desc: str):
        self.out, self.total, self.desc = out, total, desc
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from tqdm import tqdm

        from rlhf.console import terminal

        bar = tqdm(total=self.total, desc=self.desc, unit="step", dynamic_ncols=True, mininterval=1.0, file=terminal())
        shown = 0
        while True:
            stopping = self._stop.wait(1.0)  # one more look after the stop, so the bar ends at the last step
            rows = [r for r in read_metrics(self.out) if "loss" in r or "reward_mean" in r]
            if rows:
                last = rows[-1]
                step = int(last.get("step", 0))
                if step > shown:
                    bar.update(step - shown)
                    shown = step
                bar.set_postfix({k: f"{v:.4g}" for k, v in last.items() if k in ("loss", "reward_mean", "tokens_per_s")})
            if stopping:
                break
        bar.close()

    def __enter__(self) -> "Progress":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def root_cause(err: BaseException) -> BaseException:
    """Unwrap Ray's error wrappers down to the worker's own exception."""
    seen = set()
    while id(err) not in seen:
        seen.add(id(err))
        inner = getattr(err, "cause", None) or err.__cause__
        worker_errors = getattr(err, "worker_failures", None) or getattr(err, "_worker_failures", None)
        if isinstance(worker_errors, dict) and worker_errors:
            inner = next(iter(worker_errors.values()))
        if inner is None:
            break
        err = inner
    return err


def run_workers(
    fn: Callable[[Any], Any],
    arg: Any,
    resources: ResourcesSection,
    out: Path,
    name: str,
    total_steps: int | None = None,
) -> None:
    """Run ``fn(arg)`` on ``resources.num_workers`` Ray Train workers in one torch process group (or, with
    ``resources.in_process``, as the one rank of a group in this process)."""
    if resources.in_process:
        return run_in_process(fn, arg, resources, out, name, total_steps)
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    ensure_ray(resources.address)
    use_gpu = cluster_has_gpus() if resources.use_gpu == "auto" else bool(resources.use_gpu)
    threads = worker_threads(resources)
    trainer = TorchTrainer(
        _entry,
        train_loop_config={"fn": fn, "arg": arg, "threads": threads, "out": str(out.resolve())},
        scaling_config=ScalingConfig(
            num_workers=resources.num_workers,
            use_gpu=use_gpu,
            resources_per_worker={"CPU": resources.cpus_per_worker,
                                  **({"GPU": resources.gpus_per_worker} if use_gpu else {})},
        ),
        torch_config=TorchConfig(backend=resolve_backend(resources.backend, use_gpu, resources.gpus_per_worker)),
        run_config=RunConfig(
            name=f"{name}-{int(time.time())}",
            storage_path=str((out / "ray").resolve()),
            failure_config=FailureConfig(max_failures=resources.max_failures),
        ),
    )
    with Progress(out, total_steps, desc=name):
        try:
            trainer.fit()
        except Exception as err:  # Ray wraps worker errors; show the worker's own
            cause = root_cause(err)
            if isinstance(cause, UserError):
                raise UserError(str(cause)) from None
            raise RuntimeError(f"{name} failed on a worker: {type(cause).__name__}: {cause}") from err


def run_in_process(fn: Callable[[Any], Any], arg: Any, resources: ResourcesSection, out: Path, name: str,
                   total_steps: int | None = None) -> None:
    """``fn(arg)`` as rank 0 of a one-rank group in this process: what one Ray Train worker runs, without Ray. Worth
    it where Ray's start-up (a few seconds per stage) is most of the stage: quick tries, small runs, tests."""
    import torch

    from rlhf.engine.build import single_rank

    use_gpu = torch.cuda.is_available() if resources.use_gpu == "auto" else bool(resources.use_gpu)
    # Ray hides or grants GPUs per worker; this process has what it has.
    if use_gpu and not torch.cuda.is_available():
        raise UserError("resources.use_gpu=true with resources.in_process, but this process sees no GPU")
    if not use_gpu and torch.cuda.is_available():
        raise UserError("resources.use_gpu=false with resources.in_process, but this process sees a GPU; "
                        "use a Ray Train worker (in_process=false) to train on the CPU")
    record_pid(out.resolve(), 0)
    backend = resolve_backend(resources.backend, use_gpu, 1.0)
    with Progress(out, total_steps, desc=name), single_rank(worker_threads(resources), backend):
        fn(arg)
