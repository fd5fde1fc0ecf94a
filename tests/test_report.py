"""The report from a hand-made pipeline directory: numbers carried over, targets judged, plots written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhf.cli import main as cli_main
from rlhf.report import write_report

EVAL = {
    "policy": "ppo", "baseline": "sft", "prompts": 4, "samples_per_prompt": 2, "decoding": "sampling, temperature 1.0",
    "oracle_accuracy": {"ppo": 0.75, "sft": 0.5}, "oracle_accuracy_stderr": {"ppo": 0.1, "sft": 0.1},
    "oracle_accuracy_by_family": {"ppo": {"max": 1.0, "sort": 0.5}, "sft": {"max": 0.5, "sort": 0.5}},
    "win_rate_ppo_vs_sft": 0.625, "rm_accuracy_clean": 0.9, "rm_pairs_clean": 3, "kl_ppo_vs_sft": 1.25,
    "kl_ppo_vs_sft_stderr": 0.2, "rm_score_mean": {"ppo": 0.5, "sft": -0.1},
}


def _stage(root: Path, name: str, kind: str, config: dict, wall: float, metrics: dict | None = None,
           rows: list[dict] | None = None) -> None:
    d = root / name
    d.mkdir(parents=True)
    manifest = {"stage": kind, "status": "complete", "config": config, "wall_s": wall, "metrics": metrics or {}}
    (d / "manifest.json").write_text(json.dumps(manifest))
    (d / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows or []))


@pytest.fixture()
def pipeline_dir(tmp_path: Path) -> Path:
    stages = {"sft": "sft", "prefs": "collect", "rm": "rm", "ppo": "ppo", "eval": "eval"}
    (tmp_path / "pipeline.json").write_text(json.dumps({"stages": {n: {"stage": k} for n, k in stages.items()}}))
    _stage(tmp_path, "sft", "sft", {"train": {"seed": 0}}, 100.0,
           rows=[{"step": 1, "loss": 3.0}, {"step": 2, "loss": 2.0}, {"step": 2, "eval_loss": 2.5}])
    _stage(tmp_path, "prefs", "collect", {"mode": "preferences", "preferences": {"seed": 0}}, 50.0, {"records": 12})
    _stage(tmp_path, "rm", "rm", {"train": {"seed": 0}}, 40.0, {"eval_accuracy": 0.7},
           rows=[{"step": 5, "loss": 0.6, "accuracy": 0.6}, {"step": 5, "eval_accuracy": 0.7}])
    _stage(tmp_path, "ppo", "ppo", {"loop": {"seed": 0}, "algorithm": {"kl_target": 2.0}}, 300.0,
           {"reward_first": -0.5, "reward_last": 0.4},
           rows=[{"step": i, "reward_mean": 0.1 * i, "kl": 0.2 * i} for i in range(1, 6)])
    _stage(tmp_path, "eval", "eval", {"sampling": {"seed": 0}}, 30.0)
    (tmp_path / "eval" / "eval.json").write_text(json.dumps(EVAL))
    return tmp_path


def test_report_carries_the_eval_numbers_and_judges_the_targets(pipeline_dir: Path):
    report = write_report(pipeline_dir)
    on_disk = json.loads((pipeline_dir / "report.json").read_text())
    assert on_disk == report
    assert report["oracle_accuracy"] == {"ppo": 0.75, "sft": 0.5}
    assert report["win_rate_ppo_vs_sft"] == 0.625
    assert report["rm_accuracy_clean"] == 0.9
    assert report["kl_ppo_vs_sft"] == 1.25 and report["kl_target"] == 2.0
    assert report["wall_s"] == 520.0  # 100 + 50 + 40 + 300 + 30
    assert report["seed"] == 0 and report["preference_pairs"] == 12
    t = report["targets"]
    assert t["accuracy_gain"]["value"] == pytest.approx(0.25) and t["accuracy_gain"]["met"] is True
    assert t["rm_accuracy_clean"]["met"] is True
    assert t["kl_under_target"]["met"] is True
    assert t["wall_s"]["met"] is True


def test_report_marks_a_missed_target(pipeline_dir: Path):
    ev = dict(EVAL, oracle_accuracy={"ppo": 0.55, "sft": 0.5}, kl_ppo_vs_sft=3.0)
    (pipeline_dir / "eval" / "eval.json").write_text(json.dumps(ev))
    t = write_report(pipeline_dir)["targets"]
    assert t["accuracy_gain"]["met"] is False and t["kl_under_target"]["met"] is False


def test_report_writes_markdown_and_png_plots(pipeline_dir: Path):
    report = write_report(pipeline_dir)
    assert set(report["plots"]) == {"sft_loss", "rm_accuracy", "ppo_reward_kl", "accuracy", "overview"}
    for rel in report["plots"].values():
        assert (pipeline_dir / rel).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (pipeline_dir / "report.md").read_text()
    assert "| oracle accuracy, PPO | 0.750" in md and "| gain (PPO − SFT) | 0.250" in md
    assert "![overview](plots/overview.png)" in md
    assert "| max | 0.500 | 1.000 | +0.500 |" in md


def test_rlhf_report_command(pipeline_dir: Path, tmp_path_factory, capsys):
    assert cli_main(["report", str(pipeline_dir)]) == 0
    assert '"win_rate_ppo_vs_sft": 0.625' in capsys.readouterr().out
    empty = tmp_path_factory.mktemp("empty")
    assert cli_main(["report", str(empty)]) == 2
    err = capsys.readouterr().err
    assert "no pipeline.json" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("reward, estimator, expect, absent", [
    ({"model": "/rm"}, "gae", ["PPO optimised the RM's score, never the oracle's", "oracle accuracy, PPO"], []),
    ({"function": "rlhf.world.oracle:oracle_reward"}, "grpo",
     ["GRPO optimised the oracle itself as a verifiable reward", "oracle accuracy, GRPO", "GRPO's kl_target"],
     ["never the oracle"]),
    ({"model": "/rm", "function": "my.mod:bonus"}, "rloo", ["RLOO optimised the RM's score, the reward function "
                                                            "`my.mod:bonus`, never the oracle's"], []),
])
def test_report_says_what_the_policy_optimised(pipeline_dir: Path, reward, estimator, expect, absent):
    """A verifiable-reward run must not claim the oracle was never optimised, and columns name the method."""
    manifest = json.loads((pipeline_dir / "ppo" / "manifest.json").read_text())
    manifest["config"].update(reward=reward, algorithm={"kl_target": 2.0, "estimator": estimator})
    (pipeline_dir / "ppo" / "manifest.json").write_text(json.dumps(manifest))
    write_report(pipeline_dir)
    text = (pipeline_dir / "report.md").read_text()
    for phrase in expect:
        assert phrase in text
    for phrase in absent:
        assert phrase not in text
