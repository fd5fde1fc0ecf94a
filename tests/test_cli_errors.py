"""Bad input to a stage: one clear line naming the file/key/line, exit 2, never a traceback. Nothing starts Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rlhf.cli import main

GOOD_ROW = {"instruction": "Say hi.", "input": "", "output": "hi"}


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = main(["stage", "sft", *argv])
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.fixture
def data_file(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(json.dumps(GOOD_ROW) for _ in range(4)) + "\n")
    return path


def check_one_line(code: int, err: str, *needles: str) -> None:
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def test_missing_config_file(capsys, tmp_path):
    code, err = run_cli(capsys, "--config", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o"))
    check_one_line(code, err, "config file not found", "nope.yaml")


def test_unknown_key(capsys, tmp_path, data_file):
    code, err = run_cli(capsys, "--out", str(tmp_path / "o"), f"data.path={data_file}", "train.max_step=3")
    check_one_line(code, err, "unknown key 'train.max_step'", "did you mean 'train.max_steps'")


def test_wrong_type(capsys, tmp_path, data_file):
    code, err = run_cli(capsys, "--out", str(tmp_path / "o"), f"data.path={data_file}", "deepspeed.zero_stage=five")
    check_one_line(code, err, "deepspeed.zero_stage")


def test_max_length_not_positive(capsys, tmp_path, data_file):
    code, err = run_cli(capsys, "--out", str(tmp_path / "o"), f"data.path={data_file}", "data.max_length=0")
    check_one_line(code, err, "data.max_length", "greater than 0")


def test_model_path_missing(capsys, tmp_path, data_file):
    code, err = run_cli(capsys, "--out", str(tmp_path / "o"), f"data.path={data_file}", f"model.path={tmp_path}/no-model")
    check_one_line(code, err, "model path does not exist", "no-model")


def test_empty_dataset(capsys, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, err = run_cli(capsys, "--out", str(tmp_path / "o"), f"data.path={empty}")
    check_one_line(code, err, "empty.jsonl", "no records")


def test_bad_json_line_names_line(capsys, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(GOOD_ROW) + "\n" + json.dumps(GOOD_ROW) + "\n{not json\n")
    code, err = run_cli(capsys, "--out", str(tmp_path / "o"), f"data.path={bad}")
    check_one_line(code, err, "bad.jsonl:3", "not valid JSON")


def test_missing_required_field(capsys, tmp_path):
    bad = tmp_path / "fields.jsonl"
    bad.write_text(json.dumps(GOOD_ROW) + "\n" + json.dumps({"instruction": "x", "input": ""}) + "\n")
    code, err = run_cli(capsys, "--out", str(tmp_path / "o"), f"data.path={bad}", "data.format=alpaca")
    check_one_line(code, err, "fields.jsonl:2", "output")


def test_failed_stage_leaves_no_complete_manifest(capsys, tmp_path):
    bad = tmp_path / "fields.jsonl"
    bad.write_text(json.dumps({"instruction": "x"}) + "\n")
    out = tmp_path / "o"
    run_cli(capsys, "--out", str(out), f"data.path={bad}", "data.format=alpaca")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "failed" and "output" in manifest["error"]


def test_real_process_prints_no_traceback(tmp_path):
    """The console script itself, as a user runs it."""
    proc = subprocess.run(
        [sys.executable, "-m", "rlhf.cli", "stage", "sft", "--config", str(tmp_path / "missing.yaml"), "--out", str(tmp_path)],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"rlhf: error: config file not found: {tmp_path / 'missing.yaml'}"]


@pytest.fixture(scope="module")
def causal_lm_dir():
    from rlhf.models.loading import resolve_model_path

    return resolve_model_path("embedded:tiny-llama")  # an SFT-shaped causal-LM dir, not a reward model


@pytest.mark.parametrize("argv", [
    ["stage", "ppo", "--config", "configs/ppo/tiny.yaml", "reward.function=null", "reward.kwargs={}",
     "reward.model={rm}"],
    ["stage", "eval", "--config", "configs/eval/tiny.yaml", "reward_model={rm}"],
    ["stage", "collect", "--config", "configs/collect/tiny-preferences.yaml", "preferences.judge.kind=rm",
     "preferences.judge.callable=null", "preferences.judge.path={rm}"],
    ["serve", "{rm}"],
], ids=["ppo", "eval", "collect", "serve"])
def test_a_causal_lm_is_refused_as_a_reward_model(capsys, tmp_path, causal_lm_dir, argv):
    """Every place that loads an RM checks its config.json first; HF would give a causal LM a random score head."""
    from rlhf.paths import REPO_ROOT

    argv = [a.replace("{rm}", causal_lm_dir).replace("configs/", f"{REPO_ROOT}/configs/") for a in argv]
    if argv[0] == "stage":
        argv[4:4] = ["--out", str(tmp_path / "o")]
    code = main(argv)
    err = capsys.readouterr().err.strip()
    check_one_line(code, err, "not a reward model", "LlamaForCausalLM")
    assert not (tmp_path / "o" / "manifest.json").exists()
