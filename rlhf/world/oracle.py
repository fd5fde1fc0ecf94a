"""The oracle: the ground truth that scores any response to a task-world prompt.

Score (see ``rlhf.world.tasks`` for the answer format):
  * 1.0  the response, stripped of leading/trailing whitespace, is exactly the expected answer;
  * 0.0  anything else: a wrong answer, or the right answer with extra text or the wrong format.

There is deliberately no partial credit for "right answer, extra text": the defects in the demonstrations
are exactly that kind of response, and PPO is meant to remove them, so rewarding them halfway would only
slow that down; a binary score also makes the reward model's target a single yes/no question.

``oracle_reward`` has the programmatic-reward signature (``reward.function: rlhf.world.oracle:oracle_reward``):
it takes the prompts, as rows carrying their ``task`` field or as texts (PPO passes ``instruction\n\ninput``;
the task is then read back from the text), and the decoded responses (EOS and padding already removed). PPO also
passes the prompt ``records`` (the rows with their ``task``): the verifiable reward then reads the task from them.
"""

from __future__ import annotations

import random

from rlhf.errors import UserError
from rlhf.world.tasks import expected_answer, task_from_text


def task_of(row: dict | str) -> dict:
    """The task of a prompt row ``{"instruction", "input", "task"}``, of a task dict itself, or of a prompt text."""
    if isinstance(row, str):
        return task_from_text(row)
    if isinstance(row, dict) and "task" in row:
        return row["task"]
    if isinstance(row, dict) and "family" in row:
        return row
    raise UserError(f"prompt {str(row)[:80]!r}: has no 'task' field; use the task-world prompt files")


def oracle_score(task: dict, response: str) -> float:
    """1.0 if ``response`` is exactly the well-formed correct answer (whitespace-stripped), else 0.0."""
    return 1.0 if response.strip() == expected_answer(task_of(task)) else 0.0


def oracle_prefers(task: dict, a: str, b: str, rng: random.Random) -> int:
    """0 if ``a`` scores higher, 1 if ``b`` does; a tie is broken by a fair coin from ``rng``."""
    score_a, score_b = oracle_score(task, a), oracle_score(task, b)
    if score_a == score_b:
        return rng.randrange(2)
    return 0 if score_a > score_b else 1


def oracle_reward(prompts: list[dict] | list[str], responses: list[str],
                  records: list[dict] | None = None) -> list[float]:
    """Programmatic reward: the oracle score of each (prompt row or text, response) pair; with ``records`` (the
    prompt rows, as PPO's reward worker passes them) each task is read from its row rather than from the text."""
    if len(prompts) != len(responses):
        raise ValueError(f"oracle_reward: {len(prompts)} prompts but {len(responses)} responses")
    sources = records if records is not None else prompts
    return [oracle_score(task_of(p), r) for p, r in zip(sources, responses)]


def oracle_accuracy(prompts: list[dict] | list[str], responses: list[str]) -> float:
    """Share of responses that are correct and well-formed (0.0 for an empty list)."""
    scores = oracle_reward(prompts, responses)
    return sum(scores) / len(scores) if scores else 0.0
