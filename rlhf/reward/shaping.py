"""Per-token PPO rewards from a sequence-level reward-model score, and score normalisation.

InstructGPT (Ouyang et al. 2022, eq. 2): R(x, y) = r_theta(x, y) - beta * log(pi(y|x) / pi_SFT(y|x)).
As in TRL's PPOTrainer and DeepSpeed-Chat's ``compute_rewards``, the KL term is spread over the
response tokens and the score lands on the last response token.
"""

from __future__ import annotations

import math

import torch

from rlhf.ppo.masking import as_bool_mask

# Added to the running std before dividing, as in TRL's PPOTrainer score scaling.
SCORE_STD_EPS = 1e-8


def compose_rewards(
    score: torch.Tensor,
    kl: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
    missing_eos_penalty: float | None,
    ended_with_eos: torch.Tensor,
) -> torch.Tensor:
    """Per-token rewards: -kl_coef * kl on response tokens, plus the score at the last response token.

    score: [B] reward-model scores. kl: [B, T] per-token KL (``kl_penalty``). mask: [B, T] prefix
    response mask. ended_with_eos: bool [B]. Returns float [B, T], 0 at masked positions.

    Rows that did not end with EOS (truncated at max length) have ``missing_eos_penalty`` subtracted
    from their score (TRL's ``missing_eos_penalty``; the EOS trick of Huang et al. 2024, "The N+
    Implementation Details of RLHF with PPO", uses a fixed low score instead); None leaves them alone.
    A row with an empty mask has no token to credit, so its score is dropped and the row contributes nothing.
    """
    if kl.shape != mask.shape:
        raise ValueError(f"kl {tuple(kl.shape)} and mask {tuple(mask.shape)} differ in shape")
    if score.shape != (kl.shape[0],) or ended_with_eos.shape != (kl.shape[0],):
        raise ValueError(
            f"score {tuple(score.shape)} and ended_with_eos {tuple(ended_with_eos.shape)}"
            f" must be [B] with B={kl.shape[0]}"
        )
    bool_mask = as_bool_mask(mask)
    score = score.to(kl.dtype)
    if missing_eos_penalty is not None:
        score = torch.where(ended_with_eos.bool(), score, score - missing_eos_penalty)
    rewards = torch.where(bool_mask, -kl_coef * kl, torch.zeros((), dtype=kl.dtype, device=kl.device))
    lengths = bool_mask.long().sum(dim=1)
    has_tokens = lengths > 0
    last = (lengths - 1).clamp(min=0)
    rows = torch.arange(kl.shape[0], device=kl.device)
    rewards[rows, last] += torch.where(has_tokens, score, torch.zeros_like(score))
    return rewards


def clip_reward(x: torch.Tensor, clip: float | None) -> torch.Tensor:
    """Clamp to [-clip, clip]; None leaves ``x`` unchanged.

    DeepSpeed-Chat's ``clip_reward_value``, OpenRLHF's ``reward_clip_range``. x: any shape, e.g. scores [B].
    """
    if clip is None:
        return x
    if clip <= 0:
        raise ValueError(f"reward clip must be > 0, got {clip}")
    return x.clamp(-clip, clip)


class RunningMoments:
    """Running mean and std of every value seen, merged batch by batch (Chan, Golub & LeVeque 1979).

    Merging (n_a, mean_a, M2_a) with a batch (n_b, mean_b, M2_b), delta = mean_b - mean_a, n = n_a + n_b:
        mean = mean_a + delta * n_b / n
        M2   = M2_a + M2_b + delta^2 * n_a * n_b / n
    as in TRL's ``RunningMoments`` (trl/trainer/utils.py). Accumulates in float64 Python floats.
    ``std`` is the unbiased (ddof=1) standard deviation, 0 until two values have been seen.
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0  # sum of squared deviations from the mean

    @property
    def var(self) -> float:
        return self.m2 / (self.count - 1) if self.count > 1 else 0.0

    @property
    def std(self) -> float:
        return math.sqrt(self.var)

    def update(self, x: torch.Tensor) -> tuple[float, float]:
        """Fold in every element of ``x`` (any shape); returns the running (mean, std) after the update."""
        values = x.detach().to(torch.float64).flatten()
        n_b = values.numel()
        if n_b == 0:
            return self.mean, self.std
        mean_b = values.mean().item()
        m2_b = ((values - mean_b) ** 2).sum().item()
        n = self.count + n_b
        delta = mean_b - self.mean
        self.mean += delta * n_b / n
        self.m2 += m2_b + delta**2 * self.count * n_b / n
        self.count = n
        return self.mean, self.std

    def state_dict(self) -> dict[str, float]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.count, self.mean, self.m2 = int(state["count"]), float(state["mean"]), float(state["m2"])


def normalize_score(
    score: torch.Tensor, moments: RunningMoments, update: bool = True, shift_mean: bool = True
) -> torch.Tensor:
    """(score - running mean) / (running std + 1e-8), after folding ``score`` into ``moments`` when ``update``.

    score: [B]. Returns [B] in score's dtype. TRL's PPOTrainer ``use_score_scaling`` /
    ``use_score_norm``; ``shift_mean=False`` only scales (score / std), like score scaling without norm.
    """
    if update:
        moments.update(score)
    scale = moments.std + SCORE_STD_EPS
    centred = score - moments.mean if shift_mean else score
    return centred / scale
