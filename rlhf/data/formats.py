"""Turn records of the common instruction-data formats into one canonical conversation.

Canonical conversation: ``[{"role": "system"|"user"|"assistant", "content": str}, ...]`` with an
optional system turn first, then user and assistant turns alternating, starting with the user.

Formats (``fmt``):
- ``alpaca``: ``{instruction, input?, output}`` (Stanford Alpaca, tatsu-lab/stanford_alpaca).
  The user turn's content is the instruction, plus ``"\\n\\n" + input`` when the input is not empty;
  the user message also keeps ``"instruction"`` and ``"input"`` keys so the alpaca template can render
  its with-input prompt. Every other consumer only needs ``content``.
- ``sharegpt``: ``{conversations: [{from: human|gpt|system, value}], system?}`` (lm-sys/FastChat).
- ``messages``: ``{messages: [{role, content}]}`` (the OpenAI / HF chat format).
- ``prompt_completion``: ``{prompt, completion}``.
- ``auto``: picked from the record's keys, in that order of precedence.
"""

from __future__ import annotations

from typing import Any, Callable

from rlhf.data.io import Row
from rlhf.errors import UserError

Message = dict[str, str]

FORMATS = ("alpaca", "sharegpt", "messages", "prompt_completion")

# FastChat's ShareGPT data uses several spellings for the same speaker.
SHAREGPT_ROLES = {
    "human": "user", "user": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bard": "assistant", "bing": "assistant",
    "system": "system",
}


def detect_format(row: Row) -> str:
    """The format whose marker key the record carries; UserError naming the keys if none does."""
    keys = row.data.keys()
    if "conversations" in keys:
        return "sharegpt"
    if "messages" in keys:
        return "messages"
    if "instruction" in keys:
        return "alpaca"
    if "prompt" in keys:
        return "prompt_completion"
    raise UserError(f"{row.where}: cannot tell the record format from its keys {sorted(keys)}; expected "
                    "'instruction' (alpaca), 'conversations' (sharegpt), 'messages' or 'prompt'/'completion'")


def to_messages(row: Row, fmt: str = "auto") -> list[Message]:
    """The full conversation of ``row`` (for SFT and reward data); it holds at least one assistant turn."""
    fmt = _pick_format(row, fmt)
    messages = _PARSERS[fmt](row, True)
    check_conversation(messages, row.where)
    if not any(m["role"] == "assistant" for m in messages):
        raise UserError(f"{row.where}: the conversation has no assistant turn")
    return messages


def to_prompt_messages(row: Row, fmt: str = "auto") -> list[Message]:
    """The conversation up to the turn the model should answer: it ends with a user turn.

    Alpaca records may omit ``output`` and prompt records ``completion``; chat records lose their
    trailing assistant turn (for PPO prompts and generation).
    """
    fmt = _pick_format(row, fmt)
    messages = _PARSERS[fmt](row, False)
    while messages and messages[-1]["role"] == "assistant":
        messages.pop()
    check_conversation(messages, row.where)
    if not messages or messages[-1]["role"] != "user":
        raise UserError(f"{row.where}: the conversation has no user turn to answer")
    return messages


def check_conversation(messages: list[Message], where: str) -> None:
    """UserError unless: optional system first, then user/assistant alternating from the user, all strings."""
    expected = "user"
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if not isinstance(content, str):
            raise UserError(f"{where}: message {i} 'content' must be a string, got {type(content).__name__}")
        if role == "system" and i == 0:
            continue
        if role != expected:
            raise UserError(f"{where}: message {i} has role {role!r}; expected {expected!r} "
                            "(optional system first, then user and assistant alternating)")
        expected = "assistant" if role == "user" else "user"


def _pick_format(row: Row, fmt: str) -> str:
    if not isinstance(row.data, dict):
        raise UserError(f"{row.where}: expected a JSON object, got {type(row.data).__name__}")
    if fmt == "auto":
        return detect_format(row)
    if fmt not in _PARSERS:
        raise UserError(f"unknown data format {fmt!r}; expected one of auto, {', '.join(FORMATS)}")
    return fmt


def _field(row: Row, key: str, required: bool, default: Any = None, kind: type = str) -> Any:
    """``row.data[key]`` checked for type; a missing required field names the row and the key."""
    if key not in row.data or row.data[key] is None:
        if required:
            raise UserError(f"{row.where}: missing field '{key}'")
        return default
    value = row.data[key]
    if not isinstance(value, kind):
        raise UserError(f"{row.where}: field '{key}' must be a {kind.__name__}, got {type(value).__name__}")
    return value


def _alpaca(row: Row, full: bool) -> list[Message]:
    instruction = _field(row, "instruction", True)
    extra = _field(row, "input", False, "")
    content = f"{instruction}\n\n{extra}" if extra else instruction
    messages: list[Message] = [{"role": "user", "content": content, "instruction": instruction, "input": extra}]
    output = _field(row, "output", full)
    if output is not None:
        messages.append({"role": "assistant", "content": output})
    return messages


def _sharegpt(row: Row, full: bool) -> list[Message]:
    turns = _field(row, "conversations", True, kind=list)
    messages: list[Message] = []
    system = _field(row, "system", False, "")
    if system:
        messages.append({"role": "system", "content": system})
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise UserError(f"{row.where}: conversations[{i}] must be an object, got {type(turn).__name__}")
        speaker, value = turn.get("from"), turn.get("value")
        if speaker not in SHAREGPT_ROLES:
            raise UserError(f"{row.where}: conversations[{i}] field 'from' is {speaker!r}; "
                            "expected human, gpt or system")
        if not isinstance(value, str):
            raise UserError(f"{row.where}: conversations[{i}] field 'value' must be a string")
        role = SHAREGPT_ROLES[speaker]
        # FastChat drops a leading non-human turn (train.py preprocess); we do the same.
        if role == "assistant" and not any(m["role"] == "user" for m in messages):
            continue
        messages.append({"role": role, "content": value})
    return messages


def _chat_messages(row: Row, full: bool) -> list[Message]:
    turns = _field(row, "messages", True, kind=list)
    messages: list[Message] = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or "role" not in turn or "content" not in turn:
            raise UserError(f"{row.where}: messages[{i}] must be an object with 'role' and 'content'")
        if turn["role"] not in ("system", "user", "assistant"):
            raise UserError(f"{row.where}: messages[{i}] field 'role' is {turn['role']!r}; "
                            "expected system, user or assistant")
        messages.append({"role": turn["role"], "content": turn["content"]})
    return messages


def _prompt_completion(row: Row, full: bool) -> list[Message]:
    messages: list[Message] = [{"role": "user", "content": _field(row, "prompt", True)}]
    completion = _field(row, "completion", full)
    if completion is not None:
        messages.append({"role": "assistant", "content": completion})
    return messages


_PARSERS: dict[str, Callable[[Row, bool], list[Message]]] = {
    "alpaca": _alpaca,
    "sharegpt": _sharegpt,
    "messages": _chat_messages,
    "prompt_completion": _prompt_completion,
}
