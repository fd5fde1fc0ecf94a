"""LoRA for SFT and RM: the merge matches peft's, only adapters train, and a trained run saves a merged model
that plain transformers loads and that reproduces the run's own eval numbers."""

from __future__ import annotations

import copy
import json

import peft
import pytest
import torch

from rlhf.data.splits import save_examples
from rlhf.engine.loop import LoopSpec, train_loop
from rlhf.models.loading import load_causal_lm, resolve_model_path
from rlhf.models.lora import (LoraSection, adapter_parameter_count, apply_lora, merge_lora_state_dict,
                              trainable_parameter_count)
from rlhf.reward.model import load_reward_model, pairwise_loss
from rlhf.models.tokenizer import EMBEDDED_TOKENIZER, load_tokenizer
from rlhf.sections import DeepSpeedSection, OptimSection, TrainSection
from stages import rm, sft

LORA = LoraSection(r=4, alpha=8.0, dropout=0.0, target_modules=["q_proj", "v_proj", "down_proj"])


@pytest.fixture(scope="module")
def base_path() -> str:
    return resolve_model_path("embedded:tiny-llama")


def targeted(key: str) -> bool:
    return any(f".{name}." in key for name in LORA.target_modules)


def test_merge_matches_peft_merge_and_unload(base_path):
    torch.manual_seed(0)
    for build, save in ((load_causal_lm, None), (load_reward_model, ["score"])):
        base = build(base_path)
        adapted = apply_lora(copy.deepcopy(base), LORA, modules_to_save=save)
        with torch.no_grad():
            for name, param in adapted.named_parameters():
                if param.requires_grad:  # B starts at zero; make the update non-trivial
                    param.add_(torch.randn_like(param) * 0.1)
        ours = merge_lora_state_dict(adapted.state_dict(), LORA.scaling)
        reference = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(
            r=LORA.r, lora_alpha=LORA.alpha, target_modules=LORA.target_modules, modules_to_save=save))
        missing = reference.load_state_dict({"base_model.model." + k: v for k, v in adapted.state_dict().items()},
                                            strict=False).missing_keys
        assert not [k for k in missing if "lora_" in k or "modules_to_save" in k]
        expected = reference.merge_and_unload().state_dict()
        assert set(ours) == set(expected) == set(base.state_dict())
        for key, value in expected.items():
            assert torch.allclose(ours[key], value, atol=1e-6), key
        changed = {k for k, v in base.state_dict().items() if not torch.equal(v, ours[k])}
        assert changed == {k for k in ours if targeted(k) or k.startswith("score.")}


def test_only_adapters_train(base_path):
    tok = load_tokenizer(EMBEDDED_TOKENIZER)
    expected = adapter_parameter_count(load_causal_lm(base_path), LORA)
    assert expected == 4 * LORA.r * ((192 + 192) * 2 + (512 + 192))  # 4 layers x (q, v: 192->192; down: 512->192)
    policy = sft.SFTTask(base_path, base_path, "unused", tok.pad_token_id, lora=LORA).build_model()
    assert trainable_parameter_count(policy) == expected
    reward = rm.RewardTask(base_path, base_path, "unused", tok.pad_token_id, "koala", 64, lora=LORA).build_model()
    assert trainable_parameter_count(reward) == expected + 192  # + the score head (1 x hidden)
    assert all("lora_" in n or "modules_to_save" in n for n, p in reward.named_parameters() if p.requires_grad)


@pytest.fixture(scope="module")
def process_group():
    """A one-rank gloo group on loopback, the same kind Ray Train sets up for each worker. 
    One thread, like one worker with cpus_per_worker 1 (spinning OMP threads only contend)."""
    from rlhf.engine.build import single_rank

    with single_rank(threads=1):
        yield


def run_loop(task, out, zero_stage: int, steps: int = 6) -> dict:
    spec = LoopSpec(str(out), task, DeepSpeedSection(zero_stage=zero_stage, micro_batch_size=4),
                    OptimSection(lr=1e-2, warmup_steps=0, schedule="constant"), TrainSection(max_steps=steps))
    train_loop(spec)
    return json.loads((out / "train_result.json").read_text())


def assert_only_targets_changed(base_sd: dict, merged_sd: dict, extra_prefix: str | None = None) -> None:
    assert set(base_sd) == set(merged_sd)
    for key, value in base_sd.items():
        trained = targeted(key) or (extra_prefix is not None and key.startswith(extra_prefix))
        assert torch.equal(value, merged_sd[key]) != trained, key


@pytest.mark.slow
def test_lora_sft_run_saves_a_merged_model(tmp_path, base_path, process_group):
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(base_path)
    cfg = sft.Config.model_validate({"data": {"path": "data/instructions.jsonl", "format": "alpaca", "limit": 40,
                                              "eval_fraction": 0.2, "max_length": 96}, "lora": LORA.model_dump()})
    train, evals, _ = sft.encode_rows(cfg, tok)
    save_examples(tmp_path, "train", train)
    save_examples(tmp_path, "eval", evals)
    task = sft.SFTTask(base_path, base_path, str(tmp_path), tok.pad_token_id, lora=cfg.lora)
    result = run_loop(task, tmp_path, zero_stage=2)

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "model").eval()
    assert_only_targets_changed(load_causal_lm(base_path).state_dict(), merged.state_dict())
    batch = task.collate(evals)  # one batch: every eval example; the run's eval loss is per target token
    with torch.no_grad():
        loss = merged(**batch).loss.item()
    assert loss == pytest.approx(result["eval"]["loss"], abs=1e-4)


@pytest.mark.slow
def test_lora_rm_run_saves_a_merged_model(tmp_path, base_path, process_group):
    from transformers import AutoModelForSequenceClassification

    from rlhf.reward.model import RewardScorer

    tok = load_tokenizer(base_path)
    cfg = rm.Config.model_validate({"data": {"path": "data/preferences.jsonl", "limit": 48, "template": "koala",
                                             "eval_fraction": 0.25, "max_length": 96}, "lora": LORA.model_dump()})
    train, evals, _ = rm.prepare_data(cfg, tok)
    save_examples(tmp_path, "train", train)
    save_examples(tmp_path, "eval", evals)
    task = rm.RewardTask(base_path, base_path, str(tmp_path), tok.pad_token_id, "koala", 96, lora=cfg.lora)
    result = run_loop(task, tmp_path, zero_stage=3)  # ZeRO-3: the merge runs on the consolidated state dict

    merged = AutoModelForSequenceClassification.from_pretrained(tmp_path / "model").eval()
    # the score head starts random, so only the body is compared with the base; the eval numbers below cover the head
    base_sd = load_reward_model(base_path).state_dict()
    assert_only_targets_changed({k: v for k, v in base_sd.items() if k != "score.weight"},
                                {k: v for k, v in merged.state_dict().items() if k != "score.weight"})
    scorer = RewardScorer(str(tmp_path / "model"))
    chosen = torch.tensor(scorer.score_ids([e["chosen"] for e in evals]))
    rejected = torch.tensor(scorer.score_ids([e["rejected"] for e in evals]))
    assert pairwise_loss(chosen, rejected).item() == pytest.approx(result["eval"]["loss"], abs=1e-4)
    assert (chosen > rejected).float().mean().item() == pytest.approx(result["eval"]["accuracy"])
