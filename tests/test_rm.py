"""Reward-model pieces without Ray: last-token reading, the pairwise loss, RewardScorer, the RM task and its data."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rlhf.config import load_config
from rlhf.data.templates import encode_prompt_response
from rlhf.engine.checkpoint import save_hf_dir
from rlhf.errors import UserError
from rlhf.models.loading import resolve_model_path
from rlhf.models.reward import (RewardScorer, TokenValues, last_token_scores, load_reward_model, pairwise_loss,
                                save_reward_model,
                                reward_config, unwrap_state_dict)
from rlhf.models.tokenizer import EMBEDDED_TOKENIZER, load_tokenizer
from rlhf.paths import CONFIGS_DIR
from stages import rm

PROMPT = [{"role": "user", "content": "What is 2 plus 3?"}]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(EMBEDDED_TOKENIZER)


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory, tokenizer):
    """A freshly initialised tiny RM saved the way the stage saves one."""
    torch.manual_seed(0)
    model = load_reward_model(resolve_model_path("embedded:tiny-llama"), pad_token_id=tokenizer.pad_token_id)
    out = tmp_path_factory.mktemp("rm") / "model"
    save_hf_dir(model, model.state_dict(), tokenizer, out, reward_config(0.5, 2.0, "koala", 48))
    return str(out)


def test_last_token_scores_left_and_right_padding():
    values = torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 6.0, 7.0, 8.0], [9.0, 10.0, 11.0, 12.0]])
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    left = torch.tensor([[0, 0, 1, 1], [0, 1, 1, 1], [0, 0, 0, 1]])
    assert last_token_scores(values, right).tolist() == [2.0, 8.0, 9.0]
    assert last_token_scores(values, left).tolist() == [4.0, 8.0, 12.0]


def test_pairwise_loss_hand_computed():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    plain = -(math.log(1 / (1 + math.exp(-1.0))) + math.log(1 / (1 + math.exp(1.0)))) / 2
    assert pairwise_loss(chosen, rejected).item() == pytest.approx(plain, rel=1e-6)
    # margin 1 on the first pair: diff 2 - 1 - 1 = 0 -> log 2
    with_margin = (math.log(2.0) - math.log(1 / (1 + math.exp(1.0)))) / 2
    assert pairwise_loss(chosen, rejected, torch.tensor([1.0, 0.0])).item() == pytest.approx(with_margin, rel=1e-6)
    # centering: mean((3)^2, (1)^2) = 5
    assert pairwise_loss(chosen, rejected, center_coef=0.1).item() == pytest.approx(plain + 0.5, rel=1e-6)


def test_token_values_same_under_left_and_right_padding(rm_dir):
    model = load_reward_model(rm_dir).eval()
    seqs = [[1, 50, 60, 70, 2], [1, 80, 2], [1, 90, 91, 92, 93, 94, 2]]
    width = max(map(len, seqs))
    right = torch.tensor([s + [3] * (width - len(s)) for s in seqs])
    right_mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    left = torch.tensor([[3] * (width - len(s)) + s for s in seqs])
    left_mask = right_mask.flip(1)
    values = TokenValues(model)
    with torch.no_grad():
        r = last_token_scores(values(right, right_mask), right_mask)
        lft = last_token_scores(values(left, left_mask), left_mask)
        alone = torch.cat([last_token_scores(values(torch.tensor([s]), torch.ones(1, len(s))), torch.ones(1, len(s)))
                           for s in seqs])
        hf = model(input_ids=right, attention_mask=right_mask).logits[:, 0]  # HF pools at the last non-pad id
    assert torch.allclose(r, lft, atol=1e-5) and torch.allclose(r, alone, atol=1e-5)
    assert torch.allclose(r, hf, atol=1e-6)


def test_scorer_reads_config_and_scores_like_the_model(rm_dir, tokenizer):
    scorer = RewardScorer(rm_dir)
    assert (scorer.template, scorer.max_length, scorer.mean, scorer.std) == ("koala", 48, 0.5, 2.0)
    responses = ["2 plus 3 is 5.", "I don't know."]
    ids = [encode_prompt_response(PROMPT, r, "koala", tokenizer, 48) for r in responses]
    assert ids[0][-1] == tokenizer.eos_token_id
    scores = scorer.score_pairs([PROMPT, PROMPT], responses)
    assert scores == pytest.approx(scorer.score_ids(ids, batch_size=1), abs=1e-5)
    assert scorer.score_pairs([PROMPT, PROMPT], responses, normalize=True) == \
        pytest.approx([(s - 0.5) / 2.0 for s in scores], abs=1e-6)
    text_ids = tokenizer("hello there", add_special_tokens=True)["input_ids"] + [tokenizer.eos_token_id]
    assert scorer.score_texts(["hello there"]) == pytest.approx(scorer.score_ids([text_ids]), abs=1e-6)
    long_text = " ".join(["word"] * 200)
    assert len(scorer._text_ids(long_text)) == 48 and scorer._text_ids(long_text)[0] == tokenizer.bos_token_id
    with pytest.raises(UserError, match="2 prompts but 1 responses"):
        scorer.score_pairs([PROMPT, PROMPT], ["x"])


def test_scorer_without_statistics_refuses_to_normalize(tmp_path, tokenizer):
    model = load_reward_model(resolve_model_path("embedded:tiny-llama"), pad_token_id=tokenizer.pad_token_id)
    save_hf_dir(model, model.state_dict(), tokenizer, tmp_path / "m", reward_config(None, None, "alpaca", 64))
    with pytest.raises(UserError, match="rlhf_reward_mean"):
        RewardScorer(str(tmp_path / "m")).score_pairs([PROMPT], ["5"], normalize=True)


def test_unwrap_state_dict():
    assert list(unwrap_state_dict({"classifier.score.weight": 1, "classifier.model.x": 2})) == ["score.weight", "model.x"]


def tiny_cfg(tmp_path, records: list[dict], **data) -> rm.Config:
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return rm.Config.model_validate({"data": {"path": str(path), "format": "pairs", "template": "koala",
                                              "eval_fraction": 0.0, **data}})


def test_prepare_data_counts_drops(tmp_path, tokenizer):
    long_prompt = " ".join(["number"] * 100)
    records = [{"prompt": "q", "chosen": "good answer", "rejected": "bad", "margin": 1.5},
               {"prompt": "q", "chosen": "same", "rejected": "same"},
               {"prompt": "q", "chosen": "  ", "rejected": "x"},
               # max_length 8 keeps only each response's start and its eos: both sides become the same ids
               {"prompt": long_prompt, "chosen": "one two three four five six seven eight nine ten",
                "rejected": "one two three four five six seven eight nine eleven"}]
    train, evals, dropped = rm.prepare_data(tiny_cfg(tmp_path, records, max_length=8), tokenizer)
    assert dropped == {"identical": 1, "empty": 1, "identical_after_truncation": 1}
    assert len(train) == 1 and evals == [] and train[0]["margin"] == 1.5
    assert train[0]["chosen"] == encode_prompt_response([{"role": "user", "content": "q"}], "good answer", "koala",
                                                        tokenizer, 8)
    with pytest.raises(UserError, match="pairs.jsonl:2: pair dropped \\(identical\\)"):
        rm.prepare_data(tiny_cfg(tmp_path, records, strict=True), tokenizer)
    with pytest.raises(UserError, match="no usable preference pairs"):
        rm.prepare_data(tiny_cfg(tmp_path, records[1:3]), tokenizer)


def test_reward_task_collate_and_metrics():
    task = rm.RewardTask("m", "t", "o", pad_id=3, template="koala", max_length=16)
    batch = task.collate([{"chosen": [1, 5, 2], "rejected": [1, 2], "margin": 0.5},
                          {"chosen": [1, 6, 7, 2], "rejected": [1, 8, 2], "margin": 0.0}])
    assert batch["input_ids"].tolist() == [[1, 5, 2, 3], [1, 6, 7, 2], [1, 2, 3, 3], [1, 8, 2, 3]]
    assert batch["attention_mask"].sum(1).tolist() == [3, 4, 2, 3]
    assert batch["margin"].tolist() == [0.5, 0.0]
    # rewards 1, 3 (chosen) and 0, 4 (rejected): accuracy 1/2, margins 1 and -1
    metrics = task.eval_metrics({"pairs": 2, "correct": 1, "margin_sum": 0.0, "loss_sum": 1.0,
                                 "reward_sum": 8.0, "reward_sq_sum": 26.0})
    assert metrics == pytest.approx({"accuracy": 0.5, "margin": 0.0, "loss": 0.5, "reward_mean": 2.0,
                                     "reward_std": math.sqrt(26 / 4 - 4)})


def test_initial_model_path_accepts_an_sft_output_dir(tmp_path, rm_dir):
    sft_out = tmp_path / "sft"
    (sft_out / "model").mkdir(parents=True)
    (sft_out / "model" / "config.json").write_text("{}")
    assert rm.initial_model_path(str(sft_out), None) == str(sft_out / "model")
    assert rm.initial_model_path(rm_dir, None) == rm_dir
    with pytest.raises(UserError, match="does not exist"):
        rm.initial_model_path(str(tmp_path / "nothing"), None)


def test_tiny_config_validates():
    cfg = load_config(rm.Config, CONFIGS_DIR / "rm" / "tiny.yaml")
    assert cfg.deepspeed.zero_stage == 2 and cfg.resources.num_workers == 2 and cfg.lora is None
    with pytest.raises(UserError, match="unknown key 'loss.centre_coef'"):
        load_config(rm.Config, CONFIGS_DIR / "rm" / "tiny.yaml", ["loss.centre_coef=0.1"])


_FRESH_PROCESS_SCORES = """
import json, sys, torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
out, seqs = sys.argv[1], json.loads(sys.argv[2])
model = AutoModelForSequenceClassification.from_pretrained(out).eval()
tok = AutoTokenizer.from_pretrained(out)
pad = model.config.pad_token_id
assert pad == tok.pad_token_id, (pad, tok.pad_token_id)
width = max(map(len, seqs))
ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs])
mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
with torch.no_grad():
    print(json.dumps(model(input_ids=ids, attention_mask=mask).logits[:, 0].tolist()))
"""


def test_exported_rm_scores_outside_the_project_when_pad_is_eos(tmp_path, tokenizer):
    """Llama-3-like tokenizers have no pad and no unk, so pad falls back to eos; HF's pooling (last token that is not
    pad_token_id) would then read the token before the final eos, where training never read. The export gives the
    RM a pad of its own so that plain transformers in a fresh process scores as the stage does."""
    import subprocess
    import sys

    tok_dir = tmp_path / "tok"
    tokenizer.save_pretrained(str(tok_dir))
    pad_is_eos = load_tokenizer(str(tok_dir))
    pad_is_eos.pad_token = pad_is_eos.eos_token
    pad_is_eos.save_pretrained(str(tok_dir))
    pad_is_eos = load_tokenizer(str(tok_dir))
    assert pad_is_eos.pad_token_id == pad_is_eos.eos_token_id

    torch.manual_seed(0)
    model = load_reward_model(resolve_model_path("embedded:tiny-llama"), pad_token_id=pad_is_eos.pad_token_id).eval()
    seqs = [encode_prompt_response(PROMPT, r, "alpaca", pad_is_eos, 64) for r in ["2 plus 3 is 5.", "no", "It is 5."]]
    width = max(map(len, seqs))
    ids = torch.tensor([s + [pad_is_eos.pad_token_id] * (width - len(s)) for s in seqs])
    mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs])
    with torch.no_grad():  # how the stage reads a score: at the last attended token (the eos)
        stage_scores = last_token_scores(TokenValues(model)(ids, mask), mask).tolist()

    out = tmp_path / "model"
    save_reward_model(model, model.state_dict(), pad_is_eos, out, reward_config(0.0, 1.0, "alpaca", 64))
    run = subprocess.run([sys.executable, "-c", _FRESH_PROCESS_SCORES, str(out), json.dumps(seqs)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == pytest.approx(stage_scores, abs=1e-5)
    assert RewardScorer(str(out)).score_ids(seqs) == pytest.approx(stage_scores, abs=1e-5)  # and inside, unchanged
