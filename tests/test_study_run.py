"""One seed of `rlhf study`, shortened, learns: every method moves the held-out oracle accuracy the right way from the
same SFT model and the same preference pairs, so a change that breaks learning anywhere in SFT -> prefs -> RM -> PPO,
DPO, GRPO (RM or oracle reward) or best-of-n fails here. It is issue 17's CI variant and the default pipeline's test.

Slow (a few minutes on an idle 2-core machine; fixed seed). The shortening is configs/pipelines/rlhf-ci.yaml's
overrides (fewer SFT steps, pairs, PPO iterations and eval prompts) and 20 GRPO iterations. Asserts directions, not
the full-size targets (those come from `rlhf study --seeds 0,1,2`, shown in the README):
  * each method's oracle accuracy on held-out prompts is above SFT's, and it wins more than half its comparisons;
  * the RM orders held-out pairs with clean oracle labels better than 0.7 (trained on 20%-noisy labels);
  * every method reads the PPO run's own SFT model, pairs and RM (copied and skipped as unchanged, never rerun);
  * the GRPO rows evaluate the actor chosen on their validation split (actor_best), never the held-out prompts;
  * the study's table and frontier plot, and the PPO pipeline's own report, are written.
"""

from __future__ import annotations

import json

import pytest
import yaml

from rlhf.pipeline.shipped import find_pipeline
from rlhf.study import run_study

pytestmark = pytest.mark.slow
METHODS = ["ppo", "dpo", "grpo", "grpo_oracle", "bon4"]


def test_one_seed_study_every_method_beats_sft(tmp_path):
    shortened = yaml.safe_load(find_pipeline("rlhf-ci").read_text())["overrides"]
    # One in-process rank for each single-worker stage: Ray Train's start-up adds nothing here (tests/test_sft.py,
    # test_rm_stage.py and test_dpo_stage.py run the stages on Ray Train workers).
    single = [f"{stage}.resources.in_process=true" for stage in ("sft", "rm", "dpo")]
    study = run_study([0], tmp_path, METHODS, shortened + single + ["grpo.loop.iterations=20"], log=print)
    rows = study["methods"]
    print(json.dumps({name: {k: r[k] for k in ("sft_accuracy_mean", "accuracy_mean", "gain_mean", "win_rate_mean",
                                                "kl_mean", "rm_accuracy_clean_mean", "wall_s_mean")}
                      for name, r in rows.items()}))
    assert list(rows) == METHODS and study["upstream_differs"] == []
    seed = tmp_path / "seed-0"
    for method, stage in (("dpo", "prefs"), ("grpo", "prefs"), ("grpo", "rm"), ("grpo_oracle", "sft")):
        assert (seed / method / stage / "manifest.json").read_text() == \
            (seed / "ppo" / stage / "manifest.json").read_text(), f"{method} reran the shared {stage} stage"
    sft = rows["ppo"]["sft_accuracy_mean"]
    assert sft > 0.1, "SFT did not learn the tasks at all"
    for name, r in rows.items():
        assert r["sft_accuracy_mean"] == sft, f"{name} did not start from the shared SFT model"
        assert r["gain_mean"] > 0, f"{name} did not improve on SFT: {r['sft_accuracy_mean']} -> {r['accuracy_mean']}"
        assert r["win_rate_mean"] > 0.5, f"{name} win rate {r['win_rate_mean']}"
    assert rows["ppo"]["rm_accuracy_clean_mean"] > 0.7, rows["ppo"]["rm_accuracy_clean_mean"]
    assert rows["ppo"]["kl_mean"] > 0.0  # PPO moved away from SFT; the sampled estimate is positive in practice
    for name in ("grpo", "grpo_oracle"):
        seed = rows[name]["per_seed"][0]
        assert seed["evaluated"] == "actor_best" and seed["best_iteration"] in (10, 20), seed
    assert (tmp_path / "study.png").stat().st_size > 1000 and "GRPO (oracle reward)" in (tmp_path / "study.md").read_text()
    ppo = tmp_path / "seed-0" / "ppo"
    for rel in json.loads((ppo / "report.json").read_text())["plots"].values():
        assert (ppo / rel).stat().st_size > 1000
    assert "oracle accuracy, PPO" in (ppo / "report.md").read_text()
