"""The service's side of scoring: RewardScorer (rlhf.models.reward, shared with the rm stage and PPO) split into
encoding, done per request, and the forward pass, done per batch of items from many requests.

Encoding uses exactly the scorer's own paths (``encode_prompt_response`` with the RM's template and max length
for pairs, the scorer's text encoder for texts), and reports which items were cut to ``max_length``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from rlhf.data.templates import encode_prompt_response
from rlhf.serve.app import Encoded

UNBOUNDED = 1 << 30  # a max_length no text reaches: encodes without truncation


class RewardBackend:
    """A loaded reward model with the encoders and scorer the FastAPI routes call (the ScoringBackend protocol)."""

    def __init__(self, model_dir: str, device: str = "auto", dtype: str = "auto", normalize_get_reward: bool = False,
                 score_batch_size: int = 32):
        from rlhf.models.reward import RewardScorer

        self.scorer = RewardScorer(model_dir, device=device, precision=dtype)
        self.model_name = Path(model_dir).name
        self.max_length: int = self.scorer.max_length
        self.normalize_get_reward = normalize_get_reward
        self.score_batch_size = score_batch_size

    def encode_texts(self, texts: list[str]) -> list[Encoded]:
        """Rendered texts -> ids as RewardScorer.score_texts builds them (bos ... eos, start and end kept)."""
        out = []
        for text in texts:
            ids = self.scorer._text_ids(text)
            out.append(Encoded(ids, len(ids) >= self.max_length and self._text_length(text) > self.max_length))
        return out

    def _text_length(self, text: str) -> int:
        """Tokens of ``text`` before truncation, counting the eos the scorer appends when it is missing."""
        tok = self.scorer.tokenizer
        ids = tok(text, add_special_tokens=True)["input_ids"]
        return len(ids) + (0 if ids and ids[-1] == tok.eos_token_id else 1)

    def encode_pairs(self, prompts: list[list[dict[str, str]]], responses: list[str]) -> list[Encoded]:
        """Messages + response -> ids as RewardScorer.score_pairs builds them (the RM's template)."""
        template, tok = self.scorer.template, self.scorer.tokenizer
        out = []
        for messages, response in zip(prompts, responses):
            ids = encode_prompt_response(messages, response, template, tok, self.max_length)
            # Only an item that fills max_length can have been cut; only those pay for a second, uncut encoding.
            cut = len(ids) >= self.max_length and len(
                encode_prompt_response(messages, response, template, tok, UNBOUNDED)) > self.max_length
            out.append(Encoded(ids, cut))
        return out

    def normalize(self, scores: list[float]) -> list[float]:
        return self.scorer.normalize(scores)

    def score_now(self, items: list[Encoded]) -> list[float]:
        """One forward pass per ``score_batch_size`` items, on the calling thread."""
        return self.scorer.score_ids([item.ids for item in items], batch_size=self.score_batch_size)

    async def score(self, items: list[Encoded]) -> list[float]:
        """Unbatched: this request's items alone, off the event loop."""
        return await asyncio.to_thread(self.score_now, items)

    def self_check(self) -> None:
        if self.scorer.model is None:
            raise RuntimeError("reward model not loaded")
