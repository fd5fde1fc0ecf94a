"""Advantage estimators behind one signature, one small function each (verl's ``core_algos`` registry layout).

    estimator(rewards, mask, group_ids, values=None, gamma=1.0, lam=1.0, eps=1e-6) -> (advantages, returns | None)

rewards: [B, T] per-token rewards over response tokens (``compose_rewards``: the sequence score on the last
token, minus beta * KL per token when the KL is in the reward); mask: [B, T] response mask; group_ids: [B] ints,
equal for the responses sampled from the same prompt (``rollout.samples_per_prompt``); values: [B, T] critic
values (GAE only). All return [B, T] advantages, 0 on masked positions; ``returns`` are the critic's targets and
None for the critic-free estimators. Outcome estimators (GRPO, Dr. GRPO, RLOO) take a response's reward as the
sum of its per-token rewards (verl ``token_level_rewards.sum(-1)``), so a KL in the reward lowers that sum.

A group of one response has no baseline to compare with: its group estimators give advantage 0 (no signal)
rather than a division by zero. A group whose rewards are all equal gets advantage 0 on every token, no NaN.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch

from rlhf.ppo.masking import as_bool_mask, masked_whiten

# Added to the group std before dividing: DeepSeekMath / verl's ``epsilon`` (TRL's GRPOTrainer uses 1e-4).
GROUP_STD_EPS = 1e-6

Advantages = tuple[torch.Tensor, torch.Tensor | None]


def sequence_rewards(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[B] the sum of each row's per-token rewards over its response tokens."""
    bool_mask = as_bool_mask(mask)
    return torch.where(bool_mask, rewards, torch.zeros((), dtype=rewards.dtype, device=rewards.device)).sum(dim=1)


def group_stats(x: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-row (group size, group sum, group unbiased std) of ``x`` [B] over rows that share a group id; [B] each.

    The std of a group of one is 0 (undefined; callers zero those rows' advantages anyway).
    """
    if x.dim() != 1 or group_ids.shape != x.shape:
        raise ValueError(f"scores {tuple(x.shape)} and group_ids {tuple(group_ids.shape)} must both be [B]")
    _, index = torch.unique(group_ids, return_inverse=True)
    k = int(index.max().item()) + 1 if len(index) else 0
    x = x.to(torch.float64)  # group sums of equal rewards must cancel exactly: equal rewards -> advantage exactly 0
    size = torch.zeros(k, dtype=x.dtype).index_add_(0, index, torch.ones_like(x))
    total = torch.zeros(k, dtype=x.dtype).index_add_(0, index, x)
    mean = total / size
    sq = torch.zeros(k, dtype=x.dtype).index_add_(0, index, (x - mean[index]) ** 2)
    std = torch.where(size > 1, (sq / (size - 1).clamp(min=1)).sqrt(), torch.zeros_like(sq))
    return size[index], total[index], std[index]


def per_token(score: torch.Tensor, mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Broadcast a per-sequence advantage [B] onto its response tokens [B, T] (0 on masked positions)."""
    return score.to(dtype).unsqueeze(1) * as_bool_mask(mask).to(dtype)


@torch.no_grad()
def grpo(rewards: torch.Tensor, mask: torch.Tensor, group_ids: torch.Tensor, values: torch.Tensor | None = None,
         gamma: float = 1.0, lam: float = 1.0, eps: float = GROUP_STD_EPS) -> Advantages:
    """GRPO outcome supervision (Shao et al. 2024, "DeepSeekMath", sec. 4.1.2):

        A_{i,t} = (r_i - mean(r_1..r_G)) / std(r_1..r_G)     for every token t of response i

    with the unbiased group std plus ``eps`` (verl ``compute_grpo_outcome_advantage``; torch.std is unbiased).
    """
    score = sequence_rewards(rewards, mask)
    size, total, std = group_stats(score, group_ids)
    adv = torch.where(size > 1, (score - total / size) / (std + eps), torch.zeros_like(std))
    return per_token(adv, mask, rewards.dtype), None


@torch.no_grad()
def dr_grpo(rewards: torch.Tensor, mask: torch.Tensor, group_ids: torch.Tensor, values: torch.Tensor | None = None,
            gamma: float = 1.0, lam: float = 1.0, eps: float = GROUP_STD_EPS) -> Advantages:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical Perspective", sec. 3.2, eq. 3):

        A_{i,t} = r_i - mean(r_1..r_G)

    no division by the group std (its "question-level difficulty bias"). The other half of the fix, dropping the
    1/|o_i| length normalisation, is in the loss: ``ESTIMATORS["dr_grpo"].loss_agg`` sums each response's token
    losses and divides by the constant ``rollout.max_new_tokens`` (``losses.aggregate``).
    """
    score = sequence_rewards(rewards, mask)
    size, total, _ = group_stats(score, group_ids)
    adv = torch.where(size > 1, score - total / size, torch.zeros_like(total))
    return per_token(adv, mask, rewards.dtype), None


@torch.no_grad()
def rloo(rewards: torch.Tensor, mask: torch.Tensor, group_ids: torch.Tensor, values: torch.Tensor | None = None,
         gamma: float = 1.0, lam: float = 1.0, eps: float = GROUP_STD_EPS) -> Advantages:
    """REINFORCE Leave-One-Out (Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization
    for Learning from Human Feedback in LLMs", eq. 8; Kool et al. 2019):

        A_i = r_i - 1/(k-1) * sum_{j != i} r_j          (k samples of the same prompt)

    the same baseline as TRL's RLOOTrainer ``(grouped_sum - r) / (k - 1)`` and verl's ``compute_rloo_outcome_advantage``.
    """
    score = sequence_rewards(rewards, mask)
    size, total, _ = group_stats(score, group_ids)
    adv = torch.where(size > 1, score - (total - score) / (size - 1).clamp(min=1), torch.zeros_like(total))
    return per_token(adv, mask, rewards.dtype), None


@torch.no_grad()
def reinforce_pp(rewards: torch.Tensor, mask: torch.Tensor, group_ids: torch.Tensor,
                 values: torch.Tensor | None = None, gamma: float = 1.0, lam: float = 1.0,
                 eps: float = GROUP_STD_EPS) -> Advantages:
    """REINFORCE++ (Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning Large Language Models",
    sec. 3, eqs. 3-5): per-token rewards r_t = score * [t = last] - beta * KL_t (the KL in the reward), returns

        G_t = sum_{s >= t} gamma^(s-t) r_s,      A_t = (G_t - mean(G)) / std(G)

    normalised over every response token of the batch (not per group; verl
    ``compute_reinforce_plus_plus_outcome_advantage``, OpenRLHF ``reinforce``). ``group_ids`` is unused.
    """
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1], got {gamma}")
    bool_mask = as_bool_mask(mask)
    live = bool_mask.to(rewards.dtype)
    rewards = rewards * live
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * running * live[:, t]
        returns[:, t] = running
    return masked_whiten(returns * live, bool_mask), None


@torch.no_grad()
def gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE(gamma, lambda) of Schulman et al. 2016, "High-Dimensional Continuous Control Using GAE", eq. 16.

        delta_t = r_t + gamma * V(s_{t+1}) - V(s_t)
        A_t     = delta_t + gamma * lam * A_{t+1}
        R_t     = A_t + V(s_t)        (the value target, TRL's / DeepSpeed-Chat's ``returns``)

    rewards, values, mask: [B, T] over response positions. Returns (advantages, returns), both [B, T],
    detached, 0 at masked positions.
    A token whose successor is masked is terminal: V(s_{t+1}) = 0 and A_{t+1} = 0 there, so values and
    rewards at positions after the EOS or on padding cannot leak in (OpenRLHF zeroes values/rewards
    with the action mask for the same reason). The response is the whole episode: the value after the
    last response token is 0 (TRL, DeepSpeed-Chat ``get_advantages_and_returns``).
    """
    if not (rewards.shape == values.shape == mask.shape) or rewards.dim() != 2:
        raise ValueError(
            f"rewards {tuple(rewards.shape)}, values {tuple(values.shape)}, mask {tuple(mask.shape)} must all be [B, T]"
        )
    if not (0.0 <= gamma <= 1.0 and 0.0 <= lam <= 1.0):
        raise ValueError(f"gamma and lam must be in [0, 1], got gamma={gamma}, lam={lam}")
    bool_mask = as_bool_mask(mask)
    live = bool_mask.to(values.dtype)
    zero = torch.zeros((), dtype=values.dtype, device=values.device)
    rewards = torch.where(bool_mask, rewards.to(values.dtype), zero)
    values = torch.where(bool_mask, values, zero)
    T = rewards.shape[1]
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_advantage = torch.zeros_like(values[:, 0])
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = (delta + gamma * lam * next_advantage) * live[:, t]
        # What position t-1 sees as its successor; 0 when t is masked, which makes t-1 terminal.
        next_value = values[:, t]
        next_advantage = advantages[:, t]
    returns = (advantages + values) * live
    return advantages, returns


def gae_estimator(rewards: torch.Tensor, mask: torch.Tensor, group_ids: torch.Tensor,
                  values: torch.Tensor | None = None, gamma: float = 1.0, lam: float = 0.95,
                  eps: float = GROUP_STD_EPS) -> Advantages:
    """``gae`` behind the registry's signature (needs the critic's ``values``)."""
    if values is None:
        raise ValueError("the gae estimator needs critic values")
    return gae(rewards, values, mask, gamma, lam)


EstimatorName = Literal["gae", "grpo", "dr_grpo", "rloo", "reinforce_pp"]


@dataclass(frozen=True)
class Estimator:
    fn: Callable[..., Advantages]
    needs_critic: bool  # a critic role is created and trained only when True
    grouped: bool  # compares the samples of one prompt: needs rollout.samples_per_prompt >= 2
    loss_agg: Literal["token_mean", "seq_sum_norm"] = "token_mean"  # see ``losses.aggregate``


ESTIMATORS: dict[str, Estimator] = {
    "gae": Estimator(gae_estimator, needs_critic=True, grouped=False),
    "grpo": Estimator(grpo, needs_critic=False, grouped=True),
    "dr_grpo": Estimator(dr_grpo, needs_critic=False, grouped=True, loss_agg="seq_sum_norm"),
    "rloo": Estimator(rloo, needs_critic=False, grouped=True),
    "reinforce_pp": Estimator(reinforce_pp, needs_critic=False, grouped=False),
}
