"""Per-token KL estimators between the policy and the frozen reference, and KL-coefficient controllers.

The KL penalty keeps the policy near the SFT model: InstructGPT (Ouyang et al. 2022, eq. 2) adds
-beta * log(pi(y|x) / pi_ref(y|x)) to the reward; Ziegler et al. 2019 adapt beta to hit a target KL.
"""

from __future__ import annotations

from typing import Literal

import torch

KL_ESTIMATORS: tuple[str, ...] = ("k1", "k2", "k3")
KLEstimator = Literal["k1", "k2", "k3"]

# OpenRLHF's ``compute_approx_kl`` clamps the log-ratio before exp() in k3 so one token whose
# probability collapsed cannot produce an inf penalty; exp(10) ~ 2.2e4 is already far off-policy.
K3_LOG_RATIO_CLAMP = 10.0


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: KLEstimator = "k1") -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi (J. Schulman, "Approximating KL divergence", 2020).

    logp, ref_logp: [B, T] log-probs of the sampled tokens under the policy and the reference.
    Returns [B, T]; masking is the caller's job (``compose_rewards``, ``masked_mean``).
    With log r = ref_logp - logp (r = pi_ref / pi):
      - "k1": -log r = logp - ref_logp. Unbiased, can be negative per token (InstructGPT's penalty).
      - "k2": 0.5 * (log r)^2. Biased, always >= 0, low variance.
      - "k3": (r - 1) - log r. Unbiased, always >= 0, low variance (the "low_var_kl" of OpenRLHF/verl);
        log r is clamped to [-10, 10] before exp() as in OpenRLHF's ``compute_approx_kl``.
    """
    if logp.shape != ref_logp.shape:
        raise ValueError(f"logp {tuple(logp.shape)} and ref_logp {tuple(ref_logp.shape)} differ in shape")
    log_ratio = ref_logp - logp
    if estimator == "k1":
        return -log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio**2
    if estimator == "k3":
        log_ratio = log_ratio.clamp(-K3_LOG_RATIO_CLAMP, K3_LOG_RATIO_CLAMP)
        return torch.expm1(log_ratio) - log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}; expected one of {', '.join(KL_ESTIMATORS)}")


class FixedKLController:
    """A constant KL coefficient; same interface as ``AdaptiveKLController`` (TRL ``FixedKLController``)."""

    def __init__(self, kl_coef: float) -> None:
        if kl_coef < 0:
            raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Ignores its arguments; returns the (unchanged) coefficient."""
        return self.value


class AdaptiveKLController:
    """Adaptive KL coefficient of Ziegler et al. 2019, "Fine-Tuning Language Models from Human Preferences", eq. 2.

        e_t = clip(KL_t / KL_target - 1, -0.2, 0.2)
        beta_{t+1} = beta_t * (1 + K_beta * e_t),   K_beta = n_steps / horizon

    ``n_steps`` is the number of samples (episodes) behind ``current_kl``, as in TRL's
    ``AdaptiveKLController.update``. The coefficient rises when the KL is above target, falls when
    below, and moves by at most a factor (1 +- 0.2 * n_steps / horizon) per update.
    """

    ERROR_CLIP = 0.2

    def __init__(self, init_kl_coef: float, target: float, horizon: float) -> None:
        if init_kl_coef < 0:
            raise ValueError(f"init_kl_coef must be >= 0, got {init_kl_coef}")
        if target <= 0:
            raise ValueError(f"target KL must be > 0, got {target}")
        if horizon <= 0:
            raise ValueError(f"horizon must be > 0, got {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> float:
        """Move the coefficient toward the target; returns the new value.

        current_kl: the KL summed over each response's tokens, averaged over the batch (TRL's ``objective/kl``).
        """
        error = min(max(float(current_kl) / self.target - 1.0, -self.ERROR_CLIP), self.ERROR_CLIP)
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value
