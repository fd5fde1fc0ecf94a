"""A policy loaded in the evaluating process: sample K responses per prompt, and score given responses.

Evaluation runs on the driver (no Ray workers): a tiny policy samples a few thousand short responses in
seconds, less than a worker takes to start. Sampling and log-probs use the same code as PPO's rollout and
experience (:func:`rlhf.sampling.generate`, ``rlhf.ppo.experience.batched_logprobs``), so the numbers
describe the distribution PPO trained. Prompts are first cut to the model's context (:meth:`Policy.bound`), so
sampling and scoring see the same prompt and neither runs past the model's positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlhf.sampling import GenerationSection, SamplingParams, generate
from rlhf.sampling.batching import bound_prompts, model_context
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

    def bound(self, prompt_ids: list[list[int]], max_new_tokens: int) -> tuple[list[list[int]], int]:
        """(prompts cut to the model's context minus ``max_new_tokens``, keeping BOS and the template's tail; how
        many were cut)."""
        return bound_prompts(prompt_ids, max_new_tokens, model_context(self.model), self.tokenizer.bos_token_id)

    def sample(self, prompt_ids: list[list[int]], k: int, temperature: float, top_p: float, max_new_tokens: int,
               seed: int, batch_size: int = 64, generation: GenerationSection | None = None) -> Samples:
        """K responses per prompt; temperature 0 is greedy decoding (then K identical rows: use k=1). Batches hold
        at most ``batch_size`` rows and ``generation.max_batch_tokens`` tokens."""
        params = SamplingParams(temperature, top_p, max_new_tokens, do_sample=temperature > 0)
        flat = [p for p in prompt_ids for _ in range(k)]
        ids = generate(self.model, flat, params, self.eos_id, self.pad_id, generation, max_rows=batch_size,
                       seed=seed, bos_id=self.tokenizer.bos_token_id).tokens
        texts = [self.tokenizer.decode(r, skip_special_tokens=True).strip() for r in ids]
        return Samples([i for i in range(len(prompt_ids)) for _ in range(k)], ids, texts, k)

    def sequence_logprobs(self, prompt_ids: list[list[int]], responses: list[list[int]], temperature: float,
                          batch_size: int = 64) -> torch.Tensor:
        """[B] log pi(y|x) summed over each response's tokens (EOS included), under logits / temperature as in
        PPO's experience (``rlhf.ppo.experience.response_logprobs``)."""
        rollout = build_rollout(prompt_ids, responses, self.eos_id, self.pad_id)
        logp, _ = batched_logprobs(self.model, rollout, temperature, batch_size)
        return (logp * rollout.response_mask).sum(dim=1)
