"""Mixing SFT data from several sources, with Koala's conditional-training markers.

Koala (Geng et al. 2023, "Koala: A Dialogue Model for Academic Research", BAIR blog; young-geng/EasyLM) trains on
human-feedback data without a reward model: each answer is prefixed with a marker saying whether it was preferred,
"a helpful answer" or "an unhelpful answer", and at inference the positive marker is written into the prompt so
the model continues a helpful answer. Data with no feedback (distillation, ShareGPT, Alpaca) gets the positive one.

Where the marker goes: it is the first words of the final assistant turn, ``"<marker>: <answer>"``
(:func:`apply_marker`). An SFT template renders that turn as usual (the marker is part of the trained tokens); a
generation template ends the prompt with the assistant header followed by :func:`marker_prefix` and, on the
output, :func:`strip_marker` removes a marker the model repeated. Earlier assistant turns are history and stay
unmarked, as the model's own earlier replies are at generation time.

Rows are read with :func:`rlhf.data.io.read_rows` (.json, .jsonl, optionally .gz, .parquet) in these formats
(``Source.fmt``): ``alpaca``, ``sharegpt``, ``messages``, ``prompt_completion`` (converted by
:func:`rlhf.data.formats.to_messages`); ``preference`` {prompt, chosen, rejected}, where each of them is a string or a
list of {role, content}; ``hh`` Anthropic HH-RLHF {chosen, rejected} transcripts
("\\n\\nHuman: ...\\n\\nAssistant: ..."); ``auto`` picks one per row from its keys.
Output rows: ``{"messages": [{role, content}], "source": str, "feedback": "positive"|"negative"|"none"}``.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

from rlhf.data.formats import check_conversation, to_messages
from rlhf.data.io import Row, read_rows
from rlhf.errors import UserError

POSITIVE_MARKER = "a helpful answer"
NEGATIVE_MARKER = "an unhelpful answer"
FORMATS = ("alpaca", "sharegpt", "messages", "prompt_completion", "preference", "hh", "auto")
KINDS = ("sft", "preference")
_HH_TURN = re.compile(r"\n\n(Human|Assistant): ")

Messages = list[dict]


@dataclass(frozen=True)
class Markers:
    """The conditional-training markers; ``None`` in place of a Markers disables them."""

    positive: str = POSITIVE_MARKER
    negative: str = NEGATIVE_MARKER


@dataclass(frozen=True)
class Source:
    """One data file in the mix.

    ``weight``: with ``mix_sources(total=N)``, the share of N drawn from this source (shares are weights over
    their sum); with ``total=None``, a multiplier on the source's size (1.0 every row once, 0.5 half, 2.0 twice).
    ``kind="preference"`` turns each preference row into two SFT rows, chosen with the positive marker and
    rejected with the negative one; ``kind="sft"`` keeps only the chosen answer of a preference row.
    """

    path: str | Path
    fmt: str = "auto"
    weight: float = 1.0
    kind: str = "sft"
    config: str | None = None  # hub dataset config and split, as read_rows takes them
    split: str | None = None

    def __post_init__(self) -> None:
        if self.fmt not in FORMATS:
            raise UserError(f"{self.path}: unknown format '{self.fmt}' (one of {', '.join(FORMATS)})")
        if self.kind not in KINDS:
            raise UserError(f"{self.path}: unknown kind '{self.kind}' (sft or preference)")
        if not self.weight >= 0:
            raise UserError(f"{self.path}: weight must be >= 0, got {self.weight}")


def marker_prefix(marker: str) -> str:
    """The text an assistant turn starts with under ``marker``."""
    return f"{marker}: "


def apply_marker(messages: Messages, marker: str) -> Messages:
    """A copy of ``messages`` whose final assistant turn starts with ``"<marker>: "`` (once, not stacked)."""
    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        raise ValueError("no assistant turn to mark")
    content = strip_marker(messages[last]["content"], marker)
    return [*messages[:last], {**messages[last], "content": marker_prefix(marker) + content}, *messages[last + 1 :]]


def strip_marker(text: str, marker: str) -> str:
    """``text`` without a leading ``"<marker>:"`` (and the whitespace after it); unchanged when it has none."""
    stripped = text.lstrip()
    if stripped.startswith(marker + ":"):
        return stripped[len(marker) + 1 :].lstrip()
    return text


def detect_format(data: dict) -> str:
    """"preference" or "hh" for rows with chosen/rejected, else "auto" (left to :mod:`rlhf.data.formats`)."""
    if "chosen" in data and "rejected" in data:
        return "preference" if "prompt" in data else "hh"
    return "auto"


def _as_messages(value: object, default_role: str, where: str) -> Messages:
    """A string as one message of ``default_role``; a list of {role, content} checked and copied."""
    if isinstance(value, str):
        return [{"role": default_role, "content": value}]
    if isinstance(value, list) and all(
        isinstance(m, dict) and m.get("role") in ("system", "user", "assistant") and isinstance(m.get("content"), str)
        for m in value
    ):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise UserError(f"{where}: expected a string or a list of {{role, content}} messages")


def parse_hh_transcript(transcript: object, where: str) -> Messages:
    """HH-RLHF's ``"\\n\\nHuman: ...\\n\\nAssistant: ..."`` text as messages.

    A few HH transcripts hold two Assistant (or Human) turns in a row; they are joined with a blank line, so the
    result alternates as chat templates need.
    """
    pieces = _HH_TURN.split(transcript) if isinstance(transcript, str) else [""]
    if pieces[0].strip() or len(pieces) < 3:
        raise UserError(f"{where}: not a '\\n\\nHuman: ... \\n\\nAssistant: ...' transcript")
    roles = {"Human": "user", "Assistant": "assistant"}
    messages: Messages = []
    for speaker, content in zip(pieces[1::2], pieces[2::2]):
        role, content = roles[speaker], content.strip()
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] += "\n\n" + content
        else:
            messages.append({"role": role, "content": content})
    return messages


def _preference_pair(row: Row, fmt: str) -> tuple[Messages, Messages]:
    """(chosen, rejected) full conversations of a preference or HH row."""
    data, where = row.data, row.where
    if fmt == "hh":
        return parse_hh_transcript(data.get("chosen"), where), parse_hh_transcript(data.get("rejected"), where)
    prompt = _as_messages(data.get("prompt"), "user", where)
    chosen = prompt + _as_messages(data.get("chosen"), "assistant", where)
    rejected = prompt + _as_messages(data.get("rejected"), "assistant", where)
    return chosen, rejected


def row_to_conversations(row: Row, fmt: str) -> list[tuple[Messages, str]]:
    """``[(messages, feedback)]`` for one row: one ("none") for SFT formats, chosen ("positive") and rejected
    ("negative") for preference formats. Bad rows raise UserError naming ``row.where``."""
    if fmt == "auto":
        fmt = detect_format(row.data)
    if fmt in ("preference", "hh"):
        chosen, rejected = _preference_pair(row, fmt)
        pairs = [(chosen, "positive"), (rejected, "negative")]
        for messages, _ in pairs:
            check_conversation(messages, row.where)
    else:
        messages = to_messages(row, fmt)
        # A trailing unanswered user turn has nothing to train on (FastChat drops it too); the marker goes on
        # the last answer.
        while messages[-1]["role"] != "assistant":
            messages.pop()
        pairs = [(messages, "none")]
    return pairs


def to_sft_rows(row: Row, source: Source, markers: Markers | None) -> list[dict]:
    """The SFT rows for one source row (see :class:`Source` for how ``kind`` treats preference rows)."""
    conversations = row_to_conversations(row, source.fmt)
    if source.kind == "sft":
        conversations = conversations[:1]
    out = []
    for messages, feedback in conversations:
        if markers is not None:
            messages = apply_marker(messages, markers.negative if feedback == "negative" else markers.positive)
        out.append({"messages": messages, "source": str(source.path), "feedback": feedback})
    return out


def _draw_counts(sizes: list[int], weights: list[float], total: int | None) -> list[int]:
    """How many rows to draw from each source; largest-remainder rounding so the counts sum to ``total``."""
    if total is None:
        return [round(w * n) for w, n in zip(weights, sizes)]
    weight_sum = sum(w for w, n in zip(weights, sizes) if n > 0)
    if weight_sum <= 0:
        raise UserError("mix: every source is empty or has weight 0")
    exact = [total * w / weight_sum if n > 0 else 0.0 for w, n in zip(weights, sizes)]
    counts = [int(x) for x in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in by_remainder[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _draw(rows: list, count: int, rng: random.Random) -> list:
    """``count`` rows: whole passes over the shuffled rows, then a sample without replacement for the rest."""
    passes, rest = divmod(count, len(rows)) if rows else (0, 0)
    return [row for _ in range(passes) for row in rng.sample(rows, len(rows))] + rng.sample(rows, rest)


def mix_sources(
    sources: list[Source], total: int | None = None, seed: int = 0, markers: Markers | None = Markers()
) -> list[dict]:
    """Weighted mix of the sources' rows as SFT rows, shuffled with ``seed``.

    ``total`` counts rows drawn from the sources; a preference source's row becomes two SFT rows afterwards, so the
    result can be longer. Markers are applied per :class:`Markers` (``None``: no markers).
    """
    if total is not None and total < 0:
        raise UserError(f"mix: total must be >= 0, got {total}")
    rng = random.Random(seed)
    loaded = [read_rows(str(s.path), s.split, s.config) for s in sources]
    counts = _draw_counts([len(rows) for rows in loaded], [s.weight for s in sources], total)
    mixed = []
    for source, rows, count in zip(sources, loaded, counts):
        for row in _draw(rows, count, rng):
            mixed.extend(to_sft_rows(row, source, markers))
    rng.shuffle(mixed)
    return mixed
