"""Pairwise LLM judge of two policies, MT-bench style, in both orders (optional; needs an OpenAI-compatible API).

Per prompt, the judge sees the question and the two policies' answers as "Assistant A" and "Assistant B" with
MT-bench's ``pair-v2`` prompt (Zheng et al. 2023, "Judging LLM-as-a-judge with MT-Bench and Chatbot Arena",
arXiv:2306.05685; the wording is ``rlhf.collect.judges.pairwise_messages``), then again with the answers
swapped. A policy wins a prompt when both orders pick it; any disagreement, a tie verdict, an unparseable
reply or a failed request is a tie (the paper's conservative rule against position bias). The win rate counts
ties half, as AlpacaEval does.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import Field

from rlhf.collect.judges import pairwise_messages, parse_verdict, render_question
from rlhf.collect.teachers import ApiSection

Messages = list[dict]


class LLMJudgeSection(ApiSection):
    max_prompts: int | None = Field(64, ge=1, description="judge only the first N prompts (2 requests each)")
    max_tokens: int = Field(512, ge=1, description="tokens for the judge's reasoning and verdict")
    temperature: float = Field(0.0, ge=0, description="judge sampling temperature (0 = greedy)")


@dataclass
class JudgeResult:
    wins: int = 0
    losses: int = 0
    ties: int = 0
    reasons: dict[str, int] = field(default_factory=dict)  # why a prompt counted as a tie

    @property
    def win_rate(self) -> float | None:
        n = self.wins + self.losses + self.ties
        return (self.wins + 0.5 * self.ties) / n if n else None


def combine_orders(first: str | None, second: str | None) -> str:
    """Verdicts of the (A=policy, B=baseline) and (A=baseline, B=policy) requests -> "win", "loss", or a tie
    reason: "tie", "inconsistent", "unparseable", "no_reply"."""
    if first is None or second is None:
        return "no_reply"
    v1, v2 = parse_verdict(first), parse_verdict(second)
    if v1 is None or v2 is None:
        return "unparseable"
    policy_1 = {"A": "win", "B": "loss"}.get(v1, "tie")  # first request: the policy is A
    policy_2 = {"B": "win", "A": "loss"}.get(v2, "tie")  # second request: the policy is B
    if policy_1 == policy_2:
        return policy_1
    return "inconsistent"


def judge_pairwise(client, section: LLMJudgeSection, prompts: list[Messages], policy: list[str],
                   baseline: list[str]) -> JudgeResult:
    """Judge policy vs baseline on each prompt in both orders; ``client`` is a ``ChatClient``."""
    n = min(len(prompts), section.max_prompts or len(prompts))
    requests = []
    for messages, a, b in zip(prompts[:n], policy[:n], baseline[:n]):
        question = render_question(messages)
        requests += [pairwise_messages(question, a, b), pairwise_messages(question, b, a)]
    replies = client.complete_many(requests, section.temperature, section.max_tokens)
    result = JudgeResult()
    for i in range(n):
        outcome = combine_orders(replies[2 * i], replies[2 * i + 1])
        if outcome == "win":
            result.wins += 1
        elif outcome == "loss":
            result.losses += 1
        else:
            result.ties += 1
            result.reasons[outcome] = result.reasons.get(outcome, 0) + 1
    return result
