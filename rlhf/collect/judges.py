"""Judges that turn K sampled responses per prompt into one (chosen, rejected) pair, or none.

- ``programmatic``: a ``module:callable`` taking ``(prompt_rows, response_lists, **kwargs)`` and returning one
  ``(chosen, rejected)`` or None per prompt (e.g. ``rlhf.world.annotators:simulated_judge``, or
  :func:`reference_judge` here, which prefers the response closest to a reference answer), with optional label
  noise, as AlpacaFarm's simulated annotators (Dubois et al. 2023, arXiv:2305.14387, Sec. 3.2) flip about 25% of
  labels: passed on as ``noise=`` to a callable that takes it, else each pair is swapped with that probability;
- ``rm``: a reward-model dir scored with :class:`rlhf.models.reward.RewardScorer`; the best-scored response is
  chosen and the worst rejected (InstructGPT ranks K samples with its RM the same way);
- ``openai``: an LLM judge behind an OpenAI-compatible API, asked pairwise about the first two distinct
  responses, in both orders; a pair is kept only when both orders agree, since judges favour a position
  (Zheng et al. 2023, "Judging LLM-as-a-judge", arXiv:2306.05685, Sec. 3.3: an inconsistent verdict is a tie).
  The prompt follows MT-bench's ``pair-v2`` (lm-sys/FastChat ``llm_judge``), in the project's own words.

``labels`` (people's labels) needs no sampling; see :mod:`rlhf.collect.preferences`.

Every prompt that yields no pair is counted in :attr:`drops` under one reason: ``tie`` (the judge has no
preference), ``inconsistent`` (openai: the two orders disagree), ``judge_unparseable`` (openai: no verdict
found in the reply), ``no_reply`` (openai: the request failed after retries or the budget ran out).
"""

from __future__ import annotations

import importlib
import inspect
import random
import re
from collections import Counter
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field, model_validator

from rlhf.collect.teachers import ApiSection
from rlhf.errors import UserError

Pair = tuple[str, str]
Messages = list[dict]

JUDGE_SYSTEM_PROMPT = (
    "You are an impartial judge. Compare the answers two AI assistants gave to the user's question below and "
    "decide which one follows the user's instructions and answers the question better. Consider helpfulness, "
    "correctness, relevance and level of detail. Do not let the order of the answers, their length or the "
    "assistants' names sway you. Explain your reasoning briefly, then give your verdict on the last line, "
    'exactly "[[A]]" if assistant A is better, "[[B]]" if assistant B is better, or "[[C]]" for a tie.'
)
_VERDICT = re.compile(r"\[\[([ABC])\]\]")


class JudgeSection(ApiSection):
    kind: Literal["programmatic", "rm", "openai", "labels"] = Field(
        ..., description="programmatic (module:callable), rm (reward-model dir), openai (LLM judge), labels (file)"
    )
    callable: str | None = Field(None, description="programmatic: 'module:function' returning a pair or None per prompt")
    kwargs: dict[str, Any] = Field(default_factory=dict, description="programmatic: extra keyword arguments")
    path: str | None = Field(None, description="rm: the reward-model dir; labels: the labeled comparisons file")
    config: str | None = Field(None, description="labels: config (subset) of a hub dataset or dataset folder")
    split: str | None = Field(None, description="labels: split of a hub dataset or dataset folder (default train)")
    noise: float | None = Field(
        None, ge=0, le=1,
        description="programmatic/rm: label-noise rate; a callable taking `noise` gets it, else pairs are swapped "
        "with this probability; unset: none added (the callable's own default)",
    )
    seed: int = Field(0, description="seed for label noise")
    max_tokens: int = Field(512, ge=1, description="openai: tokens for the judge's reasoning and verdict")
    temperature: float = Field(0.0, ge=0, description="openai: judge sampling temperature (0 = greedy)")

    @model_validator(mode="after")
    def _needs_for_kind(self):
        needs = {"programmatic": ("callable",), "rm": ("path",), "labels": ("path",), "openai": ("model", "base_url")}
        missing = [key for key in needs[self.kind] if not getattr(self, key)]
        if missing:
            raise ValueError(f"judge kind '{self.kind}' needs {' and '.join(repr(k) for k in missing)}")
        return self


def load_callable(spec: str) -> Callable:
    """``"package.module:function"`` -> the function; UserError naming the spec when it cannot be found."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UserError(f"judge callable '{spec}': expected 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UserError(f"judge callable '{spec}': cannot import {module_name} ({err})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UserError(f"judge callable '{spec}': {module_name} has no function '{attr}'")
    return fn


def reference_judge(
    prompt_rows: list[dict], response_lists: list[list[str]], reference_key: str = "output"
) -> list[Pair | None]:
    """A programmatic judge that needs no trained model: prefer the response closest to the row's reference answer.

    Closeness is ROUGE-L F1 over words (``rouge-score``, no stemming) against ``row[reference_key]``, ties broken
    by the same F1 over characters (so that even an untrained policy's samples, which rarely share a word with the
    reference, are ranked): the reference-guided grading of MT-bench (arXiv:2306.05685, Sec. 3.4) reduced to a
    string metric. Chosen is the closest response, rejected the farthest; None when the row has no reference or
    all responses are equally close.
    Usage: ``judge: {kind: programmatic, callable: rlhf.collect.judges:reference_judge}``.
    """
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    pairs: list[Pair | None] = []
    for row, responses in zip(prompt_rows, response_lists, strict=True):
        reference = row.get(reference_key)
        if not isinstance(reference, str) or not reference.strip():
            pairs.append(None)
            continue
        scores = [(scorer.score(reference, r)["rougeL"].fmeasure,
                   rouge_scorer._score_lcs(list(reference), list(r)).fmeasure) for r in responses]
        best, worst = max(range(len(scores)), key=scores.__getitem__), min(range(len(scores)), key=scores.__getitem__)
        pairs.append(None if scores[best] == scores[worst] else (responses[best], responses[worst]))
    return pairs


def _check_pair(result: object, responses: list[str], spec: str) -> Pair | None:
    if result is None:
        return None
    if not (isinstance(result, (tuple, list)) and len(result) == 2 and all(r in responses for r in result)):
        raise UserError(f"judge callable '{spec}' must return (chosen, rejected) from the given responses or None, "
                        f"got {str(result)[:80]!r}")
    return result[0], result[1]


class Judge:
    """Base: :meth:`judge` returns one pair or None per prompt and counts the Nones in :attr:`drops`."""

    def __init__(self) -> None:
        self.drops: Counter[str] = Counter()

    def judge(self, rows: list[dict], prompts: list[Messages], responses: list[list[str]]) -> list[Pair | None]:
        raise NotImplementedError

    def stats(self) -> dict:
        return {}

    def close(self) -> None:
        pass


class _NoisyJudge(Judge):
    """Swaps each pair with probability ``noise`` (a seeded stream, one draw per pair)."""

    def __init__(self, noise: float, seed: int) -> None:
        super().__init__()
        self.noise = noise
        self.rng = random.Random(seed)
        self.flipped = 0

    def _maybe_flip(self, pair: Pair | None) -> Pair | None:
        if pair is None:
            self.drops["tie"] += 1
            return None
        if self.noise and self.rng.random() < self.noise:
            self.flipped += 1
            return pair[1], pair[0]
        return pair

    def stats(self) -> dict:
        return {"flipped": self.flipped}


def _takes_noise(fn: Callable) -> bool:
    try:
        return "noise" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


class ProgrammaticJudge(_NoisyJudge):
    """``judge.noise`` goes to a callable with a ``noise`` parameter (e.g. the world's annotators, which flip
    their own labels), so that noise is applied once; other callables get their pairs swapped here."""

    def __init__(self, section: JudgeSection) -> None:
        fn = load_callable(section.callable)
        kwargs = dict(section.kwargs)
        own_noise = section.noise is not None and _takes_noise(fn)
        if own_noise:
            if "noise" in kwargs:
                raise UserError("judge: give the noise rate once, as 'noise' or as 'kwargs.noise', not both")
            kwargs["noise"] = section.noise
        super().__init__(0.0 if own_noise else section.noise or 0.0, section.seed)
        self.spec, self.fn, self.kwargs = section.callable, fn, kwargs

    def judge(self, rows, prompts, responses):
        results = self.fn(rows, responses, **self.kwargs)
        if not isinstance(results, (list, tuple)) or len(results) != len(rows):
            raise UserError(f"judge callable '{self.spec}' must return one result per prompt ({len(rows)})")
        return [self._maybe_flip(_check_pair(r, list(rs), self.spec)) for r, rs in zip(results, responses)]


class RewardModelJudge(_NoisyJudge):
    def __init__(self, section: JudgeSection) -> None:
        from rlhf.models.reward import RewardScorer, check_reward_model
        from rlhf.paths import resolve_path

        super().__init__(section.noise or 0.0, section.seed)
        self.scorer = RewardScorer(str(resolve_path(check_reward_model(section.path))))

    def judge(self, rows, prompts, responses):
        flat_prompts = [p for p, rs in zip(prompts, responses) for _ in rs]
        scores = self.scorer.score_pairs(flat_prompts, [r for rs in responses for r in rs])
        pairs, start = [], 0
        for rs in responses:
            chunk = scores[start:start + len(rs)]
            start += len(rs)
            best, worst = max(range(len(rs)), key=chunk.__getitem__), min(range(len(rs)), key=chunk.__getitem__)
            pairs.append(self._maybe_flip(None if chunk[best] == chunk[worst] else (rs[best], rs[worst])))
        return pairs


def render_question(messages: Messages) -> str:
    """The conversation the answers reply to: the last user turn, after any earlier turns for context."""
    if len(messages) == 1:
        return messages[0]["content"]
    names = {"system": "System", "user": "User", "assistant": "Assistant"}
    return "\n\n".join(f"{names[m['role']]}: {m['content']}" for m in messages)


def pairwise_messages(question: str, answer_a: str, answer_b: str) -> Messages:
    user = (
        f"[User Question]\n{question}\n\n"
        f"[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant A's Answer]\n\n"
        f"[The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant B's Answer]"
    )
    return [{"role": "system", "content": JUDGE_SYSTEM_PROMPT}, {"role": "user", "content": user}]


def parse_verdict(reply: str | None) -> str | None:
    """"A", "B" or "C" from the last ``[[X]]`` in the reply; None when there is none."""
    found = _VERDICT.findall(reply or "")
    return found[-1] if found else None


class OpenAIJudge(Judge):
    def __init__(self, section: JudgeSection) -> None:
        super().__init__()
        self.section = section
        self.client = section.chat_client()

    def _verdict(self, reply_ab: str | None, reply_ba: str | None, a: str, b: str) -> Pair | str:
        """The pair both orders agree on, or the drop reason."""
        if reply_ab is None or reply_ba is None:
            return "no_reply"
        first, second = parse_verdict(reply_ab), parse_verdict(reply_ba)
        if first is None or second is None:
            return "judge_unparseable"
        # In the second request the answers are swapped: its "A" is b.
        winner_1 = {"A": a, "B": b}.get(first)
        winner_2 = {"A": b, "B": a}.get(second)
        if winner_1 is None and winner_2 is None:
            return "tie"
        if winner_1 != winner_2:
            return "inconsistent"
        return (a, b) if winner_1 == a else (b, a)

    def judge(self, rows, prompts, responses):
        requests = []
        for messages, rs in zip(prompts, responses):
            question = render_question(messages)
            a, b = rs[0], next(r for r in rs if r != rs[0])
            requests += [pairwise_messages(question, a, b), pairwise_messages(question, b, a)]
        replies = self.client.complete_many(requests, self.section.temperature, self.section.max_tokens)
        pairs: list[Pair | None] = []
        for i, rs in enumerate(responses):
            a, b = rs[0], next(r for r in rs if r != rs[0])
            verdict = self._verdict(replies[2 * i], replies[2 * i + 1], a, b)
            if isinstance(verdict, str):
                self.drops[verdict] += 1
                pairs.append(None)
            else:
                pairs.append(verdict)
        return pairs

    def stats(self) -> dict:
        return self.client.stats.as_dict()

    def close(self) -> None:
        self.client.close()


def build_judge(section: JudgeSection) -> Judge:
    judges = {"programmatic": ProgrammaticJudge, "rm": RewardModelJudge, "openai": OpenAIJudge}
    if section.kind not in judges:
        raise UserError(f"judge kind '{section.kind}' does not judge sampled responses")
    return judges[section.kind](section)
