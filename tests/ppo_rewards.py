"""Reward functions the PPO stage tests load by name in their Ray reward worker ("tests.ppo_rewards:...")."""

from __future__ import annotations

from rlhf.reward.functions import count_occurrences

_calls = {"n": 0}


def nan_on_calls(prompts: list[str], responses: list[str], calls: list[int], target: str = "e") -> list[float]:
    """count_occurrences, except that the 1-based calls listed in ``calls`` return NaN for the first response.

    The counter lives in the reward worker's process, which serves every call of one stage run.
    """
    _calls["n"] += 1
    scores = count_occurrences(prompts, responses, target)
    if _calls["n"] in calls:
        scores[0] = float("nan")
    return scores
