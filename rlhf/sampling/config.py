"""How responses are sampled (per call) and how the sampler runs (per caller's config).

:class:`SamplingParams` is what a caller asks for (temperature, top-p, length); :class:`GenerationSection` is the
``generation:`` block of every config that samples (PPO's ``rollout``, eval, preference collection, hf teachers):
which engine, and how much work one batch may hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from rlhf.config import Section


@dataclass
class SamplingParams:
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    do_sample: bool = True

    @property
    def greedy(self) -> bool:
        return not self.do_sample or self.temperature == 0


class GenerationSection(Section):
    engine: Literal["auto", "eager", "static"] = Field(
        "auto", description="eager (HF generate), static (static KV cache + compiled decode step, CUDA graphs on "
        "GPU); auto = eager (static becomes the GPU default once benchmarks/gpu_check.sh measures it faster)")
    compile: bool = Field(True, description="static: torch.compile the decode step (mode reduce-overhead)")
    max_batch_tokens: int = Field(
        65536, ge=1, description="cap on rows x (padded prompt + max_new_tokens) per batch: bounds KV cache and "
        "activations whatever the prompt lengths (a batch always holds at least one row; the caller's batch "
        "size caps the rows)")
