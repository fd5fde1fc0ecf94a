"""What ``rlhf plan`` plans: a pipeline (each GPU training stage, references followed to the models they name) or
a single stage YAML; both become typed stage configs for ``estimate_stage``.
"""

from __future__ import annotations

from pathlib import Path

from rlhf.config import apply_overrides, read_yaml, validate
from rlhf.errors import UserError
from rlhf.plan.estimate import PLANNED_STAGES, Hardware, StagePlan, estimate_stage

# A stage's model-valued outputs -> the config key holding the model they come from (same architecture).
MODEL_OUTPUTS = {"sft": {"model": "model.path"}, "rm": {"model": "model.path"}, "dpo": {"model": "model.path"},
                 "ppo": {"actor": "actor.path", "critic": "critic.path"}}


def _get(data: dict, dotted: str):
    node = data
    for part in dotted.split("."):
        if not isinstance(node, dict) or node.get(part) is None:
            return None
        node = node[part]
    return node


def plan_pipeline(pipeline, hw: Hardware) -> tuple[list[StagePlan], list[str]]:
    """(plans of the sft/rm/ppo stages, names of the stages not planned). ``${sft.model}`` becomes sft's model.path,
    so a later stage is planned with the architecture it will load; other references stay as written."""
    from rlhf.pipeline.spec import resolve_refs, stage_data
    from stages import load_stage

    resolved: dict[str, dict] = {}
    plans, skipped = [], []

    def lookup(name: str, key: str) -> str:
        upstream = resolved.get(name, {})
        dotted = MODEL_OUTPUTS.get(upstream.get("__stage__", ""), {}).get(key)
        value = _get(upstream, dotted) if dotted else None
        if value is None and key == "critic":  # the critic defaults to the reward model, else the actor
            value = _get(upstream, "reward.model") or _get(upstream, "actor.path")
        return value if isinstance(value, str) else f"${{{name}.{key}}}"

    for stage in pipeline.spec.stages:
        data = resolve_refs(stage_data(stage), lookup)
        resolved[stage.name] = {**data, "__stage__": stage.stage}
        if stage.stage not in PLANNED_STAGES:
            skipped.append(stage.name)
            continue
        cfg = validate(load_stage(stage.stage).Config, data, where=pipeline.where(stage))
        plans.append(estimate_stage(stage.stage, cfg, hw, name=stage.name))
    return plans, skipped


def guess_stage(path: Path, data: dict) -> str:
    """A stage YAML's stage type: its folder (configs/sft/...), else the planned stage whose Config accepts it."""
    from stages import load_stage

    if path.parent.name in PLANNED_STAGES:
        return path.parent.name
    for stage in ("ppo", "dpo", "rm", "sft"):
        try:
            validate(load_stage(stage).Config, dict(data), where=str(path))
            return stage
        except UserError:
            continue
    raise UserError(f"{path}: not an sft, rm, dpo or ppo stage config (give --stage NAME)")


def plan_stage_file(path: str, overrides: list[str], hw: Hardware, stage: str | None = None) -> StagePlan:
    from stages import load_stage

    data = apply_overrides(read_yaml(path), overrides)
    stage = stage or guess_stage(Path(path), data)
    if stage not in PLANNED_STAGES:
        raise UserError(f"cannot plan a '{stage}' stage: planned stages are {', '.join(PLANNED_STAGES)}")
    cfg = validate(load_stage(stage).Config, data, where=str(path))
    return estimate_stage(stage, cfg, hw, name=stage)
