"""The RM stage end to end: 2 Ray Train workers under ZeRO-2 on the embedded preference pairs, then a resume."""

from __future__ import annotations

import json

import pytest
import torch

from rlhf.config import load_config
from rlhf.data.splits import load_examples
from rlhf.metrics import read_metrics
from rlhf.reward.model import RewardScorer
from rlhf.paths import CONFIGS_DIR
from stages import rm

pytestmark = pytest.mark.slow

METRICS = {"eval_accuracy", "eval_margin", "reward_mean", "reward_std", "train_loss_first", "train_loss_last"}


def config(*overrides: str) -> rm.Config:
    return load_config(rm.Config, CONFIGS_DIR / "rm" / "tiny.yaml", list(overrides))


@pytest.fixture(scope="module")
def run_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("rm")
    manifest = rm.run(config("train.max_steps=30", "train.checkpoint_every=20", "train.eval_every=0"), out)
    return out, manifest


def test_tiny_rm_learns_the_embedded_preferences(run_out):
    out, manifest = run_out
    assert manifest["status"] == "complete"
    assert METRICS <= set(manifest["metrics"])
    assert manifest["metrics"]["eval_accuracy"] >= 0.9
    assert manifest["metrics"]["eval_margin"] > 0
    assert manifest["metrics"]["train_loss_last"] < manifest["metrics"]["train_loss_first"]
    assert manifest["data"]["dropped"] == {} and manifest["data"]["eval_pairs"] > 0
    assert (out / "tensorboard").is_dir() and any((out / "tensorboard").iterdir())
    config_json = json.loads((out / "model" / "config.json").read_text())
    assert config_json["architectures"] == ["LlamaForSequenceClassification"] and len(config_json["id2label"]) == 1
    assert config_json["rlhf_reward_mean"] == manifest["metrics"]["reward_mean"]
    assert config_json["rlhf_reward_std"] > 0
    assert (config_json["rlhf_template"], config_json["rlhf_max_length"]) == ("alpaca", 256)


def test_plain_transformers_reproduces_the_stage_scores(run_out):
    from transformers import AutoModelForSequenceClassification

    out, manifest = run_out
    evals = load_examples(out, "eval")
    seqs = [e["chosen"] for e in evals[:8]] + [e["rejected"] for e in evals[:8]]
    scorer = RewardScorer(str(out / "model"))
    ours = torch.tensor(scorer.score_ids(seqs))
    model = AutoModelForSequenceClassification.from_pretrained(out / "model").eval()
    pad = model.config.pad_token_id
    width = max(len(s) for s in seqs)
    ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
    mask = (ids != pad).long()
    with torch.no_grad():
        plain = model(input_ids=ids, attention_mask=mask).logits[:, 0]
    assert torch.allclose(plain, ours, atol=1e-5)
    # and the whole eval split scored outside the workers gives the accuracy the workers reported
    chosen = torch.tensor(scorer.score_ids([e["chosen"] for e in evals]))
    rejected = torch.tensor(scorer.score_ids([e["rejected"] for e in evals]))
    assert (chosen > rejected).float().mean().item() == pytest.approx(manifest["metrics"]["eval_accuracy"],
                                                                      abs=1.0 / len(evals))


def test_resume_continues_from_the_last_checkpoint(run_out):
    out, _ = run_out
    before = {r["step"]: r for r in read_metrics(out) if "loss" in r}
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_20"
    manifest = rm.run(config("train.max_steps=24", "train.checkpoint_every=20", "train.eval_every=0"), out)
    after = {r["step"]: r for r in read_metrics(out) if "loss" in r}
    # rows up to the checkpoint are kept as written (a fresh start would rewrite them), later ones are new
    assert [after[s] for s in (5, 10, 15, 20)] == [before[s] for s in (5, 10, 15, 20)]
    assert max(after) == 24 and after[24]["time"] > before[30]["time"]
    assert manifest["metrics"]["train_loss_first"] == before[5]["loss"]
