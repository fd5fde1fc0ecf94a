"""The study's aggregate (rlhf/study/report.py) from hand-made per-seed eval outputs: means, sample standard
deviations, paired gains with a t interval, family flags, wall times; and the command's argument errors."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rlhf.cli import main as cli_main
from rlhf.study import METHODS, seed_overrides
from rlhf.study.report import gain_interval, write_study

PPO, BON4 = METHODS[0], METHODS[4]


def _eval(d: Path, policy: str, acc: float, sft: float, kl: float, fam: dict, wall: float, **extra) -> None:
    d.mkdir(parents=True, exist_ok=True)
    ev = {"policy": policy, "baseline": "sft", "oracle_accuracy": {policy: acc, "sft": sft},
          "oracle_accuracy_stderr": {policy: 0.03, "sft": 0.04}, f"win_rate_{policy}_vs_sft": 0.5 + (acc - sft) / 2,
          f"kl_{policy}_vs_sft": kl, "oracle_accuracy_by_family": {policy: fam, "sft": {"max": 0.5, "sort": 0.5}},
          **extra}
    (d / "eval.json").write_text(json.dumps(ev))
    (d / "manifest.json").write_text(json.dumps({"status": "complete", "wall_s": wall,
                                                 "config": {"policy": str(d.parent / policy / "actor_best")}}))


def _stage(d: Path, wall: float) -> None:
    d.mkdir(parents=True, exist_ok=True)
    (d / "manifest.json").write_text(json.dumps({"status": "complete", "wall_s": wall, "outputs": {},
                                                 "metrics": {"best_iteration": 20}}))


def test_study_aggregates_seeds_by_hand(tmp_path: Path):
    # PPO: accuracies 0.7, 0.8 over SFT 0.5, 0.6 -> gains 0.2, 0.2 (sd 0); best-of-4: 0.6, 0.9 over the same SFT.
    for seed, (sft, ppo, bon) in {0: (0.5, 0.7, 0.6), 1: (0.6, 0.8, 0.9)}.items():
        root = tmp_path / f"seed-{seed}"
        for stage, wall in {"sft": 100.0, "prefs": 10.0, "rm": 20.0, "ppo": 60.0}.items():
            _stage(root / "ppo" / stage, wall)
        _eval(root / "ppo" / "eval", "ppo", ppo, sft, 2.0 + seed, {"max": 0.9, "sort": 0.4}, 10.0,
              rm_accuracy_clean=0.9)
        _eval(root / "bon4", "bon4", bon, sft, math.log(4) - 0.75, {"max": 0.6, "sort": 0.5}, 15.0,
              kl_method="best-of-n: log n - (n-1)/n")
    study = write_study(tmp_path, [0, 1], [PPO, BON4])
    ppo, bon = study["methods"]["ppo"], study["methods"]["bon4"]
    assert ppo["accuracy_mean"] == pytest.approx(0.75) and ppo["accuracy_sd"] == pytest.approx(math.sqrt(0.005))
    assert ppo["gain_mean"] == pytest.approx(0.2) and ppo["gain_ci95"] == pytest.approx([0.2, 0.2])
    assert ppo["kl_mean"] == pytest.approx(2.5) and ppo["wall_s_mean"] == pytest.approx(200.0)
    assert ppo["families_flagged"] == ["sort"] and ppo["family_change_mean"]["sort"] == pytest.approx(-0.1)
    assert ppo["rm_accuracy_clean_mean"] == pytest.approx(0.9)
    assert ppo["per_seed"][1]["evaluated"] == "actor_best" and ppo["per_seed"][1]["best_iteration"] == 20
    assert "evaluated" not in bon["per_seed"][0]  # best-of-n trains nothing
    # best-of-4 gains 0.1 and 0.3: mean 0.2, sd sqrt(0.02), t(1) = 12.706 -> half width 12.706 * 0.1
    assert bon["gain_mean"] == pytest.approx(0.2)
    assert bon["gain_ci95"] == pytest.approx([0.2 - 1.2706, 0.2 + 1.2706])
    assert bon["families_flagged"] == [] and bon["wall_s_mean"] == pytest.approx(15.0)
    text = (tmp_path / "study.md").read_text()
    assert "| PPO (RM) | 0.750 ± 0.071 | +0.200 [+0.200, +0.200] |" in text and "**sort -0.100**" in text
    assert "(bound)" in text and (tmp_path / "study.png").stat().st_size > 1000


def test_one_seed_interval_is_the_sampling_error_and_says_so():
    low, high, how = gain_interval([0.2], one_seed_stderr=0.05)
    assert (low, high) == pytest.approx((0.2 - 0.098, 0.2 + 0.098)) and "one seed" in how


def test_seed_overrides_cover_every_stage_of_a_pipeline():
    assert seed_overrides(["sft", "prefs", "rm", "ppo", "eval"], 7) == [
        "sft.train.seed=7", "prefs.preferences.seed=7", "prefs.preferences.judge.seed=7", "rm.train.seed=7",
        "ppo.loop.seed=7", "eval.sampling.seed=7", "eval.rm_pairs.seed=7"]


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0,x"], "comma-separated integers"),
    (["--seeds", "1,1"], "distinct"),
    (["--methods", "ppo,sft2"], "unknown method"),
    (["--methods", "dpo"], "ppo method is needed"),
])
def test_study_refuses_bad_arguments(tmp_path, capsys, argv, message):
    assert cli_main(["study", "--out", str(tmp_path / "s"), *argv]) == 2
    assert message in capsys.readouterr().err


def test_every_method_pipeline_takes_its_seed_overrides():
    """Each key seed_overrides names exists in the stage configs it targets (unknown keys are rejected)."""
    from rlhf.pipeline.shipped import find_pipeline
    from rlhf.pipeline.spec import load_pipeline, validate_stages

    for method in METHODS:
        if method.pipeline:
            names = load_pipeline(find_pipeline(method.pipeline)).names()
            validate_stages(load_pipeline(find_pipeline(method.pipeline), seed_overrides(names, 3)))
