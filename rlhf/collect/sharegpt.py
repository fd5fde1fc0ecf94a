"""Cleaning ShareGPT conversations for Vicuna-style SFT.

Follows FastChat (lm-sys/FastChat, ``fastchat/data/clean_sharegpt.py``, ``split_long_conversation.py``,
``optional_clean.py``): HTML to markdown, trim a leading assistant turn and a trailing user turn, drop conversations
whose roles do not alternate or that are too short, dedupe by id and by first exchange, optionally keep one
language, and split long conversations at turn boundaries.

A conversation is ``{"id": str, "conversations": [{"from": "human"|"gpt", "value": str}], "system"?: str}``.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable

import markdownify

HUMAN, GPT = "human", "gpt"
# Other names seen in ShareGPT dumps and chat datasets for the same two roles.
ROLE_ALIASES = {"human": HUMAN, "user": HUMAN, "gpt": GPT, "assistant": GPT, "chatgpt": GPT, "bard": GPT, "bing": GPT}
# FastChat's clean_sharegpt drops conversations mentioning these (identity confusion); off unless asked for.
FASTCHAT_BLOCKED_WORDS = ("openai", "chatgpt")

TokenCounter = Callable[[str], int]

_OPEN_DIV_OR_SPAN = re.compile(r"<(?:div|span)\b[^>]*>")
_CLOSING_HTML_TAG = re.compile(
    r"</(?:div|p|span|pre|code|ol|ul|li|h[1-6]|table|thead|tbody|tr|td|th|strong|em|b|i|a|blockquote)\s*>",
    re.IGNORECASE,
)
# ChatGPT's HTML puts the language name and a "Copy code" button before the code inside <pre>.
_CODE_HEADER = re.compile(r"```\s*(.*?)(?:Copy code)+(.+?)\s*?```", re.DOTALL)
_REGENERATE_COUNTER = re.compile(r"^\d+ / \d+")
_COPY_CHARS = re.compile(r"Copy\d+ chars / \d+ words")
_EMPTY_CODE_BLOCK = re.compile(r"```(.*?)Copy code\s*```")


def detect_language(text: str) -> str:
    """The ISO 639-1 code of the text's language ("en", "fr", "zh", "ja", ...), for ``clean_conversations(lang=...)``;
    "unknown" when the text has no letters.

    py3langid (a maintained fork of langid.py: a naive Bayes model over byte n-grams, 97 languages, shipped inside
    the package, so nothing is downloaded at run time). Mixed text goes by its majority, so a Chinese question with
    a long English code answer may come out "en", as with FastChat's polyglot/cld2 filter.
    """
    if not re.search(r"[^\W\d_]", text):
        return "unknown"
    import py3langid

    return py3langid.classify(text)[0]


def looks_like_html(text: str) -> bool:
    """True when ``text`` has a closing tag of a common HTML element.

    A closing tag, not any ``<...>``: plain text such as ``if a<b and c>d`` or C++ templates must not be run
    through markdownify, which would reflow it.
    """
    return _CLOSING_HTML_TAG.search(text) is not None


def html_to_markdown(text: str) -> str:
    """ShareGPT's scraped HTML as markdown, code blocks kept as fenced blocks with their language (FastChat).

    Text without HTML is returned stripped but otherwise unchanged. Underscores and asterisks are not escaped:
    the result is training text, not markdown to render.
    """
    if not looks_like_html(text):
        return text.strip()
    # Opening div/span tags go first: inside <pre> they break markdownify's code indentation (FastChat).
    text = _OPEN_DIV_OR_SPAN.sub("", text)
    text = markdownify.markdownify(text, escape_underscores=False, escape_asterisks=False, heading_style="ATX")
    text = _CODE_HEADER.sub(r"```\g<1>\n\g<2>\n```", text.strip())
    text = _REGENERATE_COUNTER.sub("", text)
    text = _COPY_CHARS.sub("", text)
    text = _EMPTY_CODE_BLOCK.sub("", text)
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def normalize_turns(conv: object) -> dict | None:
    """The conversation with roles mapped to human/gpt and a leading system turn moved to ``system``.

    None when it is not a dict with a string id and a list of ``{from, value}`` turns with known roles.
    """
    if not isinstance(conv, dict) or not isinstance(conv.get("conversations"), list):
        return None
    if not isinstance(conv.get("id"), (str, int)):
        return None
    turns = list(conv["conversations"])
    system = conv.get("system")
    if turns and isinstance(turns[0], dict) and turns[0].get("from") == "system":
        system = turns.pop(0).get("value")
    normalized = []
    for turn in turns:
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            return None
        role = ROLE_ALIASES.get(str(turn.get("from", "")).lower())
        if role is None:
            return None
        normalized.append({"from": role, "value": turn["value"]})
    result = {k: v for k, v in conv.items() if k not in ("conversations", "system")}
    result["id"] = str(conv["id"])
    if isinstance(system, str) and system.strip():
        result["system"] = system
    result["conversations"] = normalized
    return result


def trim_leading_assistant(turns: list[dict]) -> list[dict]:
    """Drop assistant turns before the first user turn (a share that starts mid-conversation)."""
    start = 0
    while start < len(turns) and turns[start]["from"] != HUMAN:
        start += 1
    return turns[start:]


def trim_trailing_user(turns: list[dict]) -> list[dict]:
    """Drop a final user turn that got no answer: there is nothing to train on after it."""
    return turns[:-1] if turns and turns[-1]["from"] == HUMAN else turns


def truncate_at_empty_turn(turns: list[dict]) -> list[dict]:
    """The turns before the first empty (or non-printable-first) one, FastChat's rule for cut-off shares."""
    for index, turn in enumerate(turns):
        value = turn["value"]
        if not value or not value[0].isprintable():
            return turns[:index]
    return turns


def roles_alternate(turns: list[dict]) -> bool:
    """True when the turns go human, gpt, human, gpt, ..."""
    return all(turn["from"] == (HUMAN if i % 2 == 0 else GPT) for i, turn in enumerate(turns))


def contains_blocked_word(turns: list[dict], blocked_words: Iterable[str]) -> bool:
    words = [w.lower() for w in blocked_words]
    return any(w in turn["value"].lower() for turn in turns for w in words)


def token_counter(tokenizer: object) -> TokenCounter:
    """A ``str -> number of tokens`` function from a HF tokenizer, anything with ``.encode(str)``, or a callable
    that already returns a count. HF tokenizers count without special tokens."""
    if hasattr(tokenizer, "encode"):
        if hasattr(tokenizer, "add_special_tokens"):  # transformers PreTrainedTokenizerBase
            return lambda text: len(tokenizer.encode(text, add_special_tokens=False))
        return lambda text: len(tokenizer.encode(text))
    if callable(tokenizer):
        return tokenizer
    raise TypeError(f"cannot count tokens with {type(tokenizer).__name__}")


def split_long_conversation(
    conv: dict, count_tokens: TokenCounter, max_length: int, turn_overhead: int = 6
) -> tuple[list[dict], int]:
    """Chunks of at most ``max_length`` tokens, cut between exchanges, and the number of exchanges dropped.

    An exchange is a human turn and its gpt answer (the turns must alternate and be of even count); its length is
    the tokens of both values plus ``turn_overhead`` per turn for the chat template (FastChat uses 6). Chunks are
    filled greedily in order, as FastChat's ``split_long_conversation``; an exchange longer than ``max_length`` on
    its own cannot fit anywhere and is dropped. A conversation that fits is returned whole with its id; the chunks
    of a split one get ids ``<id>_0, <id>_1, ...`` and each keeps the ``system`` prompt.
    """
    turns = conv["conversations"]
    exchanges = [turns[i : i + 2] for i in range(0, len(turns) - 1, 2)]
    lengths = [sum(count_tokens(t["value"]) + turn_overhead for t in ex) for ex in exchanges]
    chunks: list[list[dict]] = []
    current: list[dict] = []
    current_length = dropped = 0
    for exchange, length in zip(exchanges, lengths):
        if length > max_length:
            dropped += 1
            continue
        if current and current_length + length > max_length:
            chunks.append(current)
            current, current_length = [], 0
        current = current + exchange
        current_length += length
    if current:
        chunks.append(current)
    if len(chunks) == 1 and dropped == 0:
        return [conv], 0
    return [{**conv, "id": f"{conv['id']}_{i}", "conversations": chunk} for i, chunk in enumerate(chunks)], dropped


def _clean_one(
    conv: object, min_chars: int, blocked_words: Iterable[str], lang: str | None, changes: list[str]
) -> dict | str:
    """The cleaned conversation, or the name of the rule that drops it. Names of trims go to ``changes``."""
    conv = normalize_turns(conv)
    if conv is None:
        return "malformed"
    turns = trim_leading_assistant(conv["conversations"])
    if len(turns) != len(conv["conversations"]):
        changes.append("trimmed_leading_assistant")
    if len(turns) < 2:
        return "too_short"
    if contains_blocked_word(turns, blocked_words):
        return "blocked_word"
    converted = [{"from": t["from"], "value": html_to_markdown(t["value"])} for t in turns]
    turns = truncate_at_empty_turn(converted)
    if len(turns) != len(converted):
        changes.append("truncated_at_empty_turn")
    if len(turns) < 2:
        return "empty"
    if not roles_alternate(turns):
        return "roles_not_alternating"
    trimmed = trim_trailing_user(turns)
    if len(trimmed) != len(turns):
        changes.append("trimmed_trailing_user")
    if sum(len(t["value"]) for t in trimmed) < min_chars:
        return "too_short"
    if lang is not None and detect_language("\n".join(t["value"] for t in trimmed)) != lang:
        return "language"
    return {**conv, "conversations": trimmed}


def clean_conversations(
    convs: Iterable[object],
    tokenizer: object,
    max_length: int,
    lang: str | None = None,
    *,
    min_chars: int = 16,
    blocked_words: Iterable[str] = (),
    turn_overhead: int = 6,
) -> tuple[list[dict], Counter[str]]:
    """Clean ShareGPT conversations; returns the kept (and split) conversations and a Counter per rule.

    Counter keys for dropped conversations: ``malformed`` (not ``{id, conversations: [{from, value}]}`` with known
    roles), ``too_short`` (fewer than one exchange, or under ``min_chars`` characters in all, FastChat's 16),
    ``empty`` (an empty turn cut it below one exchange), ``blocked_word`` (see :data:`FASTCHAT_BLOCKED_WORDS`),
    ``roles_not_alternating``, ``language`` (``lang`` given and :func:`detect_language` disagrees),
    ``duplicate_id``, ``duplicate_first_exchange``, ``too_long`` (every exchange over ``max_length`` tokens).
    Keys for kept but changed ones: ``trimmed_leading_assistant``, ``trimmed_trailing_user``,
    ``truncated_at_empty_turn``, ``split`` (cut into chunks with suffixed ids, see :func:`split_long_conversation`).
    ``dropped_long_exchanges`` counts exchanges, not conversations: those over ``max_length`` on their own.
    Tokens are counted with ``tokenizer`` (see :func:`token_counter`).
    """
    count_tokens = token_counter(tokenizer)
    stats: Counter[str] = Counter()
    seen_ids: set[str] = set()
    seen_first_exchanges: set[tuple[str, str]] = set()
    kept: list[dict] = []
    for raw in convs:
        changes: list[str] = []
        result = _clean_one(raw, min_chars, blocked_words, lang, changes)
        if isinstance(result, str):
            stats[result] += 1
            continue
        first_exchange = (result["conversations"][0]["value"], result["conversations"][1]["value"])
        if result["id"] in seen_ids:
            stats["duplicate_id"] += 1
            continue
        seen_ids.add(result["id"])
        if first_exchange in seen_first_exchanges:
            stats["duplicate_first_exchange"] += 1
            continue
        seen_first_exchanges.add(first_exchange)
        chunks, dropped_exchanges = split_long_conversation(result, count_tokens, max_length, turn_overhead)
        stats["dropped_long_exchanges"] += dropped_exchanges
        if not chunks:
            stats["too_long"] += 1
            continue
        if chunks[0] is not result:
            stats["split"] += 1
        stats.update(changes)
        kept.extend(chunks)
    return kept, +stats
