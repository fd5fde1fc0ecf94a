"""Preference pairs: turn records of the common formats into (prompt messages, chosen, rejected, margin).

Formats (``fmt``):
- ``pairs``: ``{prompt, chosen, rejected}``. ``prompt`` is a string or chat messages ending in a user turn
  (TRL's explicit-prompt preference format); ``chosen``/``rejected`` are strings, one assistant message, or a list
  holding one. A string prompt shaped like an HH transcript (``"\\n\\nHuman: ... \\n\\nAssistant:"``) is parsed
  into turns: that is DeepSpeed-Chat's local json (``LocalJsonFileDataset``: prompt, chosen, rejected), so
  ``deepspeed_chat`` is the same parser under its own name.
- ``hh``: Anthropic HH-RLHF (anthropics/hh-rlhf): ``{chosen, rejected}`` as whole ``"\\n\\nHuman: ... \\n\\nAssistant:
  ..."`` transcripts. The shared prompt is everything before the last ``"\\n\\nAssistant:"``; the two responses are
  what follows it. Chat-message transcripts (lists ending in the assistant's answer) are split the same way.
- ``colossal``: ColossalChat (hpcaitech/ColossalAI, coati tokenize_rlhf): ``{context: [{from, content}], chosen,
  rejected}``, where chosen/rejected are one ``{from: assistant, content}`` or a list holding one. Adjacent
  turns of one speaker are joined with a space, as ColossalChat does.
- ``auto``: ``context`` -> colossal, ``prompt`` -> pairs, else hh.

Documented drops (counted, never silent): ``identical`` (chosen == rejected), ``empty`` (a side is blank),
``prompt_mismatch`` (an HH pair whose two transcripts differ before the last answer) and ``no_user_turn`` (an HH
prompt whose last turn is not the human's). Anything else malformed is a UserError naming the file and line.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Any, NamedTuple

from rlhf.data.formats import SHAREGPT_ROLES, Message, check_conversation
from rlhf.data.io import Row
from rlhf.errors import UserError

PREFERENCE_FORMATS = ("pairs", "deepspeed_chat", "hh", "colossal")
DROP_REASONS = ("identical", "empty", "prompt_mismatch", "no_user_turn")

HH_MARKER = re.compile(r"\n\n(Human|Assistant):")
HH_ASSISTANT = "\n\nAssistant:"
HH_ROLES = {"Human": "user", "Assistant": "assistant"}


class Pair(NamedTuple):
    prompt: list[Message]  # ends with a user turn
    chosen: str
    rejected: str
    margin: float | None


class DroppedPair(Exception):
    """A record that is dropped by design (see DROP_REASONS); ``load_pairs`` counts it."""

    def __init__(self, reason: str, where: str, detail: str = ""):
        super().__init__(f"{where}: pair dropped ({reason}){': ' + detail if detail else ''}")
        self.reason, self.where = reason, where


def detect_preference_format(row: Row) -> str:
    keys = row.data.keys()
    if "context" in keys:
        return "colossal"
    if "prompt" in keys:
        return "pairs"
    if "chosen" in keys or "rejected" in keys:
        return "hh"
    raise UserError(f"{row.where}: cannot tell the preference format from its keys {sorted(keys)}; expected "
                    "'prompt'/'chosen'/'rejected', 'chosen'/'rejected' (HH transcripts) or 'context' (ColossalChat)")


def to_pair(row: Row, fmt: str = "auto", margin_key: str | None = "margin") -> Pair:
    """One record -> Pair. Raises UserError on malformed input, DroppedPair on a documented drop."""
    if not isinstance(row.data, dict):
        raise UserError(f"{row.where}: expected a JSON object, got {type(row.data).__name__}")
    if fmt == "auto":
        fmt = detect_preference_format(row)
    if fmt not in _PARSERS:
        raise UserError(f"unknown preference format {fmt!r}; expected auto, {', '.join(PREFERENCE_FORMATS)}")
    for key in ("chosen", "rejected"):
        if row.data.get(key) is None:
            raise UserError(f"{row.where}: missing field '{key}'")
    prompt, chosen, rejected = _PARSERS[fmt](row)
    check_conversation(prompt, row.where)
    if not prompt or prompt[-1]["role"] != "user":
        raise UserError(f"{row.where}: the prompt must end with a user turn")
    chosen, rejected = chosen.strip(), rejected.strip()
    if not chosen or not rejected:
        raise DroppedPair("empty", row.where, f"{'chosen' if not chosen else 'rejected'} is empty")
    if chosen == rejected:
        raise DroppedPair("identical", row.where)
    return Pair(prompt, chosen, rejected, _margin(row, margin_key))


def load_pairs(rows: list[Row], fmt: str = "auto", margin_key: str | None = "margin",
               strict: bool = False) -> tuple[list[Pair], dict[str, int]]:
    """(pairs, drop counts by reason). ``strict`` turns the first drop into a UserError naming its line."""
    pairs: list[Pair] = []
    drops: Counter[str] = Counter()
    for row in rows:
        try:
            pairs.append(to_pair(row, fmt, margin_key))
        except DroppedPair as drop:
            if strict:
                raise UserError(f"{drop} (data.strict is set)") from None
            drops[drop.reason] += 1
    return pairs, dict(drops)


def split_hh_transcript(text: str, where: str, field: str) -> tuple[str, str]:
    """``"\\n\\nHuman: q\\n\\nAssistant: a"`` -> (everything before the last ``"\\n\\nAssistant:"``, ``a`` stripped)."""
    body = "\n\n" + text.lstrip()
    if not body.startswith("\n\nHuman:"):
        raise UserError(f"{where}: field '{field}' is not an HH transcript (expected it to start with 'Human:')")
    cut = body.rfind(HH_ASSISTANT)
    if cut < 0:
        raise UserError(f"{where}: field '{field}' has no 'Assistant:' turn to take the response from")
    return body[:cut], body[cut + len(HH_ASSISTANT):].strip()


def hh_messages(text: str) -> list[Message]:
    """An HH transcript (or its prompt part) as chat messages; adjacent turns of one speaker joined by a blank line."""
    parts = HH_MARKER.split("\n\n" + text.lstrip())
    messages: list[Message] = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        role, content = HH_ROLES[speaker], content.strip()
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += "\n\n" + content
        else:
            messages.append({"role": role, "content": content})
    return messages


def looks_like_hh(text: str) -> bool:
    """A prompt string written as an HH transcript (DeepSpeed-Chat's Dahoas-style data)."""
    stripped = text.strip()
    return stripped.startswith("Human:") and stripped.endswith("Assistant:")


def _margin(row: Row, key: str | None) -> float | None:
    if key is None or row.data.get(key) is None:
        return None
    value = row.data[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{row.where}: field '{key}' (the margin) must be a number, got {type(value).__name__}")
    return float(value)


def _text(row: Row, key: str) -> str:
    """A response: a string, one assistant message ({role|from, content}), or a list holding one."""
    value = row.data[key]
    if isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, dict):
        role = value.get("role", SHAREGPT_ROLES.get(str(value.get("from")), value.get("from")))
        content = value.get("content", value.get("value"))
        if role == "assistant" and isinstance(content, str):
            return content
    raise UserError(f"{row.where}: field '{key}' must be a string or one assistant message, "
                    f"got {_describe(value)}")


def _describe(value: Any) -> str:
    if isinstance(value, list):
        return f"a list of {len(value)}"
    if isinstance(value, dict):
        return f"an object with keys {sorted(value)}"
    return type(value).__name__


def _messages(row: Row, key: str, role_key: str = "role") -> list[Message]:
    value = row.data.get(key)
    if not isinstance(value, list):
        raise UserError(f"{row.where}: field '{key}' must be a list of messages, got {_describe(value)}")
    messages: list[Message] = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict) or role_key not in turn or not isinstance(turn.get("content"), str):
            raise UserError(f"{row.where}: {key}[{i}] must be an object with '{role_key}' and a string 'content'")
        role = SHAREGPT_ROLES.get(turn[role_key]) if role_key == "from" else turn[role_key]
        if role not in ("system", "user", "assistant"):
            raise UserError(f"{row.where}: {key}[{i}] has {role_key} {turn[role_key]!r}; "
                            f"expected {'human or assistant' if role_key == 'from' else 'system, user or assistant'}")
        messages.append({"role": role, "content": turn["content"]})
    return messages


def _pairs(row: Row) -> tuple[list[Message], str, str]:
    prompt = row.data.get("prompt")
    if prompt is None:
        raise UserError(f"{row.where}: missing field 'prompt'")
    if isinstance(prompt, str):
        # "... Assistant:" ends a DeepSpeed-Chat prompt: the answer's slot, not a turn
        messages = hh_messages(prompt.strip()[: -len("Assistant:")]) if looks_like_hh(prompt) else \
            [{"role": "user", "content": prompt}]
    elif isinstance(prompt, list):
        messages = _messages(row, "prompt")
    else:
        raise UserError(f"{row.where}: field 'prompt' must be a string or a list of messages, got {_describe(prompt)}")
    return messages, _text(row, "chosen"), _text(row, "rejected")


def _hh(row: Row) -> tuple[list[Message], str, str]:
    chosen, rejected = row.data["chosen"], row.data["rejected"]
    if isinstance(chosen, list) and isinstance(rejected, list):  # chat-message transcripts
        c, r = _messages(row, "chosen"), _messages(row, "rejected")
        for key, turns in (("chosen", c), ("rejected", r)):
            if not turns or turns[-1]["role"] != "assistant":
                raise UserError(f"{row.where}: field '{key}' must end with the assistant's answer")
        if c[:-1] != r[:-1]:
            raise DroppedPair("prompt_mismatch", row.where, "the two conversations differ before the last answer")
        return c[:-1], c[-1]["content"], r[-1]["content"]
    for key, value in (("chosen", chosen), ("rejected", rejected)):
        if not isinstance(value, str):
            raise UserError(f"{row.where}: field '{key}' must be an HH transcript string, got {_describe(value)}")
    prompt_c, answer_c = split_hh_transcript(chosen, row.where, "chosen")
    prompt_r, answer_r = split_hh_transcript(rejected, row.where, "rejected")
    messages = hh_messages(prompt_c)
    if messages != hh_messages(prompt_r):
        raise DroppedPair("prompt_mismatch", row.where, "chosen and rejected differ before the last 'Assistant:'")
    if messages[-1]["role"] != "user":
        raise DroppedPair("no_user_turn", row.where, "two 'Assistant:' turns in a row end the prompt")
    return messages, answer_c, answer_r


def _colossal(row: Row) -> tuple[list[Message], str, str]:
    messages: list[Message] = []
    for turn in _messages(row, "context", role_key="from"):
        if messages and messages[-1]["role"] == turn["role"]:
            messages[-1]["content"] += " " + turn["content"]
        else:
            messages.append(turn)
    return messages, _text(row, "chosen"), _text(row, "rejected")


_PARSERS = {"pairs": _pairs, "deepspeed_chat": _pairs, "hh": _hh, "colossal": _colossal}
