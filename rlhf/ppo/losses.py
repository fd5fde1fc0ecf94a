"""PPO policy and value losses, and per-token log-probs / entropy from logits.

Both losses are a token-level mean over the whole batch (``masked_mean`` with dim=None): every
response token weighs the same, as in TRL's PPOTrainer and OpenRLHF's default. A per-sequence mean
(mean over a row's tokens, then over rows) would weigh short responses' tokens more; we avoid it so
the gradient does not depend on how the batch happens to split into rows.
Stats are detached 0-dim tensors so logging decides when to sync with ``.item()``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rlhf.ppo.masking import masked_mean, masked_sum


def aggregate(x: torch.Tensor, mask: torch.Tensor, mode: str = "token_mean", horizon: int | None = None) -> torch.Tensor:
    """Reduce per-token losses [B, T] to a scalar.

    - "token_mean": mean over every response token of the batch (the default, see the module docstring);
    - "seq_sum_norm": each row's token sum divided by the constant ``horizon`` (max_new_tokens), then the mean
      over rows: Dr. GRPO (Liu et al. 2025, eq. 3) drops GRPO's 1/|o_i|, which favours long wrong answers and
      short right ones; verl's ``seq-mean-token-sum-norm``.
    """
    if mode == "token_mean":
        return masked_mean(x, mask)
    if mode == "seq_sum_norm":
        if not horizon or horizon < 1:
            raise ValueError(f"seq_sum_norm needs a horizon >= 1, got {horizon}")
        return (masked_sum(x, mask, dim=1) / horizon).mean()
    raise ValueError(f"unknown loss aggregation {mode!r}")


def policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
    dual_clip: float | None = None,
    agg: str = "token_mean",
    horizon: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7), optionally dual-clipped (Ye et al. 2020,
    "Mastering Complex Control in MOBA Games with Deep Reinforcement Learning").

        ratio = exp(logp - old_logp)
        L     = -min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A)
        dual:  for A < 0, L = -max(min(ratio * A, clip(ratio) * A), c * A), c > 1

    Dual clip bounds the loss of a token with A < 0 whose ratio has grown huge (OpenRLHF ``PolicyLoss``).
    logp, old_logp, advantages, mask: [B, T]; ``agg``/``horizon`` reduce the token losses (``aggregate``).
    Returns (loss: 0-dim, stats) where stats are
      - "clipfrac": fraction of tokens where the clipped term is the active one (TRL's ``pg_clipfrac``);
      - "dual_clipfrac": fraction of tokens where the dual clip is active (0 when ``dual_clip`` is None);
      - "approx_kl": 0.5 * mean((logp - old_logp)^2), the k2 estimator of KL(old || new), as in TRL's
        old PPOTrainer ``policy/approxkl``.
    """
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    if clip_eps <= 0:
        raise ValueError(f"clip_eps must be > 0, got {clip_eps}")
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    surrogate = ratio * advantages
    clipped_surrogate = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * advantages
    objective = torch.min(surrogate, clipped_surrogate)
    clipped = clipped_surrogate < surrogate
    dual_clipped = torch.zeros_like(clipped)
    if dual_clip is not None:
        dual_bound = dual_clip * advantages
        dual_clipped = (advantages < 0) & (objective < dual_bound)
        objective = torch.where(dual_clipped, dual_bound, objective)
    loss = aggregate(-objective, mask, agg, horizon)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean(clipped.float(), mask),
            "dual_clipfrac": masked_mean(dual_clipped.float(), mask),
            "approx_kl": 0.5 * masked_mean(log_ratio.detach() ** 2, mask),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float | None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss, 0.5 * mean(max((V - R)^2, (V_clip - R)^2)), V_clip = V_old + clip(V - V_old, -eps, eps).

    As in TRL's old PPOTrainer ``loss`` and DeepSpeed-Chat's ``critic_loss_fn`` (value clipping is one of
    the details in Huang et al. 2024, "The N+ Implementation Details of RLHF with PPO").
    ``clip_eps`` None: plain 0.5 * MSE.
    values, old_values, returns, mask: [B, T]. Returns (loss: 0-dim, {"vf_clipfrac"}): the fraction of
    tokens where the clipped error is the larger one.
    """
    unclipped_error = (values - returns) ** 2
    if clip_eps is None:
        error, clipped = unclipped_error, torch.zeros_like(unclipped_error, dtype=torch.bool)
    else:
        if clip_eps <= 0:
            raise ValueError(f"value clip_eps must be > 0, got {clip_eps}")
        values_clipped = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
        clipped_error = (values_clipped - returns) ** 2
        error = torch.max(unclipped_error, clipped_error)
        clipped = clipped_error > unclipped_error
    loss = 0.5 * masked_mean(error, mask)
    with torch.no_grad():
        stats = {"vf_clipfrac": masked_mean(clipped.float(), mask)}
    return loss, stats


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[label] per position.

    logits: [B, T, V]; labels: [B, T] valid token ids (no -100). Returns float32 [B, T].

    Row by row in float32 (OpenRLHF ``log_probs_from_logits``): bf16 log_softmax loses precision,
    and upcasting one row at a time keeps the extra memory to one [T, V] float32 block instead of [B, T, V].
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree on [B, T]")
    rows = [
        torch.log_softmax(row_logits.float(), dim=-1).gather(-1, row_labels.unsqueeze(-1)).squeeze(-1)
        for row_logits, row_labels in zip(logits, labels)
    ]
    return torch.stack(rows)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) per position: logsumexp(z) - sum(softmax(z) * z) (TRL ``entropy_from_logits``).

    logits: [B, T, V]. Returns float32 [B, T]; computed row by row in float32 for the same reason as
    ``logprobs_from_logits``.
    """
    rows = []
    for row_logits in logits:
        z = row_logits.float()
        rows.append(torch.logsumexp(z, dim=-1) - (F.softmax(z, dim=-1) * z).sum(dim=-1))
    return torch.stack(rows)



def entropy_bonus(entropy: torch.Tensor, mask: torch.Tensor, coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The entropy term of the PPO objective (Schulman et al. 2017, eq. 9: L = L_clip - c1 L_VF + c2 S), as a loss.

    entropy: [B, T] per-token entropy (``entropy_from_logits``), mask: [B, T]. Returns (-coef * H, H) where
    H = token-level masked mean entropy (OpenRLHF ``entropy_loss_coef``); add the first to the policy loss.
    """
    if coef < 0:
        raise ValueError(f"entropy coef must be >= 0, got {coef}")
    mean_entropy = masked_mean(entropy, mask)
    return -coef * mean_entropy, mean_entropy.detach()
