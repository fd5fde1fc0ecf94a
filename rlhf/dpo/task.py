"""The engine's view of direct-preference training (see rlhf.engine.loop.TrainTask).

Per micro-batch: one forward of the policy over the 2B sequences (both columns of B examples), the sequence
log-probs summed over response tokens (rlhf.dpo.logps), the reference's from the cache (precompute) or a frozen
module (live), then ``LOSSES[kind]``. Metrics: the implicit rewards' accuracy and margin, and the mean sequence
log-prob of chosen and rejected responses (KTO: desirable and undesirable completions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlhf.data.splits import load_examples
from rlhf.dpo.logps import pad_batch, sequence_logps
from rlhf.dpo.losses import LOSSES, REFERENCE_FREE, LogpBatch, LossParams
from rlhf.dpo.reference import load_or_compute
from rlhf.engine.checkpoint import save_hf_dir
from rlhf.models.loading import load_causal_lm
from rlhf.models.lora import LoraSection, merge_lora_state_dict, prepare_for_training
from rlhf.models.tokenizer import load_tokenizer
from rlhf.sections import DeepSpeedSection


@dataclass
class DPOTask:
    model_path: str
    tokenizer_path: str
    out: str
    pad_id: int
    kind: str
    params: LossParams
    reference_mode: str = "precompute"  # precompute | live
    reference_path: str | None = None  # None: the initial policy (model_path)
    deepspeed: DeepSpeedSection | None = None  # for a live or separate reference's inference engine
    lora: LoraSection | None = None
    gradient_checkpointing: bool = False
    # Set on each worker by before_train, never pickled with content: the cache and a live reference engine.
    _reference: dict | None = field(default=None, repr=False)
    _reference_engine: object = field(default=None, repr=False)

    @property
    def uses_reference(self) -> bool:
        return self.kind not in REFERENCE_FREE

    def build_model(self) -> torch.nn.Module:
        return prepare_for_training(load_causal_lm(self.model_path), self.lora, self.gradient_checkpointing)

    def examples(self, split: str) -> list[dict]:
        return load_examples(self.out, split)

    def collate(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        """Column 0 rows first, then column 1: input_ids/attention_mask/response_mask [2B, T]; lengths [B, 2];
        reference [B, 2] when cached; desirable [B] for KTO."""
        seqs = [e["ids"][0] for e in examples] + [e["ids"][1] for e in examples]
        resp = [e["resp"][0] for e in examples] + [e["resp"][1] for e in examples]
        batch = pad_batch(seqs, resp, self.pad_id)
        batch["lengths"] = torch.tensor([e["resp"] for e in examples], dtype=torch.float32)
        if self._reference is not None:
            batch["reference"] = torch.stack([self._reference[e["id"]] for e in examples]).float()
        if "label" in examples[0]:
            batch["desirable"] = torch.tensor([e["label"] for e in examples], dtype=torch.bool)
        return batch

    # -- reference -------------------------------------------------------------------------------------------

    def _reference_module(self):
        from rlhf.engine.build import build_engine, zero3_config
        from rlhf.engine.deepspeed_config import inference_precision
        from rlhf.models.loading import load_for_inference, partitioned

        ds = self.deepspeed or DeepSpeedSection()
        with partitioned(zero3_config(ds, None)):  # ZeRO-3: each rank builds only its shard
            model = load_for_inference(self.reference_path or self.model_path, "causal_lm",
                                       inference_precision(ds, torch.cuda.is_available()), "keep")
        return build_engine(model, ds, None, 0, trainable=False)

    def before_train(self, engine, dev: torch.device, micro: int) -> None:
        """Before any checkpoint is loaded, so ``engine`` still holds the initial policy. Collective."""
        if not self.uses_reference:
            return
        if self.reference_mode == "live":
            self._reference_engine = self._reference_module()
            return
        module = engine if self.reference_path is None else self._reference_module()
        examples = self.examples("train") + self.examples("eval")

        def logps(chunk: list[dict]) -> torch.Tensor:
            batch = {k: v.to(dev) for k, v in self.collate(chunk).items() if k != "reference"}
            return self._column_logps(module, batch)

        was_training = engine.training
        engine.eval()
        self._reference = load_or_compute(Path(self.out), examples, self.reference_path or self.model_path, logps,
                                          micro)
        engine.train(was_training)
        del module

    # -- loss and metrics ------------------------------------------------------------------------------------

    @staticmethod
    def _column_logps(model, batch) -> torch.Tensor:
        """[B, 2] summed response log-probs."""
        logps = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
        return torch.stack(logps.chunk(2), dim=1)

    def _logp_batch(self, engine, batch) -> LogpBatch:
        policy = self._column_logps(engine, batch)
        reference = batch.get("reference")
        if self.uses_reference and self._reference_engine is not None:
            with torch.no_grad():
                reference = self._column_logps(self._reference_engine, batch)
        return LogpBatch(policy, batch["lengths"].to(policy.device),
                         None if reference is None else reference.to(policy.device), batch.get("desirable"))

    def _sums(self, b: LogpBatch, losses: torch.Tensor, rewards: torch.Tensor) -> dict[str, float]:
        if b.desirable is not None:  # KTO: "chosen" = desirable completions, "rejected" = undesirable ones
            good = b.desirable.bool()
            r, lp = rewards[:, 0].detach(), b.policy[:, 0].detach()
            correct = ((r > 0) == good).sum()
            parts = {"chosen": (r[good], lp[good]), "rejected": (r[~good], lp[~good])}
        else:
            lp = b.policy.detach()
            correct = (rewards[:, 0] > rewards[:, 1]).sum()
            parts = {"chosen": (rewards[:, 0], lp[:, 0]), "rejected": (rewards[:, 1], lp[:, 1])}
        sums = {"pairs": float(losses.shape[0]), "correct": float(correct), "loss_sum": float(losses.detach().sum())}
        for side, (rew, logp) in parts.items():
            sums.update({f"{side}_n": float(rew.numel()), f"{side}_reward_sum": float(rew.sum()),
                         f"{side}_logp_sum": float(logp.sum())})
        return sums

    def _metrics(self, sums: dict[str, float]) -> dict[str, float]:
        def mean(side: str, what: str) -> float:
            return sums[f"{side}_{what}_sum"] / max(sums[f"{side}_n"], 1.0)

        return {"reward_accuracy": sums["correct"] / max(sums["pairs"], 1.0),
                "reward_margin": mean("chosen", "reward") - mean("rejected", "reward"),
                "chosen_logp": mean("chosen", "logp"), "rejected_logp": mean("rejected", "logp")}

    def loss(self, engine, batch):
        b = self._logp_batch(engine, batch)
        losses, rewards = LOSSES[self.kind](b, self.params)
        sums = self._sums(b, losses, rewards)
        sums.pop("loss_sum")
        return losses.mean(), dict(sums, tokens=float(batch["attention_mask"].sum()))

    def train_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        return self._metrics(sums)

    def eval_sums(self, engine, batch):
        b = self._logp_batch(engine, batch)
        losses, rewards = LOSSES[self.kind](b, self.params)
        return self._sums(b, losses, rewards)

    def eval_metrics(self, sums):
        return dict(self._metrics(sums), loss=sums["loss_sum"] / max(sums["pairs"], 1.0))

    def save(self, engine, state_dict, out_dir: Path) -> None:
        if self.lora is not None:
            state_dict = merge_lora_state_dict(state_dict, self.lora.scaling)
        save_hf_dir(engine.module, state_dict, load_tokenizer(self.tokenizer_path), out_dir)
