"""Reward-model stage: learn r(prompt, response) from preference pairs (InstructGPT, Ouyang et al. 2022).

    rlhf stage rm --config configs/rm/tiny.yaml --out runs/rm [key.sub=value ...]

validate -> setup (parse pairs on the driver, drop and count the unusable ones, tokenize with the SFT templates)
-> train (LlamaForSequenceClassification, num_labels=1, on DeepSpeed ZeRO on Ray Train workers; loss
-log sigmoid(r_chosen - r_rejected - margin) [+ centering]) -> reward mean/std over the training data
-> save (OUT/model as an HF dir with the rlhf_* keys in config.json, metrics.jsonl, TensorBoard, manifest.json last).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

import torch
from pydantic import Field

from rlhf.config import Section
from rlhf.data.io import read_rows
from rlhf.data.preferences import Pair, load_pairs
from rlhf.data.splits import load_examples, save_examples, split_eval
from rlhf.data.templates import encode_prompt_response
from rlhf.engine.supervised import run_supervised
from rlhf.errors import UserError
from rlhf.manifest import StageRun
from rlhf.plan.check import memory_check
from rlhf.metrics import read_metrics
from rlhf.models.loading import resolve_model_path
from rlhf.models.lora import LoraSection, merge_lora_state_dict, prepare_for_training
from rlhf.models.reward import (TokenValues, last_token_scores, load_reward_model, pairwise_loss, reward_config,
                                save_reward_model, unwrap_state_dict)
from rlhf.models.tokenizer import load_tokenizer
from rlhf.paths import resolve_path
from rlhf.sections import (
    DeepSpeedSection, ModelSection, OptimSection, ResourcesSection, SourceSection, TrainSection, read_source,
)
from rlhf.trackers import LoggingSection


class PreferenceDataSection(SourceSection):
    format: Literal["auto", "pairs", "deepspeed_chat", "hh", "colossal"] = Field(
        "auto", description="pairs {prompt, chosen, rejected}; hh (Anthropic transcripts); deepspeed_chat; "
                            "colossal {context, chosen, rejected}; auto detects by keys")
    template: Literal["alpaca", "vicuna", "koala", "chat"] = Field(
        "alpaca", description="prompt template; use the policy's SFT template so the RM sees the policy's text")
    max_length: int = Field(512, gt=0, description="tokens per prompt+response; longer ones lose the prompt's start first")
    eval_path: str | None = Field(None, description="separate eval file; default: hold out eval_fraction of path")
    eval_fraction: float = Field(0.05, ge=0, lt=1, description="share of pairs held out for eval when eval_path is unset")
    limit: int | None = Field(None, ge=1, description="use only the first N records (quick tries)")
    margin_key: str | None = Field("margin", description="per-pair margin column subtracted inside the loss, if present")
    strict: bool = Field(False, description="raise on a pair that would be dropped (identical, empty, mismatched prompt)")


class LossSection(Section):
    center_coef: float = Field(
        0.0, ge=0, description="reward centering: + coef * mean((r_chosen + r_rejected)^2) (Eisenstein et al. 2023)")


class Config(Section):
    """Reward model training."""

    model: ModelSection = Field(default_factory=ModelSection, description="initial weights: an SFT OUT dir, an HF dir or id")
    data: PreferenceDataSection = Field(..., description="preference pairs")
    loss: LossSection = Field(default_factory=LossSection, description="pairwise loss options")
    lora: LoraSection | None = Field(None, description="train LoRA adapters (+ the score head) instead of all weights")
    optim: OptimSection = Field(default_factory=OptimSection, description="optimizer and LR schedule")
    train: TrainSection = Field(default_factory=TrainSection, description="steps, logging, eval, checkpoints")
    deepspeed: DeepSpeedSection = Field(default_factory=DeepSpeedSection, description="ZeRO, precision, batching")
    resources: ResourcesSection = Field(default_factory=ResourcesSection, description="Ray workers")
    logging: LoggingSection = Field(default_factory=LoggingSection, description="W&B / MLflow, beside metrics.jsonl")


def right_pad(seqs: list[list[int]], value: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged ids -> (ids [B, T_max], attention_mask [B, T_max])."""
    width = max(len(s) for s in seqs)
    ids = torch.tensor([s + [value] * (width - len(s)) for s in seqs], dtype=torch.long)
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], dtype=torch.long)
    return ids, mask


@dataclass
class RewardTask:
    """The engine's view of RM training (see rlhf.engine.loop.TrainTask). Examples: {chosen, rejected, margin}."""

    model_path: str
    tokenizer_path: str
    out: str
    pad_id: int
    template: str
    max_length: int
    center_coef: float = 0.0
    lora: LoraSection | None = None
    gradient_checkpointing: bool = False
    reward_stats: dict | None = None  # set on every rank by before_save

    def build_model(self) -> torch.nn.Module:
        model = load_reward_model(self.model_path, pad_token_id=self.pad_id)
        return TokenValues(prepare_for_training(model, self.lora, self.gradient_checkpointing, modules_to_save=["score"]))

    def examples(self, split: str) -> list[dict]:
        return load_examples(self.out, split)

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """Chosen rows first, then rejected: input_ids/attention_mask [2B, T], margin [B]."""
        ids, mask = right_pad([e["chosen"] for e in examples] + [e["rejected"] for e in examples], self.pad_id)
        return {"input_ids": ids, "attention_mask": mask,
                "margin": torch.tensor([e["margin"] for e in examples], dtype=torch.float32)}

    def rewards(self, engine, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(r_chosen [B], r_rejected [B])."""
        values = engine(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        scores = last_token_scores(values, batch["attention_mask"])
        half = batch["margin"].shape[0]
        return scores[:half], scores[half:]

    def loss(self, engine, batch):
        chosen, rejected = self.rewards(engine, batch)
        loss = pairwise_loss(chosen, rejected, batch["margin"], self.center_coef)
        return loss, {"tokens": float(batch["attention_mask"].sum()), "pairs": float(chosen.shape[0]),
                      "correct": float((chosen > rejected).sum())}

    def train_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        return {"accuracy": sums["correct"] / max(sums["pairs"], 1.0)}

    def eval_sums(self, engine, batch):
        chosen, rejected = self.rewards(engine, batch)
        both = torch.cat([chosen, rejected])
        return {"pairs": float(chosen.shape[0]), "correct": float((chosen > rejected).sum()),
                "margin_sum": float((chosen - rejected).sum()),
                "loss_sum": float(pairwise_loss(chosen, rejected, batch["margin"])) * chosen.shape[0],
                "reward_sum": float(both.sum()), "reward_sq_sum": float((both.double() ** 2).sum())}

    def eval_metrics(self, sums):
        pairs = max(sums["pairs"], 1.0)
        mean = sums["reward_sum"] / (2 * pairs)
        return {"accuracy": sums["correct"] / pairs, "margin": sums["margin_sum"] / pairs,
                "loss": sums["loss_sum"] / pairs, "reward_mean": mean,
                "reward_std": math.sqrt(max(sums["reward_sq_sum"] / (2 * pairs) - mean * mean, 0.0))}

    def before_save(self, evaluate: Callable[[list[dict]], dict[str, float]]) -> None:
        """Reward statistics over the training data, for scoring to normalize (collective: every rank runs it)."""
        self.reward_stats = evaluate(self.examples("train"))

    def save(self, engine, state_dict, out_dir: Path) -> None:
        state_dict = unwrap_state_dict(state_dict)
        if self.lora is not None:
            state_dict = merge_lora_state_dict(state_dict, self.lora.scaling)
        stats = self.reward_stats or {}
        extra = reward_config(stats.get("reward_mean"), stats.get("reward_std"), self.template, self.max_length)
        save_reward_model(engine.module.classifier, state_dict, load_tokenizer(self.tokenizer_path), out_dir, extra)


def initial_model_path(path: str, tokenizer: str | None) -> str:
    """An SFT stage's OUT dir means its OUT/model; anything else goes through resolve_model_path."""
    local = resolve_path(path)
    if not (local / "config.json").is_file() and (local / "model" / "config.json").is_file():
        return str(local / "model")
    return resolve_model_path(path, tokenizer)


def encode_pairs(pairs: list[Pair], d: PreferenceDataSection, tokenizer) -> tuple[list[dict], int]:
    """Pairs -> examples; (examples, pairs dropped because truncation made both sides the same ids)."""
    examples, same = [], 0
    for p in pairs:
        chosen = encode_prompt_response(p.prompt, p.chosen, d.template, tokenizer, d.max_length)
        rejected = encode_prompt_response(p.prompt, p.rejected, d.template, tokenizer, d.max_length)
        if chosen == rejected:
            same += 1
            continue
        examples.append({"chosen": chosen, "rejected": rejected, "margin": p.margin or 0.0})
    return examples, same


def prepare_data(cfg: Config, tokenizer) -> tuple[list[dict], list[dict], dict[str, int]]:
    """Rows -> (train, eval) examples and drop counts by reason. Every row is validated here, on the driver."""
    d = cfg.data
    rows = read_source(d)[: d.limit]
    pairs, dropped = load_pairs(rows, d.format, d.margin_key, d.strict)
    if d.eval_path:
        eval_pairs, eval_dropped = load_pairs(read_rows(d.eval_path), d.format, d.margin_key, d.strict)
        for reason, n in eval_dropped.items():
            dropped[reason] = dropped.get(reason, 0) + n
        train_pairs = pairs
    else:
        train_pairs, eval_pairs = split_eval(pairs, d.eval_fraction, cfg.train.seed)
    train, same_train = encode_pairs(train_pairs, d, tokenizer)
    evals, same_eval = encode_pairs(eval_pairs, d, tokenizer)
    if same_train + same_eval:
        dropped["identical_after_truncation"] = same_train + same_eval
    if not train:
        raise UserError(f"{d.path}: no usable preference pairs (dropped: {dropped or 'none'})")
    return train, evals, dropped


def summarize(out: Path, result: dict, model_dir: Path) -> dict:
    rows = [r for r in read_metrics(out) if "loss" in r]
    config = json.loads((model_dir / "config.json").read_text())
    final = result.get("eval", {})
    return {
        "eval_accuracy": final.get("accuracy"),
        "eval_margin": final.get("margin"),
        "reward_mean": config.get("rlhf_reward_mean"),
        "reward_std": config.get("rlhf_reward_std"),
        "train_loss_first": rows[0]["loss"] if rows else None,
        "train_loss_last": rows[-1]["loss"] if rows else None,
        "steps": rows[-1]["step"] if rows else 0,
    }


def run(cfg: Config, out: str | Path) -> dict:
    out = Path(out)
    memory_check("rm", cfg)  # on GPUs: refuse a plan that does not fit, before anything loads
    model_path = initial_model_path(cfg.model.path, cfg.model.tokenizer)
    tokenizer_path = cfg.model.tokenizer or model_path
    with StageRun("rm", out, cfg, inputs={"model": model_path, "data": cfg.data.path}) as stage:
        tokenizer = load_tokenizer(tokenizer_path)
        train, evals, dropped = prepare_data(cfg, tokenizer)
        save_examples(out, "train", train)
        save_examples(out, "eval", evals)
        task = RewardTask(model_path, tokenizer_path, str(out.resolve()), tokenizer.pad_token_id, cfg.data.template,
                          cfg.data.max_length, cfg.loss.center_coef, cfg.lora, cfg.model.gradient_checkpointing)
        result = run_supervised("rm", task, cfg, out, len(train), len(evals), "pairs",
                                f" (dropped: {dropped or 'none'})")
        metrics = summarize(out, result, out / "model")
        data = {"train_pairs": len(train), "eval_pairs": len(evals), "dropped": dropped}
        manifest = stage.complete(metrics, outputs={"model": out / "model", "metrics": out / "metrics.jsonl"},
                                  extra={"data": data})
    print(f"[rlhf] rm done: model -> {out / 'model'} (eval accuracy {metrics['eval_accuracy']})", flush=True)
    return manifest
