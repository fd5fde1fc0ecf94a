"""A pipeline: an ordered list of named stages, each a stage type with its config, wired by output references.

    # line 1: one-line description; line 2: "# Run: rlhf run NAME"
    name: alpaca
    stages:
      - name: sft                      # DIR/sft/ holds this stage's outputs and manifest
        stage: sft                     # a stage type from stages/ (collect, sft, rm, dpo, ppo, eval)
        base: configs/sft/tiny.yaml    # optional: a stage YAML the config below is merged over
        config: {train: {max_steps: 40}}
      - name: rm
        stage: rm
        config:
          model: {path: "${sft.model}"}   # reference: an output of an earlier stage

A reference ``${NAME.KEY}`` inside any string value becomes an absolute path when the stage runs: KEY names an
entry of stage NAME's manifest "outputs" (sft's "model", for example), or is ``out`` for NAME's whole output
directory. NAME must be a stage listed before the one that refers to it. Overrides ``STAGE.key.sub=value`` set a
key of that stage's config (after ``base`` and ``config`` are merged).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pydantic import Field, field_validator, model_validator

from rlhf.config import Section, apply_overrides, read_yaml, validate
from rlhf.errors import UserError

STAGE_NAME = r"[A-Za-z_][A-Za-z0-9_-]*"
REF = re.compile(r"\$\{(" + STAGE_NAME + r")\.([A-Za-z_][A-Za-z0-9_-]*)\}")
# A ref KEY naming the referred stage's output directory rather than one of its manifest outputs.
OUT_KEY = "out"


class StageSpec(Section):
    """One step of a pipeline."""

    name: str = Field(..., pattern=f"^{STAGE_NAME}$", description="unique name; also the output subdirectory")
    stage: str = Field(..., description="stage type: collect, sft, rm, dpo, ppo or eval")
    base: str | None = Field(None, description="stage YAML that `config` is merged over (paths relative to the repo)")
    config: dict[str, Any] = Field(default_factory=dict, description="the stage's config; ${NAME.KEY} refers to outputs")

    @field_validator("stage")
    @classmethod
    def _known_stage(cls, v: str) -> str:
        from stages import STAGES

        if v not in STAGES:
            raise ValueError(f"unknown stage type '{v}' (one of {', '.join(STAGES)})")
        return v


class PipelineSpec(Section):
    """The whole file."""

    name: str | None = Field(None, pattern=f"^{STAGE_NAME}$", description="pipeline name (default: the file's stem)")
    base: str | None = Field(None, description="a pipeline (shipped name or YAML) whose stages this one starts from")
    overrides: list[str] = Field(default_factory=list, description="STAGE.key.sub=value set over the base's stages")
    stages: list[StageSpec] = Field(..., min_length=1, description="stages, run in this order (or from `base`)")

    @model_validator(mode="after")
    def _unique_names(self):
        seen: set[str] = set()
        for s in self.stages:
            if s.name in seen:
                raise ValueError(f"two stages are named '{s.name}'")
            seen.add(s.name)
        return self


@dataclass
class Pipeline:
    """A validated spec plus where it came from (for messages and for finding it again on a cluster)."""

    spec: PipelineSpec
    source: Path

    @property
    def name(self) -> str:
        return self.spec.name or self.source.stem

    def stage(self, name: str) -> StageSpec:
        for s in self.spec.stages:
            if s.name == name:
                return s
        raise UserError(f"{self.source}: no stage named '{name}' (stages: {', '.join(self.names())})")

    def names(self) -> list[str]:
        return [s.name for s in self.spec.stages]

    def where(self, stage: StageSpec) -> str:
        return f"{self.source}: stage '{stage.name}'"


def deep_merge(base: dict, over: dict) -> dict:
    """``over`` on top of ``base``: nested mappings merge, everything else is replaced. Inputs are not changed."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def stage_data(stage: StageSpec) -> dict:
    """The stage's config mapping before references are resolved: ``base`` file, then ``config`` over it."""
    base = read_yaml(stage.base) if stage.base else {}
    return deep_merge(base, stage.config)


def refs_in(value: Any) -> list[tuple[str, str]]:
    """Every ``(NAME, KEY)`` referenced anywhere in a nested config value, in order of appearance, without repeats."""
    found: list[tuple[str, str]] = []
    if isinstance(value, str):
        found = [(m.group(1), m.group(2)) for m in REF.finditer(value)]
    elif isinstance(value, dict):
        found = [r for v in value.values() for r in refs_in(v)]
    elif isinstance(value, list):
        found = [r for v in value for r in refs_in(v)]
    return list(dict.fromkeys(found))


def resolve_refs(value: Any, lookup: Callable[[str, str], str]) -> Any:
    """A copy of ``value`` with every ``${NAME.KEY}`` replaced by ``lookup(NAME, KEY)``."""
    if isinstance(value, str):
        return REF.sub(lambda m: lookup(m.group(1), m.group(2)), value)
    if isinstance(value, dict):
        return {k: resolve_refs(v, lookup) for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_refs(v, lookup) for v in value]
    return value


def check_refs(pipeline: Pipeline) -> None:
    """Each reference names a stage listed before the one using it; a later or missing one is an error naming it."""
    names = pipeline.names()
    for i, stage in enumerate(pipeline.spec.stages):
        for ref_stage, key in refs_in(stage_data(stage)):
            ref = f"${{{ref_stage}.{key}}}"
            if ref_stage == stage.name:
                raise UserError(f"{pipeline.where(stage)}: {ref} refers to the stage itself")
            if ref_stage not in names:
                raise UserError(f"{pipeline.where(stage)}: {ref} refers to stage '{ref_stage}', which does not exist "
                                f"(stages: {', '.join(names)})")
            if names.index(ref_stage) > i:
                raise UserError(f"{pipeline.where(stage)}: {ref} refers to stage '{ref_stage}', which comes later; "
                                "a stage can only use outputs of stages before it")


def apply_stage_overrides(pipeline: Pipeline, overrides: list[str]) -> None:
    """``STAGE.key.sub=value`` sets ``key.sub`` in that stage's ``config`` (merged over ``base``, so it wins)."""
    for item in overrides:
        head, _, rest = item.partition(".")
        if not rest or "=" not in rest or "=" in head:
            raise UserError(f"override {item!r}: expected STAGE.key.sub=value (stages: {', '.join(pipeline.names())})")
        from stages import load_stage

        stage = pipeline.stage(head)
        # A copy: YAML anchors can make several stages share one mapping, and the override is for this one.
        stage.config = apply_overrides(copy.deepcopy(stage.config), [rest], load_stage(stage.stage).Config)


def load_pipeline(path: str | Path, overrides: list[str] | None = None, _depth: int = 0) -> Pipeline:
    """Read, validate and apply overrides; references are checked, stage configs are not (see validate_stages).

    A pipeline with ``base`` takes the base pipeline's stages (its own overrides applied), then sets its
    ``overrides``, then the caller's: a shortened or retuned variant says only what it changes."""
    source = Path(path)
    data = read_yaml(source)
    if data.get("base") is not None:
        from rlhf.pipeline.shipped import find_pipeline

        if "stages" in data:
            raise UserError(f"{source}: give either `base` (with `overrides`) or `stages`, not both")
        if _depth >= 8:
            raise UserError(f"{source}: `base` pipelines refer to each other in a loop")
        base = load_pipeline(find_pipeline(str(data["base"])), _depth=_depth + 1)
        data = {**data, "stages": [s.model_dump() for s in base.spec.stages]}
    spec = validate(PipelineSpec, data, where=str(source))
    pipeline = Pipeline(spec, source)
    for stage in spec.stages:
        if stage.base:
            stage_data(stage)  # a missing or broken base file is reported here, naming the file
    apply_stage_overrides(pipeline, [*spec.overrides, *(overrides or [])])
    check_refs(pipeline)
    return pipeline


def validate_stage(pipeline: Pipeline, stage: StageSpec, data: dict | None = None) -> Section:
    """The stage's typed Config, built from ``data`` (default: its unresolved mapping; refs stay strings)."""
    from stages import load_stage

    module = load_stage(stage.stage)
    return validate(module.Config, stage_data(stage) if data is None else data, where=pipeline.where(stage))


def validate_stages(pipeline: Pipeline) -> None:
    """Validate every stage's config (a UserError naming the first bad key)."""
    for stage in pipeline.spec.stages:
        validate_stage(pipeline, stage)
