"""SFT stage: fine-tune a causal LM on demonstrations, loss on the assistant's tokens only.

    rlhf stage sft --config configs/sft/tiny.yaml --out runs/sft [key.sub=value ...]

validate (typed config) -> setup (tokenize on the driver, save examples) -> train (DeepSpeed on Ray Train workers)
-> save (OUT/model as an HF dir, metrics.jsonl, TensorBoard, manifest.json last).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import Field

from rlhf.config import Section
from rlhf.data.formats import to_messages
from rlhf.data.io import read_rows
from rlhf.data.packing import pack
from rlhf.data.splits import load_examples, save_examples, split_eval
from rlhf.data.templates import IGNORE_INDEX, encode_conversation
from rlhf.engine.checkpoint import save_hf_dir
from rlhf.engine.supervised import run_supervised
from rlhf.errors import UserError
from rlhf.manifest import StageRun
from rlhf.plan.check import memory_check
from rlhf.metrics import read_metrics
from rlhf.models.kernels import apply_kernels
from rlhf.models.loading import load_causal_lm, resolve_model_path
from rlhf.models.lora import LoraSection, merge_lora_state_dict, prepare_for_training
from rlhf.models.tokenizer import load_tokenizer
from rlhf.sections import (
    DataSection, DeepSpeedSection, ModelSection, OptimSection, ResourcesSection, TrainSection, read_source,
)
from rlhf.trackers import LoggingSection


class Config(Section):
    """Supervised fine-tuning."""

    model: ModelSection = Field(default_factory=ModelSection, description="the policy to fine-tune")
    data: DataSection = Field(..., description="demonstrations")
    lora: LoraSection | None = Field(None, description="train LoRA adapters instead of all weights; saves the merged model")
    optim: OptimSection = Field(default_factory=OptimSection, description="optimizer and LR schedule")
    train: TrainSection = Field(default_factory=TrainSection, description="steps, logging, eval, checkpoints")
    deepspeed: DeepSpeedSection = Field(default_factory=DeepSpeedSection, description="ZeRO, precision, batching")
    resources: ResourcesSection = Field(default_factory=ResourcesSection, description="Ray workers")
    logging: LoggingSection = Field(default_factory=LoggingSection, description="W&B / MLflow, beside metrics.jsonl")


def right_pad(seqs: list[list[int]], value: int) -> torch.Tensor:
    """[B, T_max] tensor from ragged lists."""
    width = max(len(s) for s in seqs)
    return torch.tensor([s + [value] * (width - len(s)) for s in seqs], dtype=torch.long)


@dataclass
class SFTTask:
    """The engine's view of SFT (see rlhf.engine.loop.TrainTask)."""

    model_path: str
    tokenizer_path: str
    out: str
    pad_id: int
    gradient_checkpointing: bool = False
    lora: LoraSection | None = None
    kernels: str = "hf"

    def build_model(self) -> torch.nn.Module:
        model = apply_kernels(load_causal_lm(self.model_path), self.kernels)
        return prepare_for_training(model, self.lora, self.gradient_checkpointing)

    def examples(self, split: str) -> list[dict]:
        return load_examples(self.out, split)

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """[B, T] tensors. Packed blocks (rlhf.data.packing) carry position_ids and no attention mask (and no cache),
        which makes transformers' causal mask block-diagonal; their padding is one more segment (positions from 0 again) that
        comes after every real token, so nothing real attends to it, and it has no targets."""
        ids = right_pad([e["input_ids"] for e in examples], self.pad_id)
        batch = {"input_ids": ids, "labels": right_pad([e["labels"] for e in examples], IGNORE_INDEX)}
        if "position_ids" in examples[0]:
            width = ids.shape[1]
            batch["position_ids"] = torch.tensor([e["position_ids"] + list(range(width - len(e["position_ids"])))
                                                  for e in examples], dtype=torch.long)
            batch["use_cache"] = False  # transformers looks for packed sequences only when there is no KV cache
        else:
            batch["attention_mask"] = right_pad([[1] * len(e["input_ids"]) for e in examples], 0)
        return batch

    def loss(self, engine, batch):
        loss = engine(**batch).loss
        return loss, {"tokens": float(batch["attention_mask"].sum())}

    def eval_sums(self, engine, batch):
        targets = float((batch["labels"][:, 1:] != IGNORE_INDEX).sum())
        loss = engine(**batch).loss
        return {"loss_sum": float(loss) * targets, "targets": targets}

    def eval_metrics(self, sums):
        return {"loss": sums["loss_sum"] / max(sums["targets"], 1.0)}

    def save(self, engine, state_dict, out_dir: Path) -> None:
        if self.lora is not None:
            state_dict = merge_lora_state_dict(state_dict, self.lora.scaling)
        save_hf_dir(engine.module, state_dict, load_tokenizer(self.tokenizer_path), out_dir)


def encode_rows(cfg: Config, tokenizer) -> tuple[list[dict], list[dict], dict[str, int]]:
    """Rows -> (train, eval) examples with loss masks, and drop counts by reason (train and eval together).
    Every row is validated here, on the driver."""
    d = cfg.data
    rows = read_source(d)[: d.limit]
    if d.eval_path:
        train_rows, eval_rows = rows, read_rows(d.eval_path)
    else:
        train_rows, eval_rows = split_eval(rows, d.eval_fraction, cfg.train.seed)
    dropped: dict[str, int] = {}

    def encode(rs):
        out = [encode_conversation(to_messages(r, d.format), d.template, tokenizer, d.max_length) for r in rs]
        kept = [e for e in out if any(label != IGNORE_INDEX for label in e["labels"])]
        if len(kept) < len(out):  # cut to max_length before any assistant token: nothing left to learn from
            reason = "no_response_within_max_length"
            dropped[reason] = dropped.get(reason, 0) + len(out) - len(kept)
        return kept

    train, evals = encode(train_rows), encode(eval_rows)
    if not train:
        raise UserError(f"{d.path}: no training examples with a response inside max_length={d.max_length} "
                        f"(dropped: {dropped or 'none'})")
    if d.packing:
        train, evals = pack(train, d.max_length), pack(evals, d.max_length)
    return train, evals, dropped


def summarize(out: Path, result_eval: dict) -> dict:
    rows = [r for r in read_metrics(out) if "loss" in r]
    speeds = [r["tokens_per_s"] for r in rows[1:] or rows if "tokens_per_s" in r]
    return {
        "train_loss_first": rows[0]["loss"] if rows else None,
        "train_loss_last": rows[-1]["loss"] if rows else None,
        "eval_loss": result_eval.get("loss"),
        "tokens_per_s": sum(speeds) / len(speeds) if speeds else None,
        "steps": rows[-1]["step"] if rows else 0,
    }


def run(cfg: Config, out: str | Path) -> dict:
    out = Path(out)
    memory_check("sft", cfg)  # on GPUs: refuse a plan that does not fit, before anything loads
    model_path = resolve_model_path(cfg.model.path, cfg.model.tokenizer)
    tokenizer_path = cfg.model.tokenizer or model_path
    with StageRun("sft", out, cfg, inputs={"model": model_path, "data": cfg.data.path}) as stage:
        tokenizer = load_tokenizer(tokenizer_path)
        train, evals, dropped = encode_rows(cfg, tokenizer)
        save_examples(out, "train", train)
        save_examples(out, "eval", evals)
        task = SFTTask(model_path, tokenizer_path, str(out.resolve()), tokenizer.pad_token_id,
                       cfg.model.gradient_checkpointing, cfg.lora, cfg.model.kernels)
        unit = "blocks" if cfg.data.packing else "examples"
        result = run_supervised("sft", task, cfg, out, len(train), len(evals), unit, f" (dropped: {dropped or 'none'})")
        metrics = summarize(out, result.get("eval", {}))
        data = {f"train_{unit}": len(train), f"eval_{unit}": len(evals), "dropped": dropped}
        manifest = stage.complete(metrics, outputs={"model": out / "model", "metrics": out / "metrics.jsonl"},
                                  extra={"data": data})
    print(f"[rlhf] sft done: model -> {out / 'model'}", flush=True)
    return manifest
