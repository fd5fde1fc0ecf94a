"""Rollout on an actor worker: batched sampling from the actor's own (training) module.

The actor generates with the weights it trains, so there is nothing to copy between a trainer and an inference
engine except under ZeRO-3, where each rank holds a shard: the full weights are gathered once per rollout
(DeepSpeed's ``unwrap_model_for_generation``, the approach of TRL's ``unwrap_model_for_generation``) rather than
on every decoding step. That gather (and the re-partition after) is the "weight sync" time; every batch of
the rollout samples from the same gathered weights. With ``rollout.generation.engine: static`` the compiled decode
step is kept per module (:func:`rlhf.sampling.engines.engine_for`), so later iterations, whose weights changed in
place or were gathered anew at the same shapes, reuse it without recompiling.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator

import torch

from rlhf.sampling import Completions, SamplingParams, generate as sample_completions
from rlhf.ppo.config import RolloutSection


@contextmanager
def generation_weights(engine, timings: dict[str, float]) -> Iterator[torch.nn.Module]:
    """The module to generate with; under ZeRO-3 its gathered full weights. Adds gather time to timings["sync_s"]."""
    if engine.zero_optimization_stage() != 3:
        yield engine.module
        return
    from deepspeed.runtime.zero.stage3 import unwrap_model_for_generation

    start = time.perf_counter()
    ctx = unwrap_model_for_generation(engine)
    ctx.__enter__()
    timings["sync_s"] += time.perf_counter() - start
    try:
        yield engine.module
    finally:
        start = time.perf_counter()
        ctx.__exit__(None, None, None)
        timings["sync_s"] += time.perf_counter() - start


def sampling_params(rollout: RolloutSection) -> SamplingParams:
    return SamplingParams(temperature=rollout.temperature, top_p=rollout.top_p,
                          max_new_tokens=rollout.max_new_tokens, do_sample=True)


def generate(engine, prompts: list[list[int]], rollout: RolloutSection, eos_id: int, pad_id: int,
             seed: int) -> tuple[Completions, dict[str, float]]:
    """One response per prompt (KV cache, stop at EOS, each cut after its first EOS).

    Returns (completions, {"generation_s", "sync_s", "prompts_truncated"}): the ``rlhf.sampling.Completions``
    (tokens, and per token the log-prob and entropy under logits / temperature). ``seed`` fixes the sampling RNG for
    this call. Batches follow ``rollout.generation`` (token budget); a prompt longer than the model's context minus
    ``max_new_tokens`` keeps its tail and is counted.
    """
    timings = {"generation_s": 0.0, "sync_s": 0.0, "prompts_truncated": 0.0}
    with generation_weights(engine, timings) as module:
        start = time.perf_counter()
        out = sample_completions(module, prompts, sampling_params(rollout), eos_id, pad_id, rollout.generation,
                                 max_rows=max(len(prompts), 1), seed=seed)
        timings["generation_s"] = time.perf_counter() - start
        timings["prompts_truncated"] = float(out.truncated)
    return out, timings
