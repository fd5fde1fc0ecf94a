"""Response masks and masked statistics over [B, T] response tensors.

Every PPO quantity lives on response positions only; these helpers make sure padding and the tokens
generated after the first EOS never enter a mean, a variance or a whitened advantage.
Conventions: ``mask`` is a float or bool [B, T] tensor, 1 on real response tokens (up to and including
the first EOS), 0 elsewhere. Masked positions are selected with ``torch.where`` rather than multiplied by
zero so a NaN or inf at a masked position (e.g. a log-prob of a pad token) cannot leak into a statistic.
"""

from __future__ import annotations

import torch

# Whitening epsilon from TRL's ``masked_whiten`` (trl/core.py, PPOTrainer <= 0.11).
WHITEN_EPS = 1e-8


def as_bool_mask(mask: torch.Tensor) -> torch.Tensor:
    """A float/bool mask as bool (nonzero = kept)."""
    return mask if mask.dtype == torch.bool else mask != 0


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``x`` over positions where ``mask`` is nonzero. x, mask: same shape; reduces ``dim`` (all if None)."""
    selected = torch.where(as_bool_mask(mask), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return selected.sum() if dim is None else selected.sum(dim=dim)


def masked_count(mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Number of unmasked positions, as a float tensor (all positions if ``dim`` is None)."""
    b = as_bool_mask(mask).float()
    return b.sum() if dim is None else b.sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over unmasked positions (TRL ``masked_mean``; OpenRLHF ``masked_mean``).

    x, mask: same shape, e.g. [B, T]. ``dim=None`` gives the token-level mean over the whole batch
    (each token weighs the same, long responses weigh more); ``dim=1`` gives one mean per row [B].
    An all-masked reduction returns 0 rather than NaN, so an empty response contributes nothing.
    """
    count = masked_count(mask, dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over all unmasked positions (TRL ``masked_var``). Returns a 0-dim tensor.

    ``unbiased`` applies Bessel's correction n / (n - 1). Raises ValueError when fewer than one
    (biased) or two (unbiased) positions are unmasked, where the variance is undefined.
    """
    count = int(masked_count(mask).item())
    needed = 2 if unbiased else 1
    if count < needed:
        raise ValueError(f"masked_var needs at least {needed} unmasked elements, got {count}")
    mean = masked_mean(x, mask)
    variance = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        variance = variance * (count / (count - 1))
    return variance


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """Normalise ``x`` to unit (unbiased) variance over unmasked positions; used on advantages.

    x, mask: [B, T]. Returns [B, T]; masked positions are set to 0.
    Follows TRL's ``masked_whiten``: (x - mean) * rsqrt(var + 1e-8), with the mean added back when
    ``shift_mean`` is False (scale only). Advantages are whitened per rollout batch, as in TRL and in
    Huang et al. 2024, "The N+ Implementation Details of RLHF with PPO".
    With a single unmasked position the variance is undefined; the values are then only centred
    (or returned unchanged when ``shift_mean`` is False) instead of divided by ~sqrt(1e-8).
    """
    bool_mask = as_bool_mask(mask)
    mean = masked_mean(x, bool_mask)
    if masked_count(bool_mask).item() < 2:
        whitened = x - mean if shift_mean else x
    else:
        whitened = (x - mean) * torch.rsqrt(masked_var(x, bool_mask, unbiased=True) + WHITEN_EPS)
        if not shift_mean:
            whitened = whitened + mean
    return torch.where(bool_mask, whitened, torch.zeros((), dtype=whitened.dtype, device=whitened.device))
