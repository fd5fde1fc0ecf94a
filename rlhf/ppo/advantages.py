"""Generalised Advantage Estimation over response tokens."""

from __future__ import annotations

import torch

from rlhf.ppo.masking import as_bool_mask


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
