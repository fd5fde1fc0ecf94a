"""Preference collection: sample K responses per prompt from a policy, have a judge pick (chosen, rejected).

The InstructGPT recipe (Ouyang et al. 2022, arXiv:2203.02155, Sec. 3.5) and AlpacaFarm's pairwise one
(arXiv:2305.14387): prompts are answered K times by the policy (batched :func:`rlhf.sampling.generate` in
Ray actors, :class:`rlhf.collect.teachers.GenerationPool`), then a judge (:mod:`rlhf.collect.judges`) labels
them. With ``judge.kind: labels`` nothing is sampled: the pairs are comparisons people labeled, read from a file.

Output records: ``{"prompt": [{role, content}], "chosen": str, "rejected": str}`` (what the RM stage reads,
:mod:`rlhf.data.preferences` format ``pairs``), plus the prompt row's other fields (e.g. ``instruction``,
``input``, the task world's ``task``). Also written: every sample (``samples.jsonl``) and, for people to label,
the first two distinct responses per prompt as AlpacaFarm-style comparisons (``to_label.jsonl``: the prompt
row's fields, ``output_1``, ``output_2``, ``preference: null``), which ``judge.kind: labels`` reads back once
``preference`` is filled in (1 or 2; 0 = tie).

Drops (counted per prompt): ``identical_responses`` (fewer than two distinct responses), the judge's reasons,
and for labels ``tie`` (preference 0) and ``unlabeled`` (preference null).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field, model_validator

from rlhf.collect.judges import JudgeSection, build_judge
from rlhf.collect.teachers import ActorsSection, GenerationPool, decode
from rlhf.config import Section
from rlhf.data.formats import to_prompt_messages
from rlhf.data.io import Row, read_rows
from rlhf.sections import Source, read_source
from rlhf.errors import UserError
from rlhf.sampling.config import SamplingParams

# Fields of a prompt row that make up the prompt itself (not carried over as extra fields).
PROMPT_KEYS = ("prompt", "messages", "conversations", "system", "output", "completion", "chosen", "rejected")
LABEL_KEYS = ("output_1", "output_2", "preference")


class PolicySection(Section):
    path: str = Field("embedded:tiny-llama", description="HF model id, local HF dir, or embedded:<name>")
    tokenizer: str | None = Field(None, description="tokenizer path or id; default: the model's own")
    template: Literal["alpaca", "vicuna", "koala", "chat"] = Field("alpaca", description="prompt template")


class SamplingSection(Section):
    temperature: float = Field(1.0, ge=0, description="sampling temperature (0 = greedy: all K alike)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass")
    max_new_tokens: int = Field(64, ge=1, description="tokens per response")


class PreferencesSection(Section):
    prompts: Source | None = Field(
        None, description="prompt rows (alpaca, sharegpt, messages or prompt records): a path or {path, config, split}")
    format: Literal["auto", "alpaca", "sharegpt", "messages", "prompt_completion"] = Field(
        "auto", description="prompt record format; auto detects by keys"
    )
    limit: int | None = Field(None, ge=1, description="use only the first N prompts")
    policy: PolicySection | None = Field(None, description="the model whose responses are compared")
    responses_per_prompt: int = Field(2, ge=2, description="K responses sampled per prompt")
    sampling: SamplingSection = Field(default_factory=SamplingSection, description="how responses are sampled")
    actors: ActorsSection = Field(default_factory=ActorsSection, description="Ray actors sampling the policy")
    judge: JudgeSection = Field(..., description="who picks chosen and rejected")
    seed: int = Field(0, description="sampling seed")

    @model_validator(mode="after")
    def _sampling_needs_prompts_and_policy(self):
        if self.judge.kind != "labels" and (self.prompts is None or self.policy is None):
            raise ValueError(f"judge kind '{self.judge.kind}' judges sampled responses: set 'prompts' and 'policy'")
        return self


@dataclass
class PreferenceResult:
    records: list[dict]
    drops: Counter[str]
    samples: list[dict] = field(default_factory=list)
    to_label: list[dict] = field(default_factory=list)
    judge_stats: dict = field(default_factory=dict)
    prompts: int = 0
    prompts_truncated: int = 0  # prompts cut to the policy's context (tail kept) before sampling


def _plain(messages: list[dict]) -> list[dict]:
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _extras(data: dict, exclude: tuple[str, ...] = ()) -> dict:
    return {k: v for k, v in data.items() if k not in PROMPT_KEYS + exclude}


def sample_responses(section: PreferencesSection, prompts: list[list[dict]]) -> tuple[list[list[str]], int]:
    """(K decoded responses per prompt sampled in the Ray actor pool, prompt samples cut to the context)."""
    from rlhf.data.templates import encode_prompt
    from rlhf.models.loading import resolve_model_path
    from rlhf.models.tokenizer import load_tokenizer

    policy, k = section.policy, section.responses_per_prompt
    model_path = resolve_model_path(policy.path, policy.tokenizer)
    tokenizer = load_tokenizer(policy.tokenizer or model_path)
    ids = [encode_prompt(p, policy.template, tokenizer) for p in prompts]
    s = section.sampling
    params = SamplingParams(s.temperature, s.top_p, s.max_new_tokens, s.temperature > 0)
    pool = GenerationPool(model_path, tokenizer.eos_token_id, tokenizer.pad_token_id, section.actors)
    try:
        responses = pool.generate([p for p in ids for _ in range(k)], params, section.seed)
    finally:
        pool.close()
    texts = [decode(tokenizer, r) for r in responses]
    return [texts[i * k:(i + 1) * k] for i in range(len(prompts))], pool.truncated // k


def judge_samples(section: PreferencesSection, rows: list[Row]) -> PreferenceResult:
    prompts = [to_prompt_messages(row, section.format) for row in rows]
    responses, truncated = sample_responses(section, prompts)
    result = PreferenceResult(records=[], drops=Counter(), prompts=len(rows), prompts_truncated=truncated)
    judged = []
    for row, prompt, rs in zip(rows, prompts, responses):
        result.samples.append({"prompt": _plain(prompt), "responses": rs, **_extras(row.data)})
        distinct = list(dict.fromkeys(rs))
        if len(distinct) < 2:
            result.drops["identical_responses"] += 1
            continue
        result.to_label.append({**row.data, "output_1": distinct[0], "output_2": distinct[1], "preference": None})
        judged.append((row, prompt, rs))
    judge = build_judge(section.judge)
    try:
        pairs = judge.judge([r.data for r, _, _ in judged], [p for _, p, _ in judged], [rs for _, _, rs in judged])
        result.drops.update(judge.drops)
        result.judge_stats = judge.stats()
    finally:
        judge.close()
    for (row, prompt, _), pair in zip(judged, pairs):
        if pair is not None:
            result.records.append({"prompt": _plain(prompt), "chosen": pair[0], "rejected": pair[1],
                                   **_extras(row.data)})
    return result


def read_labels(section: PreferencesSection) -> PreferenceResult:
    """Comparisons labeled by people: rows with the prompt's fields, ``output_1``, ``output_2`` and ``preference``
    (1 or 2 for the better output, 0 for a tie, null for not yet labeled), AlpacaFarm's human-preference layout."""
    rows = read_rows(section.judge.path, section.judge.split, section.judge.config)[: section.limit]
    result = PreferenceResult(records=[], drops=Counter(), prompts=len(rows))
    for row in rows:
        data = row.data
        for key in ("output_1", "output_2"):
            if not isinstance(data.get(key), str):
                raise UserError(f"{row.where}: field '{key}' must be a string (the two outputs compared)")
        preference = data.get("preference")
        if preference is None:
            result.drops["unlabeled"] += 1
            continue
        if isinstance(preference, bool) or preference not in (0, 1, 2):
            raise UserError(f"{row.where}: field 'preference' must be 1, 2, 0 (tie) or null, got {preference!r}")
        if preference == 0:
            result.drops["tie"] += 1
            continue
        prompt_row = Row({k: v for k, v in data.items() if k not in LABEL_KEYS}, row.where)
        prompt = to_prompt_messages(prompt_row, section.format)
        chosen, rejected = (data["output_1"], data["output_2"])[:: 1 if preference == 1 else -1]
        result.records.append({"prompt": _plain(prompt), "chosen": chosen, "rejected": rejected,
                               **_extras(prompt_row.data)})
    return result


def collect_preferences(section: PreferencesSection) -> PreferenceResult:
    """Sample and judge, or read people's labels (``judge.kind: labels``)."""
    if section.judge.kind == "labels":
        return read_labels(section)
    rows = read_source(section.prompts)[: section.limit]
    return judge_samples(section, rows)
