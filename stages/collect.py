"""Collect stage: write the datasets the training stages read, in one of four modes.

    rlhf stage collect --config configs/collect/tiny-self-instruct.yaml --out runs/collect [key.sub=value ...]

``mode`` picks the section that configures the run (the other sections must be absent):

- ``self_instruct`` (Alpaca): a teacher writes new tasks from seed tasks; filtered; ``OUT/data.json`` (Alpaca
  JSON) and ``OUT/dropped.jsonl`` (each dropped instruction and why). :mod:`rlhf.collect.self_instruct`.
- ``sharegpt`` (Vicuna): clean and split ShareGPT conversations; ``OUT/data.json`` (ShareGPT JSON).
  :mod:`rlhf.collect.sharegpt`.
- ``mix`` (Koala): weighted mix of sources with conditional-training markers; ``OUT/data.jsonl`` rows
  ``{messages, source, feedback}`` for SFT with ``format: messages``. :mod:`rlhf.collect.mix`.
- ``preferences`` (RLHF): sample K responses per prompt and judge them, or read people's labels;
  ``OUT/preferences.jsonl`` ``{prompt, chosen, rejected}`` for the RM stage. :mod:`rlhf.collect.preferences`.

validate (typed config) -> run the mode -> save (outputs written atomically, then manifest.json "complete"
last, with counts per rule and records written in its metrics). A run that stops early (an error, Ctrl-C, a
kill) leaves the manifest "running" or "failed", never "complete".
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from rlhf.collect.mix import FORMATS as MIX_FORMATS
from rlhf.collect.mix import KINDS as MIX_KINDS
from rlhf.collect.mix import NEGATIVE_MARKER, POSITIVE_MARKER, Markers, Source, mix_sources
from rlhf.collect.preferences import PreferencesSection, collect_preferences
from rlhf.collect.self_instruct import SelfInstructSection, generate_instructions
from rlhf.collect.sharegpt import clean_conversations
from rlhf.collect.teachers import build_teacher
from rlhf.config import Section
from rlhf.data.io import write_jsonl
from rlhf.sections import SourceSection, read_source
from rlhf.manifest import StageRun, write_json_atomic
from rlhf.models.tokenizer import EMBEDDED_TOKENIZER

MODES = ("self_instruct", "sharegpt", "mix", "preferences")


class ShareGPTSection(SourceSection):
    path: str = Field(..., description="ShareGPT conversations: .json list or .jsonl of {id, conversations}")
    tokenizer: str = Field(EMBEDDED_TOKENIZER, description="tokenizer that measures length: path, hub id, embedded:*")
    max_length: int = Field(2048, gt=0, description="tokens per chunk; longer conversations split at turns")
    lang: str | None = Field(None, description="keep only this language: ISO 639-1 code (en, zh, fr...), by py3langid")
    min_chars: int = Field(16, ge=0, description="drop conversations with fewer characters in all (FastChat: 16)")
    blocked_words: list[str] = Field(default_factory=list, description="drop conversations with these words")
    turn_overhead: int = Field(6, ge=0, description="template tokens counted per turn when splitting")


class MixSourceSection(SourceSection):
    format: Literal[MIX_FORMATS] = Field("auto", description="record format (preference and hh for feedback data)")  # type: ignore[valid-type]
    weight: float = Field(1.0, ge=0, description="share of `total` (or a multiplier on the size when total unset)")
    kind: Literal[MIX_KINDS] = Field("sft", description="preference: chosen and rejected both kept, with markers")  # type: ignore[valid-type]


class MixSection(Section):
    sources: list[MixSourceSection] = Field(..., min_length=1, description="the data files to mix")
    total: int | None = Field(None, ge=0, description="rows drawn in all; unset: each source times its weight")
    markers: bool = Field(True, description="prefix answers with Koala's conditional-training markers")
    positive_marker: str = Field(POSITIVE_MARKER, description="marker of preferred and no-feedback answers")
    negative_marker: str = Field(NEGATIVE_MARKER, description="marker of rejected answers")
    seed: int = Field(0, description="seed for drawing and shuffling")


class Config(Section):
    """Data collection."""

    mode: Literal["self_instruct", "sharegpt", "mix", "preferences"] = Field(..., description="what to collect")
    self_instruct: SelfInstructSection | None = Field(None, description="mode self_instruct: teacher-written tasks")
    sharegpt: ShareGPTSection | None = Field(None, description="mode sharegpt: cleaned ShareGPT conversations")
    mix: MixSection | None = Field(None, description="mode mix: Koala-style weighted mix with markers")
    preferences: PreferencesSection | None = Field(None, description="mode preferences: judged response pairs")

    @model_validator(mode="after")
    def _one_section_for_the_mode(self):
        if getattr(self, self.mode) is None:
            raise ValueError(f"mode '{self.mode}' needs a '{self.mode}:' section")
        others = [m for m in MODES if m != self.mode and getattr(self, m) is not None]
        if others:
            raise ValueError(f"mode '{self.mode}' does not use the '{others[0]}:' section; remove it")
        return self


def _json_list(path: Path, rows: list[dict]) -> None:
    write_json_atomic(path, rows)


def _run_self_instruct(section: SelfInstructSection, out: Path) -> tuple[dict, dict]:
    teacher = build_teacher(section.teacher)
    try:
        result = generate_instructions(section, teacher)
        teacher_stats = teacher.stats()
    finally:
        teacher.close()
    _json_list(out / "data.json", result.records)
    write_jsonl(out / "dropped.jsonl", result.dropped)
    metrics = {
        "records": len(result.records), "target": section.num_instructions,
        "target_reached": len(result.records) >= section.num_instructions, "rounds": result.rounds,
        "parsed_instructions": result.generated, "drops": dict(sorted(result.drops.items())),
        "teacher": {"kind": section.teacher.kind, **teacher_stats},
    }
    return metrics, {"data": out / "data.json", "dropped": out / "dropped.jsonl"}


def _load_length_tokenizer(name: str):
    from rlhf.models.loading import resolve_model_path
    from rlhf.models.tokenizer import load_tokenizer
    from rlhf.models.tiny import is_embedded
    from rlhf.paths import resolve_path

    if name == EMBEDDED_TOKENIZER:
        return load_tokenizer(name)
    if is_embedded(name):
        return load_tokenizer(resolve_model_path(name))
    local = resolve_path(name)
    return load_tokenizer(str(local) if local.exists() else name)


def _run_sharegpt(section: ShareGPTSection, out: Path) -> tuple[dict, dict]:
    rows = read_source(section)
    kept, stats = clean_conversations(
        [row.data for row in rows], _load_length_tokenizer(section.tokenizer), section.max_length, section.lang,
        min_chars=section.min_chars, blocked_words=section.blocked_words, turn_overhead=section.turn_overhead,
    )
    _json_list(out / "data.json", kept)
    metrics = {"conversations_in": len(rows), "records": len(kept), "rules": dict(sorted(stats.items()))}
    return metrics, {"data": out / "data.json"}


def _run_mix(section: MixSection, out: Path) -> tuple[dict, dict]:
    sources = [Source(s.path, s.format, s.weight, s.kind, s.config, s.split) for s in section.sources]
    markers = Markers(section.positive_marker, section.negative_marker) if section.markers else None
    rows = mix_sources(sources, section.total, section.seed, markers)
    write_jsonl(out / "data.jsonl", rows)
    metrics = {
        "records": len(rows),
        "per_source": dict(Counter(r["source"] for r in rows)),
        "per_feedback": dict(Counter(r["feedback"] for r in rows)),
        "markers": [section.positive_marker, section.negative_marker] if section.markers else None,
    }
    return metrics, {"data": out / "data.jsonl"}


def _run_preferences(section: PreferencesSection, out: Path) -> tuple[dict, dict]:
    result = collect_preferences(section)
    write_jsonl(out / "preferences.jsonl", result.records)
    outputs = {"preferences": out / "preferences.jsonl"}
    if section.judge.kind != "labels":
        write_jsonl(out / "samples.jsonl", result.samples)
        write_jsonl(out / "to_label.jsonl", result.to_label)
        outputs |= {"samples": out / "samples.jsonl", "to_label": out / "to_label.jsonl"}
    metrics = {
        "prompts": result.prompts, "prompts_truncated": result.prompts_truncated, "records": len(result.records),
        "drops": dict(sorted(result.drops.items())),
        "judge": {"kind": section.judge.kind, **result.judge_stats},
    }
    return metrics, outputs


RUNNERS = {"self_instruct": _run_self_instruct, "sharegpt": _run_sharegpt, "mix": _run_mix,
           "preferences": _run_preferences}


def _inputs(cfg: Config) -> dict[str, str]:
    section = getattr(cfg, cfg.mode)
    if cfg.mode == "self_instruct":
        return {"seed_tasks": section.seed_tasks}
    if cfg.mode == "sharegpt":
        return {"data": section.path}
    if cfg.mode == "mix":
        return {f"source_{i}": s.path for i, s in enumerate(section.sources)}
    return {"prompts": section.prompts and section.prompts.path, "labels": section.judge.path if section.judge.kind == "labels" else None}


def run(cfg: Config, out: str | Path) -> dict:
    from rlhf.paths import resolve_path

    out = Path(out)
    if cfg.mode == "preferences" and cfg.preferences.judge.kind == "rm":  # before the policy's actors start
        from rlhf.reward.model import check_reward_model

        check_reward_model(cfg.preferences.judge.path)
    inputs = {k: str(resolve_path(v)) for k, v in _inputs(cfg).items() if v and resolve_path(v).exists()}
    with StageRun("collect", out, cfg, inputs=inputs) as stage:
        metrics, outputs = RUNNERS[cfg.mode](getattr(cfg, cfg.mode), out)
        return stage.complete({"mode": cfg.mode, **metrics}, outputs=outputs)
