"""Driver side of a supervised stage (SFT, RM): plan the steps, run ``train_loop`` on the Ray Train workers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Protocol

from rlhf.engine.checkpoint import latest_tag
from rlhf.engine.launch import run_workers
from rlhf.engine.loop import LoopSpec, TrainTask, total_steps, train_loop
from rlhf.sections import DeepSpeedSection, OptimSection, ResourcesSection, TrainSection


class SupervisedConfig(Protocol):
    deepspeed: DeepSpeedSection
    optim: OptimSection
    train: TrainSection
    resources: ResourcesSection


def run_supervised(stage: str, task: TrainTask, cfg: SupervisedConfig, out: Path, n_train: int, n_eval: int,
                   unit: str, note: str = "") -> dict:
    """Train ``task`` on ``n_train`` examples with the stage's engine sections; returns ``train_result.json``."""
    world = cfg.resources.num_workers
    per_step = cfg.deepspeed.micro_batch_size * cfg.deepspeed.gradient_accumulation_steps * world
    steps = total_steps(n_train, per_step, cfg.train)
    print(f"[rlhf] {stage}: {n_train} train / {n_eval} eval {unit}{note}, {steps} steps on {world} worker(s) "
          f"-> {out}", flush=True)
    # Said here, on the driver, because a worker's own line reaches the driver's stdout only through Ray's
    # best-effort log forwarding; the workers pick the same tag (checkpoint.load_training_state).
    tag = latest_tag(out / "checkpoints")
    if tag is not None:
        print(f"[rlhf] {stage}: resuming from {(out / 'checkpoints').resolve()}/{tag}", flush=True)
    spec = LoopSpec(str(out.resolve()), task, cfg.deepspeed, cfg.optim, cfg.train)
    run_workers(train_loop, spec, cfg.resources, out, stage, total_steps=steps)
    return json.loads((out / "train_result.json").read_text())
