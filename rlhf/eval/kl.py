"""A Monte-Carlo estimate of KL(pi || pi_base) between two policies on held-out prompts.

    KL(pi || pi_base) = E_x E_{y ~ pi(.|x)} [ log pi(y|x) - log pi_base(y|x) ]

estimated by the mean of the sequence-level log-ratio over N prompts x K samples y ~ pi (the "k1" estimator of
J. Schulman, "Approximating KL divergence", 2020, summed over a response's tokens): unbiased, per-sample values
may be negative, their mean is not in expectation. This is the quantity PPO's KL penalty and TRL's
``objective/kl`` track during training (a sum over response tokens, averaged over sequences), measured here on
prompts PPO never saw, at the temperature it sampled with. The standard error is over per-prompt means (the K
samples of one prompt are not independent of each other's prompt).
"""

from __future__ import annotations

import math

import torch


def kl_estimate(logp_policy: torch.Tensor, logp_base: torch.Tensor, prompt_index: list[int]) -> tuple[float, float]:
    """(mean log-ratio, its standard error over prompts). logp_*: [N*K] sequence log-probs of samples from pi."""
    if logp_policy.shape != logp_base.shape or logp_policy.shape[0] != len(prompt_index) or not prompt_index:
        raise ValueError(f"kl_estimate: shapes {tuple(logp_policy.shape)}, {tuple(logp_base.shape)} and "
                         f"{len(prompt_index)} prompt indices must agree and be non-empty")
    ratio = (logp_policy.double() - logp_base.double()).tolist()
    per_prompt: dict[int, list[float]] = {}
    for i, r in zip(prompt_index, ratio):
        per_prompt.setdefault(i, []).append(r)
    means = [sum(v) / len(v) for v in per_prompt.values()]
    mean = sum(ratio) / len(ratio)
    if len(means) < 2:
        return mean, 0.0
    mu = sum(means) / len(means)
    var = sum((m - mu) ** 2 for m in means) / (len(means) - 1)
    return mean, math.sqrt(var / len(means))
