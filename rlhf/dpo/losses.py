"""The direct-preference loss family: one small function per ``loss.kind``, all behind one signature.

    losses, rewards = LOSSES[kind](batch, cfg)

``batch`` (a ``LogpBatch``) holds per-sequence log-probs summed over response tokens, column 0 and column 1 of
shape [B, 2]: for the paired losses (dpo, cdpo, robust, ipo, simpo, orpo) the chosen and the rejected response;
for KTO the example's own completion and its KL completion (the same prompt with another example's completion,
used only for the reference point z0). ``lengths`` [B, 2] are the response token counts (the length
normalisations of IPO, SimPO and ORPO), ``reference`` [B, 2] the reference policy's log-probs (None for the
reference-free SimPO and ORPO) and ``desirable`` [B] KTO's labels. Each function returns the per-example loss [B]
(the engine averages it) and the implicit rewards [B, 2] each paper defines, used for accuracy and margin.

Every kind's value equals TRL's (trl 1.16) on the same log-probs; tests/test_dpo_losses.py calls TRL's own code.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F


class LogpBatch(NamedTuple):
    policy: torch.Tensor  # [B, 2] summed response log-probs under the policy being trained
    lengths: torch.Tensor  # [B, 2] response tokens (>= 1)
    reference: torch.Tensor | None = None  # [B, 2] the same under the reference policy
    desirable: torch.Tensor | None = None  # [B] bool, KTO only


class LossParams(NamedTuple):
    """The loss section's numbers (see stages/dpo.py LossSection for their meaning)."""

    beta: float = 0.1
    label_smoothing: float = 0.0
    gamma: float = 0.5
    desirable_weight: float = 1.0
    undesirable_weight: float = 1.0


LossFn = Callable[[LogpBatch, LossParams], tuple[torch.Tensor, torch.Tensor]]
REFERENCE_FREE = ("simpo", "orpo")  # kinds that never look at a reference policy
UNPAIRED = ("kto",)


def _logratios(b: LogpBatch) -> torch.Tensor:
    """log pi(y|x) - log pi_ref(y|x), [B, 2]."""
    return b.policy - b.reference


def dpo(b: LogpBatch, p: LossParams) -> tuple[torch.Tensor, torch.Tensor]:
    """DPO (Rafailov et al. 2023, eq. 7): -log sigma(beta * [(log pi/pi_ref)(y_w) - (log pi/pi_ref)(y_l)]).

    Rewards: beta * log pi/pi_ref (sec. 5, the implicit reward). TRL: DPOTrainer loss_type "sigmoid"."""
    ratios = _logratios(b)
    return -F.logsigmoid(p.beta * (ratios[:, 0] - ratios[:, 1])), p.beta * ratios.detach()


def cdpo(b: LogpBatch, p: LossParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Conservative DPO (Mitchell 2023, "A note on DPO with noisy preferences", eq. 3): labels flipped with
    probability eps, -(1-eps) log sigma(beta h) - eps log sigma(-beta h), h the DPO logit. TRL: CPO/DPO "sigmoid"
    with label_smoothing."""
    ratios = _logratios(b)
    h = p.beta * (ratios[:, 0] - ratios[:, 1])
    eps = p.label_smoothing
    return -(1 - eps) * F.logsigmoid(h) - eps * F.logsigmoid(-h), p.beta * ratios.detach()


def robust(b: LogpBatch, p: LossParams) -> tuple[torch.Tensor, torch.Tensor]:
    """Robust DPO (Chowdhury et al. 2024, eq. 10): the unbiased loss under flip rate eps,
    [(1-eps) * -log sigma(beta h) - eps * -log sigma(-beta h)] / (1 - 2 eps). TRL: DPOTrainer loss_type "robust"."""
    ratios = _logratios(b)
    h = p.beta * (ratios[:, 0] - ratios[:, 1])
    eps = p.label_smoothing
    loss = (-(1 - eps) * F.logsigmoid(h) + eps * F.logsigmoid(-h)) / (1 - 2 * eps)
    return loss, p.beta * ratios.detach()


def ipo(b: LogpBatch, p: LossParams) -> tuple[torch.Tensor, torch.Tensor]:
    """IPO (Azar et al. 2023, eq. 17): (h - 1/(2 tau))^2 with tau = beta, h the difference of log-ratios. As in
    TRL (confirmed there with the IPO authors), each log-ratio is averaged over its response tokens first."""
    ratios = _logratios(b)
    h = ratios[:, 0] / b.lengths[:, 0] - ratios[:, 1] / b.lengths[:, 1]
    return (h - 1 / (2 * p.beta)) ** 2, p.beta * ratios.detach()


def simpo(b: LogpBatch, p: LossParams) -> tuple[torch.Tensor, torch.Tensor]:
    """SimPO (Meng et al. 2024, eq. 6): -log sigma(beta/|y_w| log pi(y_w) - beta/|y_l| log pi(y_l) - gamma);
    reference-free, length-normalised, target margin gamma. Rewards: beta/|y| log pi(y) (eq. 4).
    TRL: CPOTrainer loss_type "simpo" (with cpo_alpha 0)."""
    avg = b.policy / b.lengths
    return -F.logsigmoid(p.beta * (avg[:, 0] - avg[:, 1]) - p.gamma), p.beta * avg.detach()


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, stable at both ends (Maechler 2012)."""
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo(b: LogpBatch, p: LossParams) -> tuple[torch.Tensor, torch.Tensor]:
    """ORPO (Hong et al. 2024, eq. 6-7): L_SFT - lambda * log sigma(log odds(y_w) - log odds(y_l)), with
    odds(y) = P(y|x) / (1 - P(y|x)) and P the per-token average probability; reference-free; lambda = beta.
    L_SFT here is each example's mean token NLL of y_w (TRL takes the token mean over the whole batch; the odds
    ratio term is TRL's ORPOTrainer.odds_ratio_loss exactly). Rewards: beta * average log-prob (as TRL logs)."""
    avg = b.policy / b.lengths
    log_odds = (avg[:, 0] - avg[:, 1]) - (_log1mexp(avg[:, 0]) - _log1mexp(avg[:, 1]))
    return -avg[:, 0] - p.beta * F.logsigmoid(log_odds), p.beta * avg.detach()


def kto(b: LogpBatch, p: LossParams) -> tuple[torch.Tensor, torch.Tensor]:
    """KTO (Ethayarajh et al. 2024, eq. 7-8): r = log pi/pi_ref(y|x), z0 = max(0, mean KL-completion log-ratio)
    (detached, the batch's estimate of KL(pi || pi_ref)); desirable: lambda_D (1 - sigma(beta (r - z0))),
    undesirable: lambda_U (1 - sigma(beta (z0 - r))). Rewards: beta * r for both columns. TRL: KTOTrainer "kto"."""
    ratios = _logratios(b)
    z0 = ratios[:, 1].mean().detach().clamp(min=0)
    r = ratios[:, 0]
    good = b.desirable.bool()
    loss = torch.where(good, p.desirable_weight * (1 - torch.sigmoid(p.beta * (r - z0))),
                       p.undesirable_weight * (1 - torch.sigmoid(p.beta * (z0 - r))))
    return loss, p.beta * ratios.detach()


LOSSES: dict[str, LossFn] = {"dpo": dpo, "cdpo": cdpo, "robust": robust, "ipo": ipo, "simpo": simpo, "orpo": orpo,
                             "kto": kto}
