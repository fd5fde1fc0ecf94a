"""SFT on the embedded tiny LLaMA: 2 Ray Train workers with real DeepSpeed ZeRO-3, one in-process rank with ZeRO-2
(fp32 and amp_bf16), and a worker killed mid-stage. A killed driver resuming from its checkpoint on a rerun is the same mechanism for every supervised stage
(rlhf.engine.supervised); tests/test_dpo_stage.py runs it once, through the CLI."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from rlhf.config import load_config
from rlhf.metrics import read_metrics
from tests.helpers import load_and_generate_plain

pytestmark = pytest.mark.slow
TINY = "configs/sft/tiny.yaml"


def run_sft(out: Path, *overrides: str) -> dict:
    from stages import sft

    cfg = load_config(sft.Config, TINY, list(overrides))
    return sft.run(cfg, out)


# Two Ray Train ranks once (ZeRO-3 partitions over them); the precision variants need no second rank, so they run
# as the one in-process rank (resources.in_process), which is the same train loop without Ray's start-up.
@pytest.mark.parametrize("zero_stage,precision,workers", [(3, "auto", 2), (2, "auto", 1), (2, "amp_bf16", 1)])
def test_sft_loss_falls_and_checkpoint_loads(tmp_path, zero_stage, precision, workers):
    out = tmp_path / f"sft-z{zero_stage}-{precision}-{workers}"
    placement = [f"resources.num_workers={workers}"]
    if workers == 1:
        placement += ["resources.in_process=true", "resources.cpus_per_worker=2"]
    # bf16 autocast on a CPU without bf16 matrix units is several times slower than fp32: half the steps.
    steps = 8 if precision == "amp_bf16" else 16
    manifest = run_sft(out, f"deepspeed.zero_stage={zero_stage}", f"deepspeed.precision={precision}",
                       f"train.max_steps={steps}", "train.log_every=2", "train.eval_every=8", "train.checkpoint_every=0",
                       *placement)
    pids = {int(p.read_text()) for p in (out / "workers").glob("rank*.pid")}
    assert len(pids) == workers and (pids == {os.getpid()}) == (workers == 1)  # in-process: this very process
    assert manifest["status"] == "complete"
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"
    m = manifest["metrics"]
    assert m["train_loss_last"] < m["train_loss_first"], m
    assert m["eval_loss"] is not None and m["tokens_per_s"] > 0
    rows = read_metrics(out)
    assert [r["step"] for r in rows if "loss" in r] == list(range(2, steps + 1, 2))
    assert any("eval_loss" in r for r in rows)
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert manifest["config"]["deepspeed"]["zero_stage"] == zero_stage
    assert manifest["data"]["dropped"] == {} and manifest["data"]["train_examples"] > 0
    assert {"started_at", "finished_at", "versions"} <= manifest.keys()
    assert "GENERATED" in load_and_generate_plain(out / "model")
    if precision == "amp_bf16":  # autocast computes in bf16 but the weights (and so the checkpoint) stay fp32
        from safetensors import safe_open

        with safe_open(str(next((out / "model").glob("*.safetensors"))), "pt") as f:
            assert {f.get_tensor(k).dtype for k in f.keys()} == {__import__("torch").float32}


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def test_worker_killed_mid_stage_restarts_and_resumes(tmp_path):
    """A Ray Train worker (not the driver) SIGKILLed after a checkpoint: Ray Train restarts the group
    (resources.max_failures), the loop resumes from the newest checkpoint, and every step is logged exactly once."""
    import threading

    out = tmp_path / "sft-worker-kill"
    pid_file = out / "workers" / "rank0.pid"
    killed: list[int] = []

    def kill_after_first_checkpoint() -> None:
        wait_for(lambda: (out / "checkpoints" / "latest").is_file() and pid_file.is_file(), 300, "a checkpoint")
        pid = int(pid_file.read_text())
        os.kill(pid, signal.SIGKILL)
        killed.append(pid)

    killer = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    killer.start()
    manifest = run_sft(out, "train.max_steps=12", "train.checkpoint_every=3", "train.log_every=1",
                       "train.eval_every=0", "resources.max_failures=1")
    killer.join(timeout=5)
    assert killed, "the worker was never killed"
    assert int(pid_file.read_text()) != killed[0]  # a new worker process took over
    assert manifest["status"] == "complete" and manifest["metrics"]["steps"] == 12
    steps = [r["step"] for r in read_metrics(out) if "loss" in r]
    assert steps == list(range(1, 13)), steps
