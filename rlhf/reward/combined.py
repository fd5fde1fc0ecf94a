"""The PPO reward as a weighted sum of sources: a reward model, a remote service and a programmatic function.

    score(x, y) = sum over the sources set of weight_source * score_source(x, y)     (weights default to 1)

Each source maps (prompt messages, prompt texts, response texts, prompt records) to [B] float scores:
- "model": the RM re-encodes each (prompt, response) with its own template and tokenizer and reads the last token,
  normalized by the RM's training statistics when its config has them;
- "url": ``RemoteReward`` (ours or OpenRLHF's protocol) with the prompt texts;
- "function": ``module:callable`` with the prompt texts (and the records when it takes them).
"""

from __future__ import annotations

from typing import Callable

import torch

Source = Callable[[list, list[str], list[str], list[dict]], torch.Tensor]


def build_sources(reward, device: torch.device | str = "cpu", batch_size: int = 16,
                  precision: str = "auto") -> list[tuple[str, Source]]:
    """[(name, source)] for every source ``reward`` (a ``RewardSection``) sets, in the order model, url, function.
    ``precision``: the reward model's weights (rlhf.models.loading.inference_dtype: auto = bf16 on GPU, fp32 on CPU)."""
    sources: list[tuple[str, Source]] = []
    if reward.model:
        from rlhf.models.reward import RewardScorer

        scorer = RewardScorer(reward.model, device=device, precision=precision)
        normalize = scorer.mean is not None and bool(scorer.std)

        def rm(messages, texts, responses, records):
            return as_scores(scorer.score_pairs(messages, responses, normalize=normalize, batch_size=batch_size))

        rm.scorer = scorer  # the loaded model, for callers that inspect it (its dtype, device)
        sources.append(("model", rm))
    if reward.url:
        from rlhf.ppo.remote_reward import RemoteReward

        remote = RemoteReward(reward.url, reward.protocol, reward.timeout_s, reward.retries)
        sources.append(("url", lambda messages, texts, responses, records: as_scores(remote.score(texts, responses))))
    if reward.function:
        from rlhf.reward.functions import call_reward_function, load_reward_function

        fn, kwargs = load_reward_function(reward.function), dict(reward.kwargs)
        sources.append(("function", lambda messages, texts, responses, records: as_scores(
            call_reward_function(fn, texts, responses, records, kwargs))))
    return sources


def as_scores(values) -> torch.Tensor:
    return torch.tensor([float(v) for v in values], dtype=torch.float32)


def combine(parts: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """sum_k weights.get(k, 1.0) * parts[k]; parts: {source name: [B]} (at least one). Returns [B] float32."""
    if not parts:
        raise ValueError("no reward source to combine")
    return sum(float(weights.get(name, 1.0)) * scores.float() for name, scores in parts.items())
