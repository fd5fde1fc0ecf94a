"""PPO experience on hand-built batches: layout and masks (EOS before max length), rewards + GAE through
``compute_advantages``, the minibatch order, the entropy bonus, placement plans, batch arithmetic."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf.config import validate
from rlhf.errors import UserError
from rlhf.ppo.config import AlgorithmSection, PPOResourcesSection, RewardSection
from rlhf.ppo.experience import (NonFinite, batched_logprobs, batched_values, build_rollout, compute_advantages,
                                 select_rows, shards)
from rlhf.ppo.losses import entropy_bonus
from rlhf.ppo.masking import masked_mean
from rlhf.ppo.minibatch import minibatch_order
from rlhf.ppo.placement import Slot, plan
from rlhf.reward.shaping import RunningMoments

EOS, PAD = 2, 3


def t(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


def two_rows():
    # Row 0 ends in EOS after 2 of 3 possible tokens; row 1 is cut at max length without EOS.
    return build_rollout([[5, 6], [7]], [[10, EOS], [11, 12, 13]], EOS, PAD)


def test_rollout_layout_masks_and_positions() -> None:
    r = two_rows()
    assert r.prompt_width == 2 and r.response_width == 3
    assert r.input_ids.tolist() == [[5, 6, 10, EOS, PAD], [PAD, 7, 11, 12, 13]]
    assert r.attention_mask.tolist() == [[1, 1, 1, 1, 0], [0, 1, 1, 1, 1]]
    assert r.response_mask.tolist() == [[1, 1, 0], [1, 1, 1]]
    assert r.ended_with_eos.tolist() == [True, False]
    assert r.response_ids.tolist() == [[10, EOS, PAD], [11, 12, 13]]
    # Positions count from each row's first real token (left padding shifts nothing).
    assert r.position_ids.tolist() == [[0, 1, 2, 3, 3], [0, 0, 1, 2, 3]]
    # A sampled token equal to the pad id inside a response stays in: masks come from lengths, not ids.
    r2 = build_rollout([[5]], [[PAD, 9, EOS]], EOS, PAD)
    assert r2.response_mask.tolist() == [[1, 1, 1]] and r2.attention_mask.tolist() == [[1, 1, 1, 1]]
    one = select_rows(r, slice(1, 2))
    assert one.input_ids.tolist() == [[PAD, 7, 11, 12, 13]] and one.ended_with_eos.tolist() == [False]
    with pytest.raises(ValueError):
        build_rollout([[5]], [[]], EOS, PAD)


def test_shards_split_evenly() -> None:
    assert shards(6, 3) == [slice(0, 2), slice(2, 4), slice(4, 6)]
    with pytest.raises(ValueError):
        shards(5, 2)


def algo(**kw) -> AlgorithmSection:
    return AlgorithmSection(**{"gamma": 1.0, "lam": 1.0, "whiten_advantages": False, "kl_estimator": "k1", **kw})


def reward(**kw) -> RewardSection:
    return RewardSection(function="rlhf.reward.functions:count_occurrences", **kw)


LOGP = t([[-1.0, -2.0, 99.0], [-0.5, -1.0, -1.5]])  # 99 / -50 / 77 sit after row 0's EOS: must not matter
REF = t([[-1.5, -1.0, -50.0], [-0.5, -2.0, -1.0]])
VALUES = t([[0.5, 1.0, 77.0], [0.2, 0.3, 0.4]])


def test_compute_advantages_hand_computed() -> None:
    exp, stats = compute_advantages(two_rows(), LOGP, REF, VALUES, t([2.0, 1.0]), 0.1, algo(),
                                    reward(missing_eos_penalty=0.5), RunningMoments())
    # k1 KL = logp - ref: row 0 [0.5, -1.0, -], row 1 [0.0, 1.0, -0.5]; -0.1 * KL per token.
    # Scores land on the last response token; row 1 has no EOS: 1.0 - 0.5 = 0.5.
    #   rewards row 0: [-0.05, 0.1 + 2.0, 0] = [-0.05, 2.1, 0]
    #   rewards row 1: [0, -0.1, 0.05 + 0.5] = [0, -0.1, 0.55]
    # gamma = lam = 1: A_t = (sum of rewards from t) - V_t; returns = reward-to-go.
    #   row 0: to-go [2.05, 2.1]        -> A [1.55, 1.1, 0],        returns [2.05, 2.1, 0]
    #   row 1: to-go [0.45, 0.45, 0.55] -> A [0.25, 0.15, 0.15],    returns [0.45, 0.45, 0.55]
    assert torch.allclose(exp.advantages, t([[1.55, 1.1, 0.0], [0.25, 0.15, 0.15]]), atol=1e-6)
    assert torch.allclose(exp.returns, t([[2.05, 2.1, 0.0], [0.45, 0.45, 0.55]]), atol=1e-6)
    assert stats["reward_mean"] == pytest.approx(1.5)  # raw scores, before penalty/clipping
    assert stats["reward_std"] == pytest.approx(math.sqrt(0.5))
    assert stats["kl"] == pytest.approx((-0.5 + 0.5) / 2)  # per-sequence sums -0.5 and 0.5
    assert stats["response_length"] == pytest.approx(2.5)
    assert stats["eos_fraction"] == pytest.approx(0.5)
    assert exp.old_logp is LOGP and exp.old_values is VALUES


def test_compute_advantages_clip_whiten_and_k3() -> None:
    exp, _ = compute_advantages(two_rows(), LOGP, REF, VALUES, t([2.0, 1.0]), 0.1, algo(), reward(clip=1.5),
                                RunningMoments())
    # Clip 2.0 -> 1.5 on row 0 only: its advantages drop by 0.5; row 1 (no penalty now): score 1.0.
    assert torch.allclose(exp.advantages, t([[1.05, 0.6, 0.0], [0.75, 0.65, 0.65]]), atol=1e-6)
    white, _ = compute_advantages(two_rows(), LOGP, REF, VALUES, t([2.0, 1.0]), 0.1, algo(whiten_advantages=True),
                                  reward(), RunningMoments())
    mask = two_rows().response_mask
    assert masked_mean(white.advantages, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert white.advantages[0, 2].item() == 0.0
    k3, stats = compute_advantages(two_rows(), LOGP, REF, VALUES, t([0.0, 0.0]), 1.0, algo(kl_estimator="k3"),
                                   reward(), RunningMoments())
    # k3 = (r - 1) - log r with log r = ref - logp; row 1 token 0 has r = 1 -> 0.
    k3_01 = math.exp(1.0) - 1 - 1.0  # row 0 token 1: log r = -1.0 - (-2.0) = 1
    k3_00 = math.exp(-0.5) - 1 + 0.5
    assert stats["kl"] == pytest.approx(((k3_00 + k3_01) + (0 + (math.exp(-1) - 1 + 1) + (math.exp(0.5) - 1 - 0.5))) / 2,
                                        rel=1e-5)


def test_non_finite_scores_raise_before_touching_moments() -> None:
    moments = RunningMoments()
    with pytest.raises(NonFinite, match="reward"):
        compute_advantages(two_rows(), LOGP, REF, VALUES, t([float("nan"), 1.0]), 0.1, algo(),
                           reward(normalize=True), moments)
    assert moments.count == 0
    with pytest.raises(NonFinite, match="log-prob"):
        bad = LOGP.clone()
        bad[1, 2] = float("inf")
        compute_advantages(two_rows(), bad, REF, VALUES, t([1.0, 1.0]), 0.1, algo(), reward(), moments)
    # Non-finite values after row 0's EOS are masked: no error.
    after = LOGP.clone()
    after[0, 2] = float("nan")
    compute_advantages(two_rows(), after, REF, VALUES, t([1.0, 1.0]), 0.1, algo(), reward(), moments)


def tiny_llama(cls_name: str = "LlamaForCausalLM"):
    import transformers

    cfg = transformers.LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                   num_attention_heads=2, num_key_value_heads=2, pad_token_id=PAD, num_labels=1)
    torch.manual_seed(0)
    return getattr(transformers, cls_name)(cfg).eval()


def test_batched_logprobs_match_unpadded_forward() -> None:
    model = tiny_llama()
    r = two_rows()
    logp, ent = batched_logprobs(model, r, temperature=0.7, batch_size=1, with_entropy=True)
    for row, (prompt, response) in enumerate([([5, 6], [10, EOS]), ([7], [11, 12, 13])]):
        ids = torch.tensor([prompt + response])
        logits = model(ids).logits[0, len(prompt) - 1:-1] / 0.7
        expected = torch.log_softmax(logits, -1).gather(-1, torch.tensor(response).unsqueeze(-1)).squeeze(-1)
        assert torch.allclose(logp[row, :len(response)], expected, atol=1e-5)
        p = torch.softmax(logits, -1)
        assert torch.allclose(ent[row, :len(response)], -(p * p.log()).sum(-1), atol=1e-5)


def test_batched_values_match_unpadded_forward() -> None:
    from rlhf.reward.model import TokenValues

    critic = TokenValues(tiny_llama("LlamaForSequenceClassification"))
    r = two_rows()
    values = batched_values(critic, r, batch_size=2)
    for row, (prompt, response) in enumerate([([5, 6], [10, EOS]), ([7], [11, 12, 13])]):
        ids = torch.tensor([prompt + response])
        full = critic(ids, torch.ones_like(ids))[0]
        assert torch.allclose(values[row, :len(response)], full[len(prompt) - 1:-1], atol=1e-5)


def test_minibatch_order_covers_rows_each_epoch() -> None:
    order = minibatch_order(6, 2, epochs=2, seed=0)
    assert len(order) == 6 and all(len(mb) == 2 for mb in order)
    assert sorted(torch.cat(order[:3]).tolist()) == list(range(6))
    assert sorted(torch.cat(order[3:]).tolist()) == list(range(6))
    assert [mb.tolist() for mb in order] == [mb.tolist() for mb in minibatch_order(6, 2, 2, seed=0)]
    with pytest.raises(ValueError):
        minibatch_order(6, 4, 1, 0)


def test_entropy_bonus() -> None:
    ent = t([[1.0, 3.0, 100.0]])
    loss, h = entropy_bonus(ent, t([[1, 1, 0]]), coef=0.01)
    assert h.item() == pytest.approx(2.0)  # (1 + 3) / 2; the masked 100 is ignored
    assert loss.item() == pytest.approx(-0.02)
    with pytest.raises(ValueError):
        entropy_bonus(ent, t([[1, 1, 0]]), coef=-1.0)


def test_placement_plan_with_and_without_colocation() -> None:
    res = PPOResourcesSection(actor_workers=2, ref_workers=2, colocate_actor_ref=True, cpus_per_bundle=1.0)
    bundles, slots = plan(res, use_gpu=False)
    assert bundles == [{"CPU": 1.0}] * 4  # actor+ref x2, critic, reward
    assert slots["actor"] == [Slot(0, 0.5, 0.0), Slot(1, 0.5, 0.0)]
    assert slots["ref"] == [Slot(0, 0.5, 0.0), Slot(1, 0.5, 0.0)]
    assert slots["critic"] == [Slot(2, 1.0, 0.0)] and slots["reward"] == [Slot(3, 1.0, 0.0)]
    res = PPOResourcesSection(colocate_critic_reward=True, cpus_per_bundle=2.0)
    bundles, slots = plan(res, use_gpu=True)
    assert bundles == [{"CPU": 2.0, "GPU": 1.0}] * 3
    assert slots["critic"] == [Slot(2, 1.0, 0.5)] and slots["reward"] == [Slot(2, 1.0, 0.5)]
    # A critic-free estimator: no critic slots or bundles; the reward workers get whole bundles even if the
    # config asks to colocate them with the (absent) critic.
    bundles, slots = plan(PPOResourcesSection(colocate_critic_reward=True), use_gpu=False, with_critic=False)
    assert bundles == [{"CPU": 1.0}] * 3 and "critic" not in slots  # actor, ref, reward
    assert slots["reward"] == [Slot(2, 1.0, 0.0)]
    with pytest.raises(UserError, match="colocate_actor_ref"):
        validate(PPOResourcesSection, {"actor_workers": 2, "colocate_actor_ref": True}, "t.yaml")


def test_stage_config_checks() -> None:
    from stages import ppo

    base = {"prompts": {"path": "data/instructions.jsonl"}, "reward": {"function": "m:f"}}
    cfg = validate(ppo.Config, base, "t.yaml")
    ppo.check_batch_arithmetic(cfg)  # 16 prompts, minibatch 8, one worker each
    with pytest.raises(UserError, match="at least one"):
        validate(ppo.Config, {**base, "reward": {}}, "t.yaml")
    both = validate(ppo.Config, {**base, "reward": {"function": "m:f", "url": "http://x/score",
                                                      "weights": {"url": 0.5}}}, "t.yaml")
    assert both.reward.sources() == ["url", "function"]
    with pytest.raises(UserError, match="not set"):
        validate(ppo.Config, {**base, "reward": {"function": "m:f", "weights": {"model": 1.0}}}, "t.yaml")
    with pytest.raises(UserError, match="samples_per_prompt >= 2"):
        ppo.check_batch_arithmetic(validate(ppo.Config, {**base, "algorithm": {"estimator": "grpo"}}, "t.yaml"))
    group = validate(ppo.Config, {**base, "algorithm": {"estimator": "rloo", "mini_batch_size": 12},
                                  "rollout": {"prompts_per_iteration": 6, "samples_per_prompt": 4},
                                  "resources": {"critic_workers": 5}}, "t.yaml")
    ppo.check_batch_arithmetic(group)  # 24 rows, minibatch 12; no critic, so critic_workers=5 does not matter
    with pytest.raises(UserError, match="x samples_per_prompt = 24 must be a multiple of algorithm.mini_batch_size=16"):
        ppo.check_batch_arithmetic(group.model_copy(update={"algorithm": group.algorithm.model_copy(
            update={"mini_batch_size": 16})}))
    with pytest.raises(UserError, match="eval.every needs eval.prompts or eval.validation_fraction"):
        validate(ppo.Config, {**base, "eval": {"every": 5}}, "t.yaml")
    with pytest.raises(UserError, match="not both"):
        validate(ppo.Config, {**base, "eval": {"every": 5, "prompts": "p.jsonl", "validation_fraction": 0.1}},
                 "t.yaml")
    held = validate(ppo.Config, {**base, "eval": {"every": 5, "validation_fraction": 0.25, "limit": 3}}, "t.yaml")
    rows = list(range(20))
    train, val = ppo.eval_split(held, None, rows)
    assert len(val) == 3 and not set(val) & set(train) and len(train) == 15  # 5 held out, the first 3 evaluated
    assert ppo.eval_split(held, None, rows) == (train, val)  # seeded by loop.seed
    again = held.model_copy(update={"loop": held.loop.model_copy(update={"seed": 1})})
    assert ppo.eval_split(again, None, rows)[1] != val
    with pytest.raises(UserError, match="leave none to hold out"):
        ppo.eval_split(held, None, [0])
    with pytest.raises(UserError, match="needs eval.function"):
        validate(ppo.Config, {**base, "eval": {"every": 5, "prompts": "p.jsonl", "keep_best": "eval_function"}},
                 "t.yaml")
    bad = validate(ppo.Config, {**base, "algorithm": {"mini_batch_size": 6}}, "t.yaml")
    with pytest.raises(UserError, match="mini_batch_size"):
        ppo.check_batch_arithmetic(bad)
    bad = validate(ppo.Config, {**base, "resources": {"actor_workers": 3}}, "t.yaml")
    with pytest.raises(UserError, match="actor_workers"):
        ppo.check_batch_arithmetic(bad)
    bad = validate(ppo.Config, {**base, "algorithm": {"micro_batch_size": 3}}, "t.yaml")
    with pytest.raises(UserError, match="micro_batch_size=3"):  # 8 rows per worker
        ppo.check_batch_arithmetic(bad)
    ppo.check_batch_arithmetic(validate(ppo.Config, {**base, "algorithm": {"micro_batch_size": 2}}, "t.yaml"))


def test_fractional_gpu_bundles_and_backend() -> None:
    from rlhf.engine.collectives import resolve_backend

    res = PPOResourcesSection(actor_workers=2, gpus_per_bundle=0.5)
    bundles, slots = plan(res, use_gpu=True)
    assert bundles[:2] == [{"CPU": 1.0, "GPU": 0.5}] * 2 and slots["actor"] == [Slot(0, 1.0, 0.5), Slot(1, 1.0, 0.5)]
    assert resolve_backend("auto", on_gpu=True, gpus_per_worker=1.0) == "nccl"
    assert resolve_backend("auto", on_gpu=True, gpus_per_worker=0.5) == "gloo"  # NCCL refuses 2 ranks on one GPU
    assert resolve_backend("nccl", on_gpu=False) == "gloo"
