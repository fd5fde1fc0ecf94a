"""Batched sampling from a causal LM: left-padded prompts, KV cache, stop at EOS, exact response masks.

Used by PPO's rollout (on the actor's own module) and by the collect stage's teachers and preference sampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    do_sample: bool = True


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged prompts -> (input_ids [B, P], attention_mask [B, P]), padded on the left so generation appends cleanly."""
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):
        if p:
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
    return ids, mask


def cut_at_eos(tokens: torch.Tensor, eos_id: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Generated tokens [B, R] -> (tokens with everything after the first EOS set to pad, mask [B, R]).

    The mask is 1 up to and including the first EOS, 0 after it: tokens after EOS are excluded everywhere.
    """
    is_eos = tokens == eos_id
    after = (is_eos.long().cumsum(dim=1) - is_eos.long()) > 0  # strictly after the first EOS
    mask = (~after).long()
    return tokens.masked_fill(after, pad_id), mask


@torch.no_grad()
def sample(
    model: torch.nn.Module,
    prompts: list[list[int]],
    params: SamplingParams,
    eos_id: int,
    pad_id: int,
    batch_size: int = 64,
    generator_seed: int | None = None,
) -> list[list[int]]:
    """Sample one response per prompt; each response is cut after its first EOS (EOS kept when produced)."""
    device = next(model.parameters()).device
    if generator_seed is not None:
        torch.manual_seed(generator_seed)
    out: list[list[int]] = []
    was_training = model.training
    model.eval()
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        ids, mask = left_pad(chunk, pad_id)
        ids, mask = ids.to(device), mask.to(device)
        kwargs = dict(max_new_tokens=params.max_new_tokens, eos_token_id=eos_id, pad_token_id=pad_id, use_cache=True)
        if params.do_sample and params.temperature > 0:
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
        else:
            kwargs.update(do_sample=False)
        seqs = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        responses, rmask = cut_at_eos(seqs[:, ids.shape[1]:], eos_id, pad_id)
        for row, m in zip(responses.tolist(), rmask.tolist()):
            out.append(row[: sum(m)])
    if was_training:
        model.train()
    return out
