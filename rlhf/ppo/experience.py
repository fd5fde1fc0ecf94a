"""Make experience: the rollout batch layout, per-token log-probs / values of a batch, and rewards + advantages.

Layout (as in TRL's PPOTrainer ``query_responses``): each row is its prompt, left-padded to the batch's prompt
width P, followed by its response, right-padded to the response width R. Log-probs and values for response token
j come from position P + j - 1 (the state before the token was generated). The response mask comes from the
lengths the sampler returned (each already cut after its first EOS), so it is exact even when a sampled token
happens to share the pad id; tokens after the EOS are padding, masked everywhere (losses, KL, GAE, stats).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, is_dataclass, replace

import torch

from rlhf.ppo.estimators import ESTIMATORS
from rlhf.ppo.config import AlgorithmSection, RewardSection
from rlhf.ppo.kl import kl_penalty
from rlhf.ppo.losses import entropy_from_logits, logprobs_from_logits
from rlhf.ppo.masking import masked_mean, masked_sum, masked_whiten
from rlhf.reward.shaping import RunningMoments, clip_reward, compose_rewards, normalize_score


@dataclass
class Rollout:
    """Prompts + sampled responses. input_ids, attention_mask: [B, P + R]; response_mask: float [B, R];
    ended_with_eos: bool [B]. Row-wise tensors only, so ``select``/``split`` work field by field."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    ended_with_eos: torch.Tensor

    @property
    def response_width(self) -> int:
        return self.response_mask.shape[1]

    @property
    def prompt_width(self) -> int:
        return self.input_ids.shape[1] - self.response_width

    @property
    def response_ids(self) -> torch.Tensor:
        """[B, R] sampled tokens (pad after each response's end)."""
        return self.input_ids[:, self.prompt_width:]

    @property
    def position_ids(self) -> torch.Tensor:
        """[B, P + R] positions counted from each row's first real token, as HF ``generate`` does under left padding."""
        return (self.attention_mask.long().cumsum(dim=1) - 1).clamp(min=0)

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def build_rollout(prompts: list[list[int]], responses: list[list[int]], eos_id: int, pad_id: int) -> Rollout:
    """Ragged prompts and responses (each cut after its first EOS, at least one token) -> a ``Rollout``."""
    if len(prompts) != len(responses) or not prompts:
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if any(not r for r in responses):
        raise ValueError("every response needs at least one token")
    P, R = max(len(p) for p in prompts), max(len(r) for r in responses)
    B = len(prompts)
    ids = torch.full((B, P + R), pad_id, dtype=torch.long)
    attn = torch.zeros((B, P + R), dtype=torch.long)
    rmask = torch.zeros((B, R), dtype=torch.float32)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids[i, P - len(p):P] = torch.tensor(p, dtype=torch.long)
        ids[i, P:P + len(r)] = torch.tensor(r, dtype=torch.long)
        attn[i, P - len(p):P + len(r)] = 1
        rmask[i, :len(r)] = 1.0
    ended = torch.tensor([r[-1] == eos_id for r in responses], dtype=torch.bool)
    return Rollout(ids, attn, rmask, ended)


def map_tensors(obj, fn):
    """The same dataclass with ``fn`` applied to every tensor field (nested dataclasses too)."""
    updates = {}
    for f in fields(obj):
        value = getattr(obj, f.name)
        if torch.is_tensor(value):
            value = fn(value)
        elif is_dataclass(value):
            value = map_tensors(value, fn)
        updates[f.name] = value
    return replace(obj, **updates)


def select_rows(obj, rows: slice | torch.Tensor):
    """The same dataclass with every tensor indexed by ``rows`` along dim 0."""
    return map_tensors(obj, lambda t: t[rows])


def shards(n: int, parts: int) -> list[slice]:
    """Split rows 0..n into ``parts`` contiguous equal slices (n must divide evenly: DP ranks step together)."""
    if n % parts:
        raise ValueError(f"{n} rows do not split evenly over {parts} workers")
    size = n // parts
    return [slice(i * size, (i + 1) * size) for i in range(parts)]


def response_logits(model: torch.nn.Module, rollout: Rollout) -> torch.Tensor:
    """[B, R, V] next-token logits at positions P-1 .. P+R-2 (the ones that predicted each response token).

    ``logits_to_keep`` (HF causal LMs) skips the LM head on prompt positions.
    """
    R = rollout.response_width
    out = model(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask,
                position_ids=rollout.position_ids, logits_to_keep=R + 1, use_cache=False)
    return out.logits[:, :-1]


def response_token_values(model: torch.nn.Module, rollout: Rollout) -> torch.Tensor:
    """[B, R] critic values V(s) at the states before each response token (TRL ``full_value[:, P-1:-1]``).

    ``model`` maps (input_ids, attention_mask) to per-token values [B, P + R] (``rlhf.reward.model.TokenValues``).
    """
    R = rollout.response_width
    values = model(input_ids=rollout.input_ids, attention_mask=rollout.attention_mask)
    return values[:, -R - 1:-1].float()


def response_logprobs(logits: torch.Tensor, rollout: Rollout, temperature: float) -> torch.Tensor:
    """[B, R] log pi(token) under logits / temperature (TRL divides by the sampling temperature too)."""
    return logprobs_from_logits(logits / temperature, rollout.response_ids)


@torch.no_grad()
def batched_logprobs(model: torch.nn.Module, rollout: Rollout, temperature: float, batch_size: int,
                     with_entropy: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log-probs [B, R], entropy [B, R] or None) in forward batches of ``batch_size`` rows."""
    logps, ents = [], []
    for start in range(0, len(rollout), batch_size):
        chunk = select_rows(rollout, slice(start, start + batch_size))
        logits = response_logits(model, chunk)
        logps.append(response_logprobs(logits, chunk, temperature))
        if with_entropy:
            ents.append(entropy_from_logits(logits / temperature))
    return torch.cat(logps), (torch.cat(ents) if with_entropy else None)


@torch.no_grad()
def batched_values(model: torch.nn.Module, rollout: Rollout, batch_size: int) -> torch.Tensor:
    """[B, R] critic values in forward batches of ``batch_size`` rows."""
    return torch.cat([response_token_values(model, select_rows(rollout, slice(s, s + batch_size)))
                      for s in range(0, len(rollout), batch_size)])


@dataclass
class Experience:
    """What the trained roles need, per row: rollout plus old and reference log-probs, advantages, and the critic's
    old values and returns ([B, R]; None without a critic)."""

    rollout: Rollout
    old_logp: torch.Tensor
    ref_logp: torch.Tensor
    advantages: torch.Tensor
    old_values: torch.Tensor | None = None
    returns: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.rollout)


class NonFinite(Exception):
    """A non-finite reward or advantage: the update is skipped. ``what`` names the quantity."""

    def __init__(self, what: str) -> None:
        super().__init__(f"non-finite {what}")
        self.what = what


def finite_on(x: torch.Tensor, mask: torch.Tensor | None = None) -> bool:
    """True when ``x`` is finite wherever ``mask`` is nonzero (everywhere if mask is None)."""
    ok = torch.isfinite(x)
    if mask is not None:
        ok = ok | (mask == 0)
    return bool(ok.all())


def compute_advantages(
    rollout: Rollout, old_logp: torch.Tensor, ref_logp: torch.Tensor, values: torch.Tensor | None,
    scores: torch.Tensor, kl_coef: float, algo: AlgorithmSection, reward: RewardSection, moments: RunningMoments,
    group_ids: torch.Tensor | None = None,
) -> tuple[Experience, dict[str, float]]:
    """Scores -> per-token rewards (InstructGPT eq. 2: score - beta * KL, the KL only when ``algo.kl_in`` is
    "reward") -> advantages by ``algo.estimator`` (``rlhf.ppo.estimators``) -> whitening (GAE only).

    old_logp, ref_logp, values: [B, R] (values None without a critic); scores: [B]; group_ids: [B] the prompt
    each row was sampled for (default: each row its own group). Raises ``NonFinite`` (before touching
    ``moments``) when the scores, or the rewards/advantages/returns they lead to, are not finite on response tokens.
    Returns the experience and stats: reward mean/std (raw scores), KL (per-sequence sum, batch mean), etc.
    """
    mask = rollout.response_mask
    estimator = ESTIMATORS[algo.estimator]
    if estimator.needs_critic and values is None:
        raise ValueError(f"estimator {algo.estimator} needs critic values")
    if group_ids is None:
        group_ids = torch.arange(len(rollout))
    if not finite_on(scores):
        raise NonFinite("reward")
    if not (finite_on(old_logp, mask) and finite_on(ref_logp, mask) and (values is None or finite_on(values, mask))):
        raise NonFinite("log-prob or value")
    shaped = clip_reward(scores.float(), reward.clip)
    if reward.normalize:
        shaped = normalize_score(shaped, moments)
    kl = kl_penalty(old_logp, ref_logp, algo.kl_estimator)
    reward_kl_coef = kl_coef if algo.kl_in == "reward" else 0.0
    rewards = compose_rewards(shaped, kl, mask, reward_kl_coef, reward.missing_eos_penalty, rollout.ended_with_eos)
    advantages, returns = estimator.fn(rewards, mask, group_ids, values=values, gamma=algo.gamma, lam=algo.lam)
    if algo.estimator == "gae" and algo.whiten_advantages:
        advantages = masked_whiten(advantages, mask)
    if not (finite_on(rewards, mask) and finite_on(advantages, mask)
            and (returns is None or finite_on(returns, mask))):
        raise NonFinite("advantage")
    seq_kl = masked_sum(kl, mask, dim=1)
    stats = {
        "reward_mean": scores.float().mean().item(),
        "reward_std": scores.float().std().item() if len(scores) > 1 else 0.0,
        "kl": seq_kl.mean().item(),
        "kl_coef": float(kl_coef),
        "response_length": mask.sum(dim=1).mean().item(),
        "eos_fraction": rollout.ended_with_eos.float().mean().item(),
        "advantage_abs_mean": masked_mean(advantages.abs(), mask).item(),
    }
    if values is not None:
        stats["value_mean"] = masked_mean(values, mask).item()
    if returns is not None:
        stats["return_mean"] = masked_mean(returns, mask).item()
    if estimator.needs_critic:
        return Experience(rollout, old_logp, ref_logp, advantages, values, returns), stats
    return Experience(rollout, old_logp, ref_logp, advantages), stats
