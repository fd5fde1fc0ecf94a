"""Direct-preference stage: DPO and its family (IPO, cDPO, robust DPO, SimPO, ORPO, KTO) on the supervised engine.

    rlhf stage dpo --config configs/dpo/tiny.yaml --out runs/dpo [key.sub=value ...]

validate (typed config; beta > 0; the reference's tokenizer must be the policy's) -> setup (parse pairs in every
format the RM stage reads, or KTO's unpaired rows, on the driver; tokenize with the policy's template; save
examples) -> train (DeepSpeed ZeRO on Ray Train workers: first the reference policy's log-probs of every example,
computed once on the same workers and cached in OUT/reference_logps.pt, then ``LOSSES[loss.kind]``, see
rlhf/dpo/losses.py) -> save (OUT/model as an HF dir, metrics.jsonl, TensorBoard, manifest.json last).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from rlhf.config import Section
from rlhf.data.io import read_rows
from rlhf.data.preferences import load_pairs
from rlhf.data.splits import save_examples, split_eval
from rlhf.dpo.data import encode_pairs, encode_unpaired, to_unpaired, unpaired_from_pairs
from rlhf.dpo.losses import REFERENCE_FREE, LossParams
from rlhf.dpo.task import DPOTask
from rlhf.engine.supervised import run_supervised
from rlhf.errors import UserError
from rlhf.manifest import StageRun
from rlhf.plan.check import memory_check
from rlhf.metrics import read_metrics
from rlhf.models.lora import LoraSection
from rlhf.models.tokenizer import load_tokenizer
from rlhf.sections import DeepSpeedSection, ModelSection, OptimSection, ResourcesSection, TrainSection
from rlhf.trackers import LoggingSection
from stages.rm import initial_model_path


class DPODataSection(Section):
    path: str = Field(..., description="local file (json, jsonl, jsonl.gz, parquet) or hub dataset name")
    config: str | None = Field(None, description="hub dataset configuration (load_dataset's second argument)")
    split: str | None = Field(None, description="split for hub datasets (default train)")
    eval_split: str | None = Field(None, description="hub split to evaluate on (e.g. test_prefs); default: eval_path "
                                                     "or a held-out eval_fraction of path")
    format: Literal["auto", "pairs", "deepspeed_chat", "hh", "colossal", "unpaired"] = Field(
        "auto", description="a pair format the RM stage reads (auto detects by keys), or unpaired "
                            "{prompt, completion, label} rows (KTO only)")
    template: Literal["alpaca", "vicuna", "koala", "chat"] = Field("alpaca", description="the policy's SFT template")
    max_length: int = Field(512, ge=2, description="tokens per prompt+response; longer ones lose the prompt's start first")
    eval_path: str | None = Field(None, description="separate eval file; default: hold out eval_fraction of path")
    eval_fraction: float = Field(0.05, ge=0, lt=1, description="share of pairs held out for eval when eval_path is unset")
    limit: int | None = Field(None, ge=1, description="use only the first N records (quick tries)")
    strict: bool = Field(True, description="a pair DPO cannot learn from (identical sides, an empty side) is an "
                                           "error naming its line; false drops and counts them (hub data)")


class LossSection(Section):
    kind: Literal["dpo", "cdpo", "robust", "ipo", "simpo", "orpo", "kto"] = Field(
        "dpo", description="dpo sigmoid; cdpo label-smoothed; robust (rDPO); ipo; simpo (reference-free, "
                           "length-normalised, gamma margin); orpo (NLL + odds ratio, reference-free); kto (unpaired)")
    beta: float = Field(0.1, description="DPO/cDPO/robust/KTO beta, IPO tau, SimPO beta, ORPO lambda; must be > 0")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="cdpo/robust: assumed label flip rate")
    gamma: float = Field(0.5, ge=0, description="simpo: target reward margin gamma")
    desirable_weight: float = Field(1.0, gt=0, description="kto: lambda_D")
    undesirable_weight: float = Field(1.0, gt=0, description="kto: lambda_U")

    @model_validator(mode="after")
    def _beta_positive(self):
        if self.beta <= 0:
            raise ValueError(f"loss.beta must be > 0, got {self.beta}")
        return self

    def params(self) -> LossParams:
        return LossParams(self.beta, self.label_smoothing, self.gamma, self.desirable_weight, self.undesirable_weight)


class ReferenceSection(Section):
    path: str | None = Field(None, description="reference policy (HF dir or SFT OUT dir); default: the initial policy")
    mode: Literal["precompute", "live"] = Field(
        "precompute", description="precompute: its log-probs once before training, cached in OUT; live: a frozen "
                                  "copy on every worker scores each batch")


class Config(Section):
    """Direct preference optimisation (and family)."""

    model: ModelSection = Field(default_factory=ModelSection, description="the policy to train: an SFT OUT dir, HF dir or id")
    reference: ReferenceSection = Field(default_factory=ReferenceSection, description="pi_ref (unused by simpo, orpo)")
    data: DPODataSection = Field(..., description="preference pairs (or unpaired rows for kto)")
    loss: LossSection = Field(default_factory=LossSection, description="which loss and its coefficients")
    lora: LoraSection | None = Field(None, description="train LoRA adapters instead of all weights; saves the merged model")
    optim: OptimSection = Field(default_factory=OptimSection, description="optimizer and LR schedule")
    train: TrainSection = Field(default_factory=TrainSection, description="steps, logging, eval, checkpoints")
    deepspeed: DeepSpeedSection = Field(default_factory=DeepSpeedSection, description="ZeRO, precision, batching")
    resources: ResourcesSection = Field(default_factory=ResourcesSection, description="Ray workers")
    logging: LoggingSection = Field(default_factory=LoggingSection, description="W&B / MLflow, beside metrics.jsonl")


def check_reference_tokenizer(cfg: Config, tokenizer, reference_path: str | None) -> None:
    """A reference with another vocabulary scores other tokens: its log-probs would be meaningless."""
    if reference_path is None or cfg.loss.kind in REFERENCE_FREE:
        return
    if load_tokenizer(reference_path).get_vocab() != tokenizer.get_vocab():
        raise UserError(f"reference.path {cfg.reference.path}: its tokenizer differs from the policy's "
                        f"({cfg.model.tokenizer or cfg.model.path}); DPO needs both to score the same tokens")


def prepare_data(cfg: Config, tokenizer) -> tuple[list[dict], list[dict], dict[str, int]]:
    """Rows -> (train, eval) examples and drop counts by reason. Every row is validated here, on the driver."""
    d, kto = cfg.data, cfg.loss.kind == "kto"
    if d.format == "unpaired" and not kto:
        raise UserError(f"data.format unpaired has no pairs; loss.kind {cfg.loss.kind} needs pairs (use kto)")
    rows = read_rows(d.path, d.split, d.config)[: d.limit]
    eval_rows = read_rows(d.eval_path) if d.eval_path else \
        read_rows(d.path, d.eval_split, d.config)[: d.limit] if d.eval_split else None
    dropped: dict[str, int] = {}

    def parse(rs):
        if d.format == "unpaired":
            return [to_unpaired(r) for r in rs]
        pairs, drops = load_pairs(rs, d.format, None, d.strict)
        for reason, n in drops.items():
            dropped[reason] = dropped.get(reason, 0) + n
        return pairs

    items = parse(rows)
    train_items, eval_items = (items, parse(eval_rows)) if eval_rows else split_eval(items, d.eval_fraction,
                                                                                      cfg.train.seed)
    if kto:
        if d.format != "unpaired":
            train_items, eval_items = unpaired_from_pairs(train_items), unpaired_from_pairs(eval_items)
        train = encode_unpaired(train_items, d.template, tokenizer, d.max_length, cfg.train.seed)
        evals = encode_unpaired(eval_items, d.template, tokenizer, d.max_length, cfg.train.seed + 1, len(train))
    else:
        train, same_train = encode_pairs(train_items, d.template, tokenizer, d.max_length)
        evals, same_eval = encode_pairs(eval_items, d.template, tokenizer, d.max_length, len(train))
        if same_train + same_eval:
            if d.strict:
                raise UserError(f"{d.path}: {same_train + same_eval} pair(s) have identical sides after truncation "
                                f"to max_length={d.max_length}; raise it or set data.strict=false to drop them")
            dropped["identical_after_truncation"] = same_train + same_eval
    if not train:
        raise UserError(f"{d.path}: no usable preference pairs (dropped: {dropped or 'none'})")
    return train, evals, dropped


def summarize(out: Path, result: dict) -> dict:
    rows = [r for r in read_metrics(out) if "loss" in r]
    final = result.get("eval", {})
    last = rows[-1] if rows else {}
    return {
        "train_loss_first": rows[0]["loss"] if rows else None,
        "train_loss_last": last.get("loss"),
        "eval_reward_accuracy": final.get("reward_accuracy"),
        "eval_reward_margin": final.get("reward_margin"),
        "eval_loss": final.get("loss"),
        "chosen_logp_last": last.get("chosen_logp"),
        "rejected_logp_last": last.get("rejected_logp"),
        "steps": last.get("step", 0),
    }


def run(cfg: Config, out: str | Path) -> dict:
    out = Path(out)
    memory_check("dpo", cfg)  # on GPUs: refuse a plan that does not fit, before anything loads
    model_path = initial_model_path(cfg.model.path, cfg.model.tokenizer)
    tokenizer_path = cfg.model.tokenizer or model_path
    reference_path = initial_model_path(cfg.reference.path, None) if cfg.reference.path else None
    inputs = {"model": model_path, "data": cfg.data.path, "reference": reference_path}
    with StageRun("dpo", out, cfg, inputs=inputs) as stage:
        tokenizer = load_tokenizer(tokenizer_path)
        check_reference_tokenizer(cfg, tokenizer, reference_path)
        train, evals, dropped = prepare_data(cfg, tokenizer)
        save_examples(out, "train", train)
        save_examples(out, "eval", evals)
        task = DPOTask(model_path, tokenizer_path, str(out.resolve()), tokenizer.pad_token_id, cfg.loss.kind,
                       cfg.loss.params(), cfg.reference.mode, reference_path, cfg.deepspeed, cfg.lora,
                       cfg.model.gradient_checkpointing)
        unit = "unpaired examples" if cfg.loss.kind == "kto" else "pairs"
        result = run_supervised("dpo", task, cfg, out, len(train), len(evals), unit,
                                f" (loss {cfg.loss.kind}, beta {cfg.loss.beta}; dropped: {dropped or 'none'})")
        metrics = summarize(out, result)
        data = {"train_examples": len(train), "eval_examples": len(evals), "dropped": dropped}
        outputs = {"model": out / "model", "metrics": out / "metrics.jsonl"}
        manifest = stage.complete(metrics, outputs=outputs, extra={"data": data})
    print(f"[rlhf] dpo done: model -> {out / 'model'} (eval reward accuracy {metrics['eval_reward_accuracy']})",
          flush=True)
    return manifest
