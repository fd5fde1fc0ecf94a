"""Collect modes that sample a local model in Ray actors: the tiny preferences config (read back by the RM's
loader) and the self-instruct ``hf`` teacher. One Ray instance serves both.

    unshare -n bash -c 'ip link set lo up; python -m pytest tests/test_collect_stage_slow.py'
"""

from __future__ import annotations

import json

import pytest

import rlhf.paths
from rlhf.config import load_config
from rlhf.data.io import read_rows
from rlhf.data.preferences import load_pairs
from stages import collect

pytestmark = pytest.mark.slow
CONFIGS = rlhf.paths.CONFIGS_DIR / "collect"


def read_jsonl(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_tiny_preferences_config_gives_pairs_the_rm_loader_reads(tmp_path):
    cfg = load_config(collect.Config, CONFIGS / "tiny-preferences.yaml")
    manifest = collect.run(cfg, tmp_path)
    metrics = manifest["metrics"]
    assert manifest["status"] == "complete" and metrics["prompts"] == 16
    assert metrics["records"] > 0 and metrics["records"] + sum(metrics["drops"].values()) == 16
    samples = read_jsonl(tmp_path / "samples.jsonl")
    assert len(samples) == 16 and all(len(s["responses"]) == 4 for s in samples)
    records = read_jsonl(tmp_path / "preferences.jsonl")
    for record in records:
        sample = next(s for s in samples if s["prompt"] == record["prompt"])
        assert record["chosen"] in sample["responses"] and record["rejected"] in sample["responses"]
        assert record["instruction"] == record["prompt"][-1]["content"].split("\n\n")[0]
    pairs, drops = load_pairs(read_rows(str(tmp_path / "preferences.jsonl")))
    assert len(pairs) == len(records) and drops == {}
    to_label = read_jsonl(tmp_path / "to_label.jsonl")
    assert all(row["preference"] is None and row["output_1"] != row["output_2"] for row in to_label)


def test_hf_teacher_samples_in_ray_actors(tmp_path):
    overrides = ["self_instruct.teacher.kind=hf", "self_instruct.teacher.model=embedded:tiny-llama",
                 "self_instruct.teacher.max_tokens=16", "self_instruct.max_rounds=1",
                 "self_instruct.prompts_per_round=3"]
    manifest = collect.run(load_config(collect.Config, CONFIGS / "tiny-self-instruct.yaml", overrides), tmp_path)
    metrics = manifest["metrics"]
    assert metrics["teacher"] == {"kind": "hf", "generate_calls": 1, "prompts_truncated": 0} and metrics["rounds"] == 1
    # An untrained model writes no numbered tasks: each of the 3 replies is a counted drop.
    assert metrics["drops"] == {"unparseable_reply": 3} and metrics["records"] == 0
