"""Running real pipelines: skip when unchanged, rerun a changed stage and the ones after it, stop on a failure.

Slow: every stage is a real DeepSpeed run, as one in-process rank (what is tested is the runner, not Ray Train).
Run: unshare -n bash -c 'ip link set lo up; HF_HUB_OFFLINE=1 python -m pytest -q tests/test_pipeline_run.py'
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from rlhf.manifest import read_manifest
from rlhf.pipeline.runner import StageFailed, run_pipeline
from rlhf.pipeline.spec import load_pipeline

pytestmark = pytest.mark.slow

# Short SFT stages: one worker, 2 optimizer steps on a few rows.
SHORT = {"data": {"limit": 48, "max_length": 128, "eval_fraction": 0.1},
         "train": {"max_steps": 2, "log_every": 1, "eval_every": 0, "checkpoint_every": 0},
         "resources": {"num_workers": 1, "in_process": True}}  # what is tested is the runner, not Ray Train


def chain_pipeline(tmp_path: Path) -> Path:
    """a -> b -> c, each SFT initialised from the one before (the same refs an SFT -> RM -> PPO chain uses)."""
    stages = [{"name": "a", "stage": "sft", "base": "configs/sft/tiny.yaml", "config": SHORT}]
    for prev, name in (("a", "b"), ("b", "c")):
        stages.append({"name": name, "stage": "sft", "base": "configs/sft/tiny.yaml",
                       "config": {**SHORT, "model": {"path": f"${{{prev}.model}}"}}})
    path = tmp_path / "chain.yaml"
    path.write_text("# a chain of three short SFT stages\n" + yaml.safe_dump({"name": "chain", "stages": stages}))
    return path


def stamps(out: Path) -> dict[str, float]:
    return {name: (out / name / "manifest.json").stat().st_mtime_ns for name in "abc"}


def statuses(outcomes) -> dict[str, str]:
    return {o.name: o.status for o in outcomes}


def test_skip_rerun_from_and_failure(tmp_path):
    path, out = chain_pipeline(tmp_path), tmp_path / "run"
    lines: list[str] = []

    first = run_pipeline(load_pipeline(path), out, log=lines.append)
    assert statuses(first) == {"a": "ran", "b": "ran", "c": "ran"}
    b_model = read_manifest(out / "b")["config"]["model"]["path"]
    assert b_model == str((out / "a" / "model").resolve())  # ${a.model} became an absolute path
    assert (out / "c" / "model" / "config.json").is_file()

    before = stamps(out)
    second = run_pipeline(load_pipeline(path), out, log=lines.append)
    assert statuses(second) == {"a": "skipped", "b": "skipped", "c": "skipped"}
    assert stamps(out) == before  # manifests untouched
    assert sum("skipped (complete; config and inputs unchanged)" in line for line in lines) == 3

    # The run directory copied elsewhere: every reference now points to a new path with the same content, so nothing
    # reruns (what `rlhf study` relies on to share stages); a changed artifact there still reruns its readers.
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    assert statuses(run_pipeline(load_pipeline(path), moved, log=lines.append)) == {"a": "skipped", "b": "skipped",
                                                                                    "c": "skipped"}
    (moved / "b" / "model" / "config.json").write_text((moved / "b" / "model" / "config.json").read_text() + " ")
    lines.clear()
    assert statuses(run_pipeline(load_pipeline(path), moved, log=lines.append)) == {"a": "skipped", "b": "skipped",
                                                                                    "c": "ran"}
    assert any("c (sft): running (input changed: ${b.model})" in line for line in lines)

    lines.clear()
    third = run_pipeline(load_pipeline(path, ["b.optim.lr=3e-3"]), out, log=lines.append)
    assert statuses(third) == {"a": "skipped", "b": "ran", "c": "ran"}
    after = stamps(out)
    assert after["a"] == before["a"] and after["b"] != before["b"] and after["c"] != before["c"]
    assert any("b (sft): running (config changed: optim.lr)" in line for line in lines)
    assert any("c (sft): running (input changed: ${b.model})" in line for line in lines)
    assert read_manifest(out / "b")["config"]["optim"]["lr"] == 3e-3

    # --from forces a stage and those after it; here a failing input stops the pipeline at that stage.
    lines.clear()
    with pytest.raises(StageFailed, match=r"stage 'c' failed: UserError: .*nope\.jsonl"):
        run_pipeline(load_pipeline(path, ["b.optim.lr=3e-3", "c.data.path=nope.jsonl"]), out, from_stage="c",
                     log=lines.append)
    assert any(line.startswith("[rlhf] [2/3] b (sft): skipped") for line in lines)
    assert any("[3/3] c (sft): running (forced by --from)" in line for line in lines)
    assert any("[3/3] c (sft): FAILED" in line for line in lines)
    assert read_manifest(out / "c")["status"] == "failed"
    assert stamps(out)["a"] == after["a"] and stamps(out)["b"] == after["b"]
