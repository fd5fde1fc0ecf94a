"""The advantage estimators on hand-computed numbers (groups of equal rewards, responses of different lengths),
against TRL's GRPO/RLOO formulas, the loss aggregations, the reward combination and the best-checkpoint choice."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlhf.ppo.estimators import ESTIMATORS, dr_grpo, gae_estimator, grpo, reinforce_pp, rloo
from rlhf.ppo.evaluation import BestTracker, trim_to_multiple
from rlhf.ppo.losses import aggregate, policy_loss
from rlhf.reward.combined import combine
from rlhf.reward.functions import call_reward_function


def t(x) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


# Two groups of three responses; lengths 3, 1, 2 | 2, 3, 1. The 9.0s sit on masked positions and must not matter.
MASK = t([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 0], [1, 1, 1], [1, 0, 0]])
REWARDS = t([[1.0, 1.0, 1.0], [0.0, 9.0, 9.0], [0.2, -0.2, 9.0],  # sums 3, 0, 0
             [0.25, 0.25, 9.0], [0.0, 0.0, 0.5], [0.5, 9.0, 9.0]])  # sums 0.5, 0.5, 0.5: equal rewards
GROUPS = torch.tensor([0, 0, 0, 1, 1, 1])


def per_row(adv: torch.Tensor) -> list[float]:
    """The advantage of each row, checking that it is the same on every response token and 0 on padding."""
    out = []
    for row, mask in zip(adv, MASK):
        live = row[mask.bool()]
        assert torch.allclose(live, live[0].expand_as(live)) and (row[~mask.bool()] == 0).all()
        out.append(live[0].item())
    return out


def test_grpo_hand_computed() -> None:
    # Group 0: rewards 3, 0, 0 -> mean 1, unbiased std sqrt((4 + 1 + 1) / 2) = sqrt(3). Group 1: all 0.5 -> 0.
    adv, returns = grpo(REWARDS, MASK, GROUPS)
    s = math.sqrt(3) + 1e-6
    assert per_row(adv) == pytest.approx([2 / s, -1 / s, -1 / s, 0.0, 0.0, 0.0], abs=1e-6)
    assert returns is None


def test_dr_grpo_hand_computed_no_std_division() -> None:
    adv, _ = dr_grpo(REWARDS, MASK, GROUPS)
    assert per_row(adv) == pytest.approx([2.0, -1.0, -1.0, 0.0, 0.0, 0.0], abs=1e-6)


def test_rloo_hand_computed_leave_one_out() -> None:
    # Row 0: 3 - (0 + 0) / 2 = 3; rows 1, 2: 0 - (3 + 0) / 2 = -1.5; the equal group: 0.5 - 0.5 = 0.
    adv, _ = rloo(REWARDS, MASK, GROUPS)
    assert per_row(adv) == pytest.approx([3.0, -1.5, -1.5, 0.0, 0.0, 0.0], abs=1e-6)


def test_reinforce_pp_hand_computed_returns_whitened_over_the_batch() -> None:
    # gamma = 0.5 reward-to-go per token, then (G - mean) / sqrt(var + 1e-8) over all 12 response tokens.
    returns = [[1 + 0.5 * (1 + 0.5 * 1), 1 + 0.5 * 1, 1.0], [0.0], [0.2 - 0.1, -0.2],
               [0.25 + 0.125, 0.25], [0.125, 0.25, 0.5], [0.5]]
    flat = np.array([g for row in returns for g in row])
    white = (flat - flat.mean()) / math.sqrt(flat.var(ddof=1) + 1e-8)
    adv, _ = reinforce_pp(REWARDS, MASK, GROUPS, gamma=0.5)
    assert adv[MASK.bool()].numpy() == pytest.approx(white, abs=1e-5)
    assert (adv[~MASK.bool()] == 0).all()


def test_equal_rewards_singletons_and_no_nan() -> None:
    equal = t([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])  # every response sums to 1
    mask = torch.ones(4, 2)
    for name in ("grpo", "dr_grpo", "rloo"):
        adv, _ = ESTIMATORS[name].fn(equal, mask, torch.tensor([0, 0, 1, 1]))
        assert torch.equal(adv, torch.zeros(4, 2)), name
        # A group of one has no baseline: advantage 0, not a division by zero.
        adv, _ = ESTIMATORS[name].fn(t([[2.0, 0.0], [0.0, 1.0]]), mask[:2], torch.tensor([0, 1]))
        assert torch.equal(adv, torch.zeros(2, 2)), name
    adv, _ = reinforce_pp(equal, mask, torch.arange(4))
    assert torch.isfinite(adv).all()


def test_group_estimators_match_trl_formulas() -> None:
    """TRL 1.16 computes these inline in GRPOTrainer / RLOOTrainer (no callable function); the same expressions with
    TRL's own ``nanstd``: (r - group mean) / (nanstd + 1e-4), and r - (group sum - r) / (k - 1)."""
    from trl.trainer.utils import nanstd

    g = torch.Generator().manual_seed(0)
    k, groups = 4, 5
    scores = torch.randn(groups * k, generator=g)
    scores[:k] = 1.0  # one group of equal rewards
    lengths = torch.randint(1, 6, (groups * k,), generator=g)
    mask = (torch.arange(5).unsqueeze(0) < lengths.unsqueeze(1)).float()
    rewards = torch.zeros(groups * k, 5)
    rewards[torch.arange(groups * k), lengths - 1] = scores  # the score on the last token
    ids = torch.arange(groups).repeat_interleave(k)
    grouped = scores.view(-1, k)
    trl_grpo = (scores - grouped.mean(1).repeat_interleave(k)) / (nanstd(grouped, dim=1).repeat_interleave(k) + 1e-4)
    ours, _ = grpo(rewards, mask, ids, eps=1e-4)
    assert torch.allclose(ours, trl_grpo.unsqueeze(1) * mask, atol=1e-5)
    trl_rloo = scores - (grouped.sum(1, keepdim=True) - grouped).view(-1) / (k - 1)
    ours, _ = rloo(rewards, mask, ids)
    assert torch.allclose(ours, trl_rloo.unsqueeze(1) * mask, atol=1e-5)


def test_gae_behind_the_registry_and_critic_flags() -> None:
    adv, ret = gae_estimator(t([[0.0, 1.0]]), t([[1, 1]]), torch.tensor([0]), values=t([[0.5, 0.25]]), lam=1.0)
    assert adv[0].tolist() == pytest.approx([0.5, 0.75]) and ret[0].tolist() == pytest.approx([1.0, 1.0])
    with pytest.raises(ValueError, match="critic values"):
        gae_estimator(t([[0.0]]), t([[1]]), torch.tensor([0]))
    assert [n for n, e in ESTIMATORS.items() if e.needs_critic] == ["gae"]
    assert ESTIMATORS["dr_grpo"].loss_agg == "seq_sum_norm"


def test_loss_aggregation_token_mean_and_dr_grpo_token_sum() -> None:
    x, mask = t([[1.0, 2.0, 3.0], [4.0, 7.0, 7.0]]), t([[1, 1, 1], [1, 0, 0]])
    assert aggregate(x, mask).item() == pytest.approx(10 / 4)
    assert aggregate(x, mask, "seq_sum_norm", horizon=4).item() == pytest.approx((6 / 4 + 4 / 4) / 2)
    with pytest.raises(ValueError):
        aggregate(x, mask, "seq_sum_norm")
    # Ratio 1 everywhere: the loss is -aggregate(A).
    adv = t([[1.0, 1.0, 1.0], [-2.0, 0.0, 0.0]])
    loss, _ = policy_loss(torch.zeros(2, 3), torch.zeros(2, 3), adv, mask, 0.2, None, "seq_sum_norm", 3)
    assert loss.item() == pytest.approx(-(3 / 3 + -2 / 3) / 2)


def test_reward_combination_and_records() -> None:
    parts = {"model": t([1.0, -1.0]), "function": t([0.0, 1.0])}
    assert combine(parts, {"function": 2.0}).tolist() == pytest.approx([1.0, 1.0])
    assert combine(parts, {}).tolist() == pytest.approx([1.0, 0.0])

    def verifiable(prompts, responses, records, bonus=0.0):
        return [float(r == rec["output"]) + bonus for r, rec in zip(responses, records)]

    records = [{"instruction": "2+2", "output": "4"}, {"instruction": "3+3", "output": "6"}]
    assert call_reward_function(verifiable, ["2+2", "3+3"], ["4", "5"], records, {"bonus": 0.5}) == [1.5, 0.5]
    # A function without a records parameter is called as before.
    assert call_reward_function(lambda p, r: [len(x) for x in r], ["a"], ["xyz"], records[:1], {}) == [3.0]
    with pytest.raises(ValueError, match="2 scores for 1"):
        call_reward_function(lambda p, r: [1, 2], ["a"], ["b"], None, {})


def test_task_world_oracle_as_verifiable_reward() -> None:
    from rlhf.world.oracle import oracle_reward
    from rlhf.world.tasks import expected_answer

    row = {"instruction": "Write the largest digit.", "input": "2 5 3",
           "task": {"family": "max", "args": {"items": ["2", "5", "3"]}}}
    answer = expected_answer(row["task"])
    assert call_reward_function(oracle_reward, ["ignored text"] * 2, [answer, "2"], [row, row], {}) == [1.0, 0.0]


def test_best_tracker_picks_the_best_iteration() -> None:
    best = BestTracker("eval_reward")
    picks = [best.update(it, v) for it, v in [(5, 0.2), (10, 0.5), (15, float("nan")), (20, 0.5), (25, 0.4)]]
    assert picks == [True, True, False, False, False] and (best.iteration, best.value) == (10, 0.5)
    kl = BestTracker("eval_kl")  # lower is better
    assert [kl.update(it, v) for it, v in [(1, 3.0), (2, 1.0), (3, 2.0)]] == [True, True, False]
    assert kl.iteration == 2
    again = BestTracker("eval_reward")
    again.load_state_dict(best.state_dict())
    assert not again.update(30, 0.45) and again.update(30, 0.6)
    assert trim_to_multiple(list(range(7)), [2, 3]) == list(range(6))


def test_micro_batch_weights_by_rows_for_the_dr_grpo_loss() -> None:
    """Micro-batch losses recombine into the minibatch's: by token share for token means, equally for row means."""
    from rlhf.ppo.minibatch import micro_weights

    x, mask = t([[1.0, 2.0, 3.0], [4.0, 7.0, 7.0], [1.0, 1.0, 0.0], [2.0, 0.0, 0.0]]), \
        t([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 0, 0]])
    for mode, by in (("token_mean", "tokens"), ("seq_sum_norm", "rows")):
        whole = aggregate(x, mask, mode, horizon=3)
        weights = micro_weights(mask, 2, by)
        parts = [aggregate(x[i:i + 2], mask[i:i + 2], mode, horizon=3) for i in (0, 2)]
        # DeepSpeed divides each micro-batch's loss by the 2 accumulation steps.
        assert sum(w * p for w, p in zip(weights, parts)).item() / 2 == pytest.approx(whole.item()), mode
