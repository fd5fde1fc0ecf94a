"""The training loop every supervised stage shares (SFT, RM): it runs on each Ray Train worker.

A stage hands it a ``TrainTask`` (model, examples, collate, loss, eval sums, save); the loop owns DeepSpeed, data
order, accumulation, logging, evaluation, checkpoint/resume and the final HF save.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from rlhf.engine import checkpoint as ckpt
from rlhf.engine import collectives
from rlhf.engine.collectives import all_reduce_sums
from rlhf.engine.build import build_engine, device, init_distributed, zero3_config
from rlhf.metrics import MetricsLogger
from rlhf.models.loading import partitioned
from rlhf.sections import DeepSpeedSection, OptimSection, TrainSection

RESULT = "train_result.json"


class TrainTask(Protocol):
    """What a stage gives the engine. Must be picklable: Ray ships it to every worker."""

    def build_model(self) -> torch.nn.Module:
        """The model to train, on CPU (the engine moves it)."""

    def examples(self, split: str) -> list[dict]:
        """Tokenized examples for "train" or "eval"."""

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """A micro-batch of tensors."""

    def loss(self, engine, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar loss and sums to log (each value a sum over this micro-batch; "tokens" feeds tokens/s)."""

    def eval_sums(self, engine, batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """Sums over one eval micro-batch; they are added over batches and ranks, then given to eval_metrics."""

    def eval_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        """Final eval metrics from the summed values."""

    def save(self, engine, state_dict: dict[str, torch.Tensor], out_dir: Path) -> None:
        """Rank 0: write an HF dir that plain transformers loads."""

    # Optional: train_metrics(sums) -> dict, extra per-step metrics from the summed loss() stats.
    # Optional: before_train(engine, device, micro_batch_size) -> None, called on every rank after the engine is
    # built and before a checkpoint is loaded, so the engine still holds the initial weights (DPO's reference pass).
    # Optional: before_save(evaluate) -> None, called on every rank before the final save; evaluate(examples) runs
    # eval_sums/eval_metrics over any examples (e.g. the RM's reward mean/std over the training data).


@dataclass
class LoopSpec:
    out: str
    task: Any  # TrainTask
    deepspeed: DeepSpeedSection
    optim: OptimSection
    train: TrainSection


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def total_steps(n_examples: int, per_step: int, train: TrainSection) -> int:
    if train.max_steps is not None:
        return train.max_steps
    return max(1, math.ceil(train.epochs * n_examples / per_step))


def batch_indices(n: int, seed: int, position: int, size: int) -> list[int]:
    """Indices at stream positions [position, position+size) of an endless stream of per-epoch shuffles.

    Pure in (seed, position): resume needs only the step number to continue the same data order.
    """
    out = []
    cache: dict[int, list[int]] = {}
    for pos in range(position, position + size):
        epoch, i = divmod(pos, n)
        if epoch not in cache:
            perm = list(range(n))
            random.Random(seed * 1_000_003 + epoch).shuffle(perm)
            cache[epoch] = perm
        out.append(cache[epoch][i])
    return out


def to_device(batch: dict[str, torch.Tensor], dev: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(dev, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def evaluate(task, engine, examples: list[dict], micro: int, dev: torch.device) -> dict[str, float]:
    """Each rank scores its shard; sums are reduced; every rank gets the same metrics."""
    rank, world = collectives.rank(), collectives.world_size()
    shard = examples[rank::world]
    engine.eval()
    sums: dict[str, float] = {}
    # Every rank runs the same number of batches: ZeRO-3 forwards are collective.
    n_batches = math.ceil(math.ceil(len(examples) / world) / micro) if examples else 0
    with torch.no_grad():
        for b in range(n_batches):
            chunk = shard[b * micro : (b + 1) * micro]
            weight = 1.0 if chunk else 0.0
            chunk = chunk or examples[:1]  # a filler batch keeps collectives in step; its sums are zeroed
            for k, v in task.eval_sums(engine, to_device(task.collate(chunk), dev)).items():
                sums[k] = sums.get(k, 0.0) + weight * v
    engine.train()
    if not sums and examples:
        sums = {k: 0.0 for k in task.eval_sums(engine, to_device(task.collate(examples[:1]), dev))}
    return task.eval_metrics(all_reduce_sums(sums)) if sums else {}


def train_loop(spec: LoopSpec) -> dict:
    """Run on every worker: setup -> (resume) -> train -> eval -> save. Rank 0 returns and writes the result."""
    init_distributed()
    rank, world = collectives.rank(), collectives.world_size()
    out, task, ds, tr = Path(spec.out), spec.task, spec.deepspeed, spec.train
    dev = device()
    seed_everything(tr.seed)

    train_ex, eval_ex = task.examples("train"), task.examples("eval")
    micro, accum = ds.micro_batch_size, ds.gradient_accumulation_steps
    per_step = micro * accum * world
    steps = total_steps(len(train_ex), per_step, tr)

    with partitioned(zero3_config(ds, spec.optim)):  # ZeRO-3: each rank materialises only its shard
        model = task.build_model()
    engine = build_engine(model, ds, spec.optim, steps)
    if hasattr(task, "before_train"):  # e.g. DPO's reference log-probs from the initial weights; all ranks run it
        task.before_train(engine, dev, micro)
    ckpt_root = out / "checkpoints"
    client = ckpt.load_training_state(engine, ckpt_root)
    start = int(client["step"]) if client else 0
    logger = MetricsLogger(out, resume_step=start) if rank == 0 else None
    if rank == 0 and start:
        print(f"[rlhf] resumed from {ckpt_root}/step_{start} ({start}/{steps} steps done)", flush=True)

    first_loss = client.get("first_loss") if client else None
    window: dict[str, float] = {}
    t_window = time.perf_counter()
    engine.train()
    for step in range(start, steps):
        for m in range(accum):
            pos = step * per_step + (m * world + rank) * micro
            batch = to_device(task.collate([train_ex[i] for i in batch_indices(len(train_ex), tr.seed, pos, micro)]), dev)
            loss, stats = task.loss(engine, batch)
            engine.backward(loss)
            engine.step()
            stats = dict(stats, loss_sum=float(loss.detach()), micro_batches=1.0)
            for k, v in stats.items():
                window[k] = window.get(k, 0.0) + v
        done = step + 1
        if done % tr.log_every == 0 or done == steps:
            sums = all_reduce_sums(window)
            elapsed = time.perf_counter() - t_window
            loss_mean = sums.pop("loss_sum") / sums.pop("micro_batches")
            if first_loss is None:
                first_loss = loss_mean
            row = {"loss": loss_mean, "lr": engine.get_lr()[0], "epoch": done * per_step / len(train_ex)}
            if "tokens" in sums:
                row["tokens_per_s"] = sums.pop("tokens") / elapsed
            if dev.type == "cuda":  # this rank's peak so far: what `rlhf plan` predicts per GPU
                row["gpu_mem_peak_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
            if hasattr(task, "train_metrics"):
                row.update(task.train_metrics(sums))
            if logger:
                logger.log(done, row)
            window, t_window = {}, time.perf_counter()
        if tr.eval_every and done % tr.eval_every == 0 and done != steps and eval_ex:
            metrics = evaluate(task, engine, eval_ex, micro, dev)
            if logger:
                logger.log(done, {f"eval_{k}": v for k, v in metrics.items()})
            t_window = time.perf_counter()
        if tr.checkpoint_every and done % tr.checkpoint_every == 0 and done != steps:
            ckpt.save_training_state(engine, ckpt_root, done, {"first_loss": first_loss})
            sd = ckpt.full_state_dict(engine)
            if rank == 0:
                task.save(engine, sd, ckpt_root / f"step_{done}" / "hf")
            ckpt.prune_checkpoints(ckpt_root, tr.keep_checkpoints)
            collectives.barrier()
            t_window = time.perf_counter()

    final_eval = evaluate(task, engine, eval_ex, micro, dev) if eval_ex else {}
    if hasattr(task, "before_save"):  # e.g. statistics over the train data for the saved model; all ranks run it
        task.before_save(lambda examples: evaluate(task, engine, examples, micro, dev))
    sd = ckpt.full_state_dict(engine)
    result: dict[str, Any] = {}
    if rank == 0:
        task.save(engine, sd, out / "model")
        if logger:
            if final_eval:
                logger.log(steps, {f"eval_{k}": v for k, v in final_eval.items()})
            logger.close()
        result = {"steps": steps, "first_loss": first_loss, "eval": final_eval, "world_size": world}
        (out / RESULT).write_text(json.dumps(result, indent=2))
    collectives.barrier()
    return result
