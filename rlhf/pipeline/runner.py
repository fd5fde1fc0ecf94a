"""Run a pipeline's stages in order, each into DIR/<stage-name>/, skipping stages that are already done.

A stage is skipped when its manifest says "complete", its resolved config (references replaced by paths) equals
the manifest's "config", and its inputs have the same content hashes as when it ran: the artifacts its references
point to (recorded in DIR/pipeline.json) and the inputs the stage itself listed in its manifest. So changing one
key reruns that stage, and the stages after it rerun because the artifacts they read changed. A referenced
artifact that moved with its content unchanged (stage directories copied with their pipeline.json records, as
``rlhf study`` shares SFT, preferences and RM between methods) is not a change.

A stage that failed or was killed (manifest "failed"/"running") with an unchanged config and inputs is rerun in
place, so its training loop resumes from DIR/<stage>/checkpoints. A stage rerun for any other reason (changed
config or inputs, ``--from``) starts from an empty directory, so stale checkpoints are never resumed.
"""

from __future__ import annotations

import json
import shutil
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rlhf.errors import UserError
from rlhf.manifest import MANIFEST, hash_path, make_out_dir, now_iso, read_manifest, write_json_atomic
from rlhf.pipeline.spec import OUT_KEY, Pipeline, StageSpec, refs_in, resolve_refs, stage_data, validate_stage

STATE_FILE = "pipeline.json"


class StageFailed(Exception):
    """A stage raised; the pipeline stopped there. ``cause`` is the stage's own exception."""

    def __init__(self, name: str, out: Path, cause: BaseException):
        self.name, self.out, self.cause = name, out, cause
        super().__init__(f"stage '{name}' failed: {type(cause).__name__}: {cause}")


@dataclass
class StageOutcome:
    name: str
    stage: str
    status: str  # "ran" or "skipped"
    out: Path
    reason: str
    wall_s: float = 0.0
    outputs: dict[str, str] = field(default_factory=dict)


def as_json(value: Any) -> Any:
    """What ``value`` looks like after a trip through the manifest's JSON (tuples become lists, paths strings)."""
    return json.loads(json.dumps(value, default=str))


def flat(d: Any, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    if not isinstance(d, dict):
        return {prefix.rstrip("."): d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flat(v, f"{prefix}{k}."))
    return out


def changed_keys(old: dict, new: dict) -> list[str]:
    a, b = flat(old), flat(new)
    return sorted(k for k in a.keys() | b.keys() if a.get(k, "<unset>") != b.get(k, "<unset>"))


def relocate(config: Any, moved: dict[str, str]) -> Any:
    """``config`` with every string value that is a key of ``moved`` replaced by its value."""
    if isinstance(config, dict):
        return {k: relocate(v, moved) for k, v in config.items()}
    if isinstance(config, list):
        return [relocate(v, moved) for v in config]
    return moved.get(config, config) if isinstance(config, str) else config


def output_path(stage_dir: Path, name: str, key: str) -> str:
    """Absolute path of output KEY of the stage in ``stage_dir`` (KEY "out": the directory itself)."""
    if key == OUT_KEY:
        return str(stage_dir.resolve())
    manifest = read_manifest(stage_dir)
    if not manifest or manifest.get("status") != "complete":
        raise UserError(f"${{{name}.{key}}}: stage '{name}' has no complete manifest in {stage_dir}")
    outputs = manifest.get("outputs", {})
    if key not in outputs:
        raise UserError(f"${{{name}.{key}}}: stage '{name}' has no output '{key}' "
                        f"(its outputs: {', '.join(outputs) or 'none'}; or 'out' for its directory)")
    p = Path(outputs[key]["path"])
    return str((p if p.is_absolute() else stage_dir / p).resolve())


class PipelineRunner:
    """Runs one pipeline into ``out``; ``log`` receives one line per event (stage start, skip, done, failure)."""

    def __init__(self, pipeline: Pipeline, out: str | Path, log: Callable[[str], None] = print):
        self.pipeline = pipeline
        self.out = Path(out).expanduser().resolve()
        self.log = log
        self._hashes: dict[str, str] = {}

    # -- state -------------------------------------------------------------------------------------------------
    def stage_dir(self, name: str) -> Path:
        return self.out / name

    def _state(self) -> dict:
        p = self.out / STATE_FILE
        return json.loads(p.read_text()) if p.is_file() else {"stages": {}}

    def _record(self, stage: StageSpec, refs: dict[str, dict]) -> None:
        state = self._state()
        state.update(pipeline=self.pipeline.name, source=str(self.pipeline.source.resolve()), updated_at=now_iso())
        state["stages"][stage.name] = {"stage": stage.stage, "refs": refs}
        write_json_atomic(self.out / STATE_FILE, state)

    def hash(self, path: str) -> str:
        """Content hash, computed once per path per run (models are big)."""
        if path not in self._hashes:
            self._hashes[path] = hash_path(path)
        return self._hashes[path]

    # -- one stage ---------------------------------------------------------------------------------------------
    def resolve(self, stage: StageSpec) -> tuple[Any, dict[str, dict]]:
        """(typed config with references replaced, {"NAME.KEY": {"path", "hash"}} for every reference)."""
        data = stage_data(stage)

        def lookup(name: str, key: str) -> str:
            return output_path(self.stage_dir(name), name, key)

        refs = {}
        for name, key in refs_in(data):
            path = lookup(name, key)
            refs[f"{name}.{key}"] = {"path": path, "hash": self.hash(path)}
        cfg = validate_stage(self.pipeline, stage, resolve_refs(data, lookup))
        return cfg, refs

    def rerun_reason(self, stage: StageSpec, cfg: Any, refs: dict) -> tuple[str | None, bool]:
        """(why the stage must run, or None to skip; whether its directory may be resumed rather than cleared)."""
        prev = read_manifest(self.stage_dir(stage.name))
        if prev is None:
            return "not run yet", False
        recorded = self._state()["stages"].get(stage.name, {})
        if prev.get("stage") != stage.stage or recorded.get("stage", stage.stage) != stage.stage:
            return f"stage type changed to {stage.stage}", False
        # The artifact a reference names may have moved (a copied run directory, as `rlhf study` makes): its old path
        # in the recorded config stands for the new one; whether its content changed is the hash check below.
        moved = {old["path"]: refs[k]["path"] for k, old in recorded.get("refs", {}).items() if k in refs}
        diff = changed_keys(relocate(prev.get("config", {}), moved), as_json(cfg.model_dump(mode="json")))
        if diff:
            return "config changed: " + ", ".join(diff[:6]) + (" ..." if len(diff) > 6 else ""), False
        old_refs = {k: v.get("hash") for k, v in recorded.get("refs", {}).items()}
        new_refs = {k: v["hash"] for k, v in refs.items()}
        if old_refs != new_refs:
            moved = sorted(k for k in old_refs.keys() | new_refs.keys() if old_refs.get(k) != new_refs.get(k))
            return "input changed: " + ", ".join(f"${{{k}}}" for k in moved), False
        for key, entry in (prev.get("inputs") or {}).items():
            if self.hash(entry["path"]) != entry.get("hash"):
                return f"input '{key}' changed: {entry['path']}", False
        status = prev.get("status")
        if status == "complete":
            return None, False
        if status in ("failed", "running"):
            return f"previous run {'failed' if status == 'failed' else 'was interrupted'}; resuming", True
        return f"manifest status '{status}'", False

    def clear(self, stage_dir: Path) -> None:
        """Empty a stage directory before a fresh run; only one that holds our manifest (never a user's folder)."""
        if (stage_dir / MANIFEST).is_file():
            shutil.rmtree(stage_dir)

    def run_stage(self, index: int, stage: StageSpec, force: bool) -> StageOutcome:
        total = len(self.pipeline.spec.stages)
        tag = f"[rlhf] [{index + 1}/{total}] {stage.name} ({stage.stage})"
        stage_dir = self.stage_dir(stage.name)
        cfg, refs = self.resolve(stage)
        reason, resume = ("forced by --from", False) if force else self.rerun_reason(stage, cfg, refs)
        if reason is None:
            outputs = {k: v["path"] for k, v in (read_manifest(stage_dir) or {}).get("outputs", {}).items()}
            self.log(f"{tag}: skipped (complete; config and inputs unchanged) -> {stage_dir}")
            return StageOutcome(stage.name, stage.stage, "skipped", stage_dir, "unchanged", outputs=outputs)
        if not resume:
            self.clear(stage_dir)
        self.log(f"{tag}: running ({reason}) -> {stage_dir}")
        self._record(stage, refs)
        from stages import load_stage

        started = time.time()
        try:
            manifest = load_stage(stage.stage).run(cfg, stage_dir)
        except (Exception, KeyboardInterrupt) as err:
            wall = time.time() - started
            self.log(f"{tag}: FAILED after {wall:.0f}s: {type(err).__name__}: {err}")
            self.log(f"[rlhf] its outputs and manifest: {stage_dir}; run the same command again to resume it "
                     "from its last checkpoint")
            if isinstance(err, KeyboardInterrupt):
                raise
            if not isinstance(err, UserError):
                traceback.print_exc()
            raise StageFailed(stage.name, stage_dir, err) from err
        wall = time.time() - started
        outputs = {k: v["path"] for k, v in (manifest or {}).get("outputs", {}).items()}
        self.log(f"{tag}: done in {wall:.0f}s -> {stage_dir}")
        return StageOutcome(stage.name, stage.stage, "ran", stage_dir, reason, wall, outputs)

    # -- whole pipeline ----------------------------------------------------------------------------------------
    def run(self, from_stage: str | None = None) -> list[StageOutcome]:
        """Run every stage in order; ``from_stage`` and all stages after it are rerun even if unchanged."""
        names = self.pipeline.names()
        start = names.index(self.pipeline.stage(from_stage).name) if from_stage else len(names)
        make_out_dir(self.out)
        self.log(f"[rlhf] pipeline '{self.pipeline.name}' ({self.pipeline.source}): {' -> '.join(names)}; "
                 f"outputs in {self.out}")
        outcomes = []
        for i, stage in enumerate(self.pipeline.spec.stages):
            outcomes.append(self.run_stage(i, stage, force=i >= start))
        self.log(summary(outcomes))
        if any(s.stage == "eval" for s in self.pipeline.spec.stages):
            self.write_report()
        return outcomes

    def write_report(self) -> None:
        """A pipeline that evaluates ends with its report (``rlhf report DIR`` rewrites it); a failure to plot
        is logged, never a failed pipeline, since every stage's outputs are already complete."""
        from rlhf.report import write_report

        try:
            write_report(self.out)
        except Exception as err:  # noqa: BLE001 - the report is a view of finished outputs
            self.log(f"[rlhf] report failed ({type(err).__name__}: {err}); retry with: rlhf report {self.out}")
            return
        self.log(f"[rlhf] report: {self.out / 'report.md'} (plots in {self.out / 'plots'})")


def summary(outcomes: list[StageOutcome]) -> str:
    """A table: stage, what happened, wall time, where its outputs are."""
    width = max(len(o.name) for o in outcomes)
    lines = ["[rlhf] pipeline complete:"]
    for o in outcomes:
        took = f"{o.wall_s:6.0f}s" if o.status == "ran" else "      -"
        main = o.outputs.get("model") or next(iter(o.outputs.values()), "")
        where = str(o.out / main) if main and not Path(main).is_absolute() else (main or str(o.out))
        lines.append(f"  {o.name.ljust(width)}  {o.status:7s} {took}  {where}")
    return "\n".join(lines)


def run_pipeline(pipeline: Pipeline, out: str | Path, from_stage: str | None = None,
                 log: Callable[[str], None] = print) -> list[StageOutcome]:
    return PipelineRunner(pipeline, out, log).run(from_stage)
