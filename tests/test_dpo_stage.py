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


def test_examples_mark_the_response_and_kto_pairs_each_row_with_another_completion():
    from rlhf.data.preferences import Pair
    from rlhf.data.templates import encode_prompt
    from rlhf.dpo.data import encode_pairs, encode_unpaired, unpaired_from_pairs
    from rlhf.models.loading import resolve_model_path
    from rlhf.models.tokenizer import load_tokenizer

    tok = load_tokenizer(resolve_model_path("embedded:tiny-llama"))
    pairs = [Pair([{"role": "user", "content": f"Question {i}?"}], f"good answer {i}", f"bad {i}", None)
             for i in range(3)]
    examples, same = encode_pairs(pairs, "alpaca", tok, 256)
    assert same == 0 and [e["id"] for e in examples] == [0, 1, 2]
    prompt = encode_prompt(pairs[0].prompt, "alpaca", tok)
    for seq, n in zip(examples[0]["ids"], examples[0]["resp"]):
        assert seq[:len(prompt)] == prompt and n == len(seq) - len(prompt) and seq[-1] == tok.eos_token_id
    # truncation keeps the response (and its eos) and cuts the prompt's start: still only response tokens counted
    short, _ = encode_pairs(pairs, "alpaca", tok, 12)
    assert all(len(s) == 12 for s in short[0]["ids"]) and short[0]["resp"] == examples[0]["resp"]

    kto = encode_unpaired(unpaired_from_pairs(pairs), "alpaca", tok, 256, seed=0, first_id=10)
    assert [e["label"] for e in kto] == [1, 0, 1, 0, 1, 0] and kto[0]["id"] == 10
    own = {tuple(e["ids"][0]) for e in kto}
    for e in kto:
        assert e["ids"][1] != e["ids"][0]  # the KL completion is another row's
        assert e["ids"][1][:len(e["ids"][0]) - e["resp"][0]] == e["ids"][0][:len(e["ids"][0]) - e["resp"][0]]
    assert len(own) == 6


def test_reference_cache_is_the_initial_policy_logps_and_is_reused(tmp_path):
    """before_train without a process group (one rank): the cache holds the same numbers a direct forward gives."""
    import torch

    from rlhf.data.preferences import Pair
    from rlhf.data.splits import save_examples
    from rlhf.dpo.data import encode_pairs
    from rlhf.dpo.logps import sequence_logps
    from rlhf.dpo.losses import LossParams
    from rlhf.dpo.reference import CACHE
    from rlhf.dpo.task import DPOTask
    from rlhf.models.loading import load_causal_lm, resolve_model_path
    from rlhf.models.tokenizer import load_tokenizer

    path = resolve_model_path("embedded:tiny-llama")
    tok = load_tokenizer(path)
    pairs = [Pair([{"role": "user", "content": f"Add {i} and {i}."}], f"{2 * i}", f"{i}{i} maybe", None)
             for i in range(5)]
    train, _ = encode_pairs(pairs[:3], "alpaca", tok, 64)
    evals, _ = encode_pairs(pairs[3:], "alpaca", tok, 64, first_id=len(train))
    save_examples(tmp_path, "train", train)
    save_examples(tmp_path, "eval", evals)
    task = DPOTask(path, path, str(tmp_path), tok.pad_token_id, "dpo", LossParams(beta=0.1))
    model = load_causal_lm(path).eval()
    task.before_train(model, torch.device("cpu"), micro=2)
    assert sorted(task._reference) == [0, 1, 2, 3, 4]
    batch = task.collate(train)
    with torch.no_grad():
        direct = sequence_logps(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    assert torch.allclose(batch["reference"], torch.stack(direct.chunk(2), 1), atol=1e-4)
    with torch.no_grad():  # at step 0 the policy is the reference: every log-ratio is 0, the DPO loss log 2
        loss, stats = task.loss(model, batch)
    assert float(loss) == pytest.approx(0.6931472, abs=1e-4)
    stamp = (tmp_path / CACHE).stat().st_mtime_ns
    again = DPOTask(path, path, str(tmp_path), tok.pad_token_id, "dpo", LossParams(beta=0.1))
    again.before_train(model, torch.device("cpu"), micro=2)
    assert (tmp_path / CACHE).stat().st_mtime_ns == stamp  # reused, not recomputed


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
    # 320 pairs (240 train, 80 eval): the 16 steps read 128, and each run's reference pass covers all of them.
    data = ["data.limit=320", "data.eval_fraction=0.25"]
    cmd = [sys.executable, "-m", "rlhf.cli", "stage", "dpo", "--config", TINY, "--out", str(out),
           "train.max_steps=16", "train.checkpoint_every=4", "train.log_every=1", "train.eval_every=0", *data]
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
    # Read from the rerun, not from `latest` right after the kill: the killed run's Ray workers may outlive their
    # driver for a moment, and the step they resume from is whatever checkpoint was last complete.
    resumed = re.search(r"resuming from .*/checkpoints/step_(\d+)", second.stdout)
    assert resumed and 4 <= int(resumed.group(1)) < 16, second.stdout[-3000:]
    assert cache.stat().st_mtime_ns == cached_at  # the resumed run reused the cache, it did not recompute it
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and METRICS <= set(manifest["metrics"])
    m = manifest["metrics"]
    assert m["eval_reward_accuracy"] >= 0.8 and m["eval_reward_margin"] > 0
    assert m["train_loss_last"] < m["train_loss_first"]
    assert [r["step"] for r in read_metrics(out) if "loss" in r] == list(range(1, 17))  # each step once
    assert json.loads((out / "train_result.json").read_text())["steps"] == 16
    assert list((out / "tensorboard").glob("events.*"))
    assert load_and_generate_plain(out / "model")

    # reference.mode=live (a frozen copy scores each batch) sees the same first batch from the same weights. It runs
    # as one in-process rank accumulating the two workers' micro-batches (the same 8 rows, so the same first loss),
    # since the 2-worker CLI path was just run twice
    live = tmp_path / "live"
    code = main(["stage", "dpo", "--config", TINY, "--out", str(live), "train.max_steps=1", "train.log_every=1",
                 "train.eval_every=0", "train.checkpoint_every=0", "reference.mode=live", "resources.num_workers=1",
                 "resources.in_process=true", "deepspeed.gradient_accumulation_steps=2", *data])
    assert code == 0
    assert not (live / "reference_logps.pt").exists()
    first_loss = [r["loss"] for r in read_metrics(out) if "loss" in r][0]
    assert [r["loss"] for r in read_metrics(live) if "loss" in r][0] == pytest.approx(first_loss, abs=1e-4)
