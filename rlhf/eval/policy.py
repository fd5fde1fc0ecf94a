"""A policy loaded in the evaluating process: sample K responses per prompt, and score given responses.

Evaluation runs on the driver (no Ray workers): a tiny policy samples a few thousand short responses in
seconds, less than a worker takes to start. Sampling and log-probs use the same code as PPO's rollout and
experience (``rlhf.models.generation.sample``, ``rlhf.ppo.experience.batched_logprobs``), so the numbers
describe the distribution PPO trained.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf.models.generation import SamplingParams, sample
from rlhf.ppo.experience import batched_logprobs, build_rollout


@dataclass
class Samples:
    """K responses for each of N prompts, flattened prompt-major: row i*K + k is sample k of prompt i."""

    prompt_index: list[int]  # [N*K] which prompt each row answers
    ids: list[list[int]]  # [N*K] response token ids, cut after the first EOS (kept when produced)
    texts: list[str]  # [N*K] decoded, special tokens dropped, stripped (what the collect stage's judges saw)
    k: int


class Policy:
    """A causal LM and its tokenizer, in eval mode on the GPU when there is one (else the CPU), in ``precision``."""

    def __init__(self, path: str, tokenizer_path: str | None = None, precision: str = "auto") -> None:
        from rlhf.models.loading import inference_device, load_for_inference, resolve_model_path
        from rlhf.models.tokenizer import load_tokenizer

        self.path = resolve_model_path(path, tokenizer_path)
        self.tokenizer = load_tokenizer(tokenizer_path or self.path)
        self.device = inference_device("auto")
        self.model = load_for_inference(self.path, "causal_lm", precision, self.device)
        self.eos_id, self.pad_id = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id

    def sample(self, prompt_ids: list[list[int]], k: int, temperature: float, top_p: float, max_new_tokens: int,
               seed: int, batch_size: int = 64) -> Samples:
        """K responses per prompt; temperature 0 is greedy decoding (then K identical rows: use k=1)."""
        params = SamplingParams(temperature, top_p, max_new_tokens, do_sample=temperature > 0)
        flat = [p for p in prompt_ids for _ in range(k)]
        ids = sample(self.model, flat, params, self.eos_id, self.pad_id, batch_size=batch_size, generator_seed=seed)
        texts = [self.tokenizer.decode(r, skip_special_tokens=True).strip() for r in ids]
        return Samples([i for i in range(len(prompt_ids)) for _ in range(k)], ids, texts, k)

    def sequence_logprobs(self, prompt_ids: list[list[int]], responses: list[list[int]], temperature: float,
                          batch_size: int = 64) -> torch.Tensor:
        """[B] log pi(y|x) summed over each response's tokens (EOS included), under logits / temperature as in
        PPO's experience (``rlhf.ppo.experience.response_logprobs``)."""
        rollout = build_rollout(prompt_ids, responses, self.eos_id, self.pad_id)
        logp, _ = batched_logprobs(self.model, rollout, temperature, batch_size)
        return (logp * rollout.response_mask).sum(dim=1)
