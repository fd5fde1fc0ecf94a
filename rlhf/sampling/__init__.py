"""One sampling path for PPO rollouts, preference collection, self-instruct teachers, the chat server and eval.

:func:`generate` bounds prompts by the model's context, plans token-budgeted batches, runs them on the configured
engine (:mod:`rlhf.sampling.engines`: eager HF ``generate`` or the static-cache compiled decode loop) and returns
each response cut after its first EOS with its per-token log-probs and entropies.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from rlhf.sampling.batching import bound_prompts, cut_at_eos, left_pad, model_context, plan_batches
from rlhf.sampling.config import GenerationSection, SamplingParams
from rlhf.sampling.engines import engine_for

__all__ = ["Completions", "GenerationSection", "SamplingParams", "cut_at_eos", "generate", "left_pad",
           "resolve_engine", "sample"]


@dataclass
class Completions:
    tokens: list[list[int]]  # [N] response ids per prompt, cut after the first EOS (kept when produced)
    logprobs: list[list[float]]  # [N] per token of ``tokens``: log pi(y_t | x, y_<t) under logits / temperature
    entropy: list[list[float]]  # [N] per token of ``tokens``: entropy of pi(. | x, y_<t) under logits / temperature
    engine: str
    truncated: int = 0  # prompts cut to fit the model's context (tail kept)
    batches: int = 0
    seconds: float = 0.0


def resolve_engine(section: GenerationSection, device: torch.device) -> str:
    """``auto`` -> eager, for now on GPU too. On CPU compiling costs more than it saves (benchmarks/sampling.py);
    on GPU the static engine becomes the default once the GPU run (benchmarks/gpu_check.sh) has measured it faster,
    which no device has done yet. Ask for it with ``engine: static``."""
    if section.engine != "auto":
        return section.engine
    return "eager"


@torch.no_grad()
def generate(model: torch.nn.Module, prompts: list[list[int]], params: SamplingParams, eos_id: int, pad_id: int,
             section: GenerationSection | None = None, max_rows: int = 64, seed: int | None = None,
             bos_id: int | None = None, backend: str = "inductor") -> Completions:
    """One response per prompt, in order. ``seed`` fixes the RNG for this call (the global torch RNG, which HF
    ``generate`` draws from too); ``max_rows`` caps rows per batch; ``backend`` is torch.compile's (tests count
    compiles with a counting backend)."""
    section = section or GenerationSection()
    device = next(model.parameters()).device
    name = resolve_engine(section, device)
    engine = engine_for(model, name, section.compile, backend)
    start = time.perf_counter()
    if seed is not None:
        torch.manual_seed(seed)
    if bos_id is None:
        bos_id = getattr(getattr(model, "config", None), "bos_token_id", None)
    bounded, truncated = bound_prompts(prompts, params.max_new_tokens, model_context(model), bos_id)
    batches = plan_batches([len(p) for p in bounded], params.max_new_tokens, section.max_batch_tokens, max_rows,
                           lambda rows, width: engine.shape(rows, width, max_rows))
    tokens: list[list[int]] = [[] for _ in prompts]
    logprobs: list[list[float]] = [[] for _ in prompts]
    entropy: list[list[float]] = [[] for _ in prompts]
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            ids, mask = left_pad([bounded[i] for i in batch.index], pad_id, batch.width, batch.rows)
            new, logp, ent = engine.run(ids.to(device), mask.to(device), params, eos_id, pad_id)
            new, keep = cut_at_eos(new, eos_id, pad_id)
            for row, i in enumerate(batch.index):
                n = int(keep[row].sum())
                tokens[i] = new[row, :n].tolist()
                logprobs[i] = logp[row, :n].float().tolist()
                entropy[i] = ent[row, :n].float().tolist()
    finally:
        if was_training:
            model.train()
    return Completions(tokens, logprobs, entropy, name, truncated, len(batches), time.perf_counter() - start)


def sample(model: torch.nn.Module, prompts: list[list[int]], params: SamplingParams, eos_id: int, pad_id: int,
           batch_size: int = 64, generator_seed: int | None = None,
           section: GenerationSection | None = None) -> list[list[int]]:
    """Response ids only (see :func:`generate`)."""
    return generate(model, prompts, params, eos_id, pad_id, section, batch_size, generator_seed).tokens
