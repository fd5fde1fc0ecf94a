"""Programmatic rewards for ``reward.function: module:callable``, and the loader and caller for that setting.

A reward function takes the prompt texts and the response texts (EOS and padding removed) and returns one
float per response: ``fn(prompts: list[str], responses: list[str], **reward.kwargs) -> list[float]``.
A function with a ``records`` parameter also gets each prompt's source row (all its fields, e.g. a reference
answer or the task-world ``task``): a verifiable reward, as in DeepSeek-R1 / Tulu 3's RLVR.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Callable

from rlhf.errors import UserError

RewardFn = Callable[..., list[float]]


def count_occurrences(prompts: list[str], responses: list[str], target: str = "e",
                      per_response_cap: int | None = None) -> list[float]:
    """+1 for each occurrence of ``target`` in the response (capped at ``per_response_cap`` when set).

    The test reward of the PPO stage: dense enough that a tiny random policy finds it within a few iterations.
    """
    if not target:
        raise ValueError("count_occurrences needs a non-empty target")
    counts = [float(r.count(target)) for r in responses]
    return [min(c, per_response_cap) for c in counts] if per_response_cap is not None else counts


def load_reward_function(spec: str, setting: str = "reward.function") -> RewardFn:
    """'package.module:callable' -> the callable; a UserError naming the setting when it cannot be found."""
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise UserError(f"{setting} {spec}: cannot import {module_name} ({err})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise UserError(f"{setting} {spec}: {module_name} has no callable '{attr}'")
    return fn


def takes_records(fn: RewardFn) -> bool:
    try:
        return "records" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin without a signature
        return False


def call_reward_function(fn: RewardFn, prompts: list[str], responses: list[str], records: list[dict] | None,
                         kwargs: dict) -> list[float]:
    """``fn(prompts, responses[, records=records], **kwargs)`` as floats; a ValueError on a wrong count."""
    extra = {"records": records} if records is not None and takes_records(fn) else {}
    scores = fn(prompts, responses, **extra, **kwargs)
    if len(scores) != len(responses):
        raise ValueError(f"reward function returned {len(scores)} scores for {len(responses)} responses")
    return [float(s) for s in scores]
