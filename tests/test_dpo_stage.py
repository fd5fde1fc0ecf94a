"""The DPO stage: bad input is one line and exit 2 before anything starts (fast); one real run on 2 Ray Train
workers under ZeRO-2 that is killed after its first checkpoint and resumes, reusing the reference cache (slow)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from rlhf.cli import main
from rlhf.metrics import read_metrics
from tests.helpers import load_and_generate_plain

TINY = "configs/dpo/tiny.yaml"
PAIR = {"prompt": "What is 2 plus 2?", "chosen": "4", "rejected": "5"}
METRICS = {"train_loss_first", "train_loss_last", "eval_reward_accuracy", "eval_reward_margin", "chosen_logp_last",
           "rejected_logp_last"}


def run_dpo(capsys, tmp_path, *overrides: str) -> tuple[int, str]:
    code = main(["stage", "dpo", "--config", TINY, "--out", str(tmp_path / "out"), *overrides])
    return code, capsys.readouterr().err.strip()


def check_one_line(code: int, err: str, *needles: str) -> None:
    assert code == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def write(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_identical_sides_are_an_error(capsys, tmp_path):
    data = write(tmp_path / "p.jsonl", [PAIR, {**PAIR, "rejected": PAIR["chosen"]}, PAIR])
    code, err = run_dpo(capsys, tmp_path, f"data.path={data}")
    check_one_line(code, err, "p.jsonl:2", "identical")


def test_empty_file_is_an_error(capsys, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    code, err = run_dpo(capsys, tmp_path, f"data.path={empty}")
    check_one_line(code, err, "empty.jsonl", "no records")


@pytest.mark.parametrize("beta", ["0", "-0.1"])
def test_beta_must_be_positive(capsys, tmp_path, beta):
    code, err = run_dpo(capsys, tmp_path, f"loss.beta={beta}")
    check_one_line(code, err, "beta", "> 0")


def test_a_reference_with_another_tokenizer_is_an_error(capsys, tmp_path):
    from tokenizers import Tokenizer, models
    from transformers import LlamaConfig, PreTrainedTokenizerFast

    ref = tmp_path / "ref"
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "hello": 3}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                                  unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    tok.save_pretrained(ref)
    LlamaConfig(vocab_size=4, hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                num_attention_heads=1).save_pretrained(ref)
    code, err = run_dpo(capsys, tmp_path, f"reference.path={ref}")
    check_one_line(code, err, "reference.path", "tokenizer differs")


def test_unpaired_rows_need_kto(capsys, tmp_path):
    data = write(tmp_path / "u.jsonl", [{"prompt": "Hi?", "completion": "Hello.", "label": True}] * 3)
    code, err = run_dpo(capsys, tmp_path, f"data.path={data}", "data.format=unpaired")
    check_one_line(code, err, "unpaired", "kto")


def wait_for(cond, timeout: float, what: str) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_dpo_two_workers_zero2_kill_resume_reuses_the_reference_cache(tmp_path):
    out = tmp_path / "dpo"
    cmd = [sys.executable, "-m", "rlhf.cli", "stage", "dpo", "--config", TINY, "--out", str(out),
           "train.max_steps=16", "train.checkpoint_every=4", "train.log_every=1", "train.eval_every=0"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: (out / "checkpoints" / "latest").is_file(), 400, "the first checkpoint")
        os.killpg(first.pid, signal.SIGKILL)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    cache = out / "reference_logps.pt"
    assert cache.is_file()  # written before the first step
    cached_at = cache.stat().st_mtime_ns

    second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    assert re.search(r"resuming from .*/checkpoints/step_(\d+)", second.stdout), second.stdout[-3000:]
    assert cache.stat().st_mtime_ns == cached_at  # the resumed run reused the cache, it did not recompute it
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and METRICS <= set(manifest["metrics"])
    m = manifest["metrics"]
    assert m["eval_reward_accuracy"] >= 0.8 and m["eval_reward_margin"] > 0
    assert m["train_loss_last"] < m["train_loss_first"]
    assert [r["step"] for r in read_metrics(out) if "loss" in r] == list(range(1, 17))
    assert list((out / "tensorboard").glob("events.*"))
    assert load_and_generate_plain(out / "model")
