"""The manifest: the hand-off between stages. Written atomically; "complete" only after every output is in place."""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel

MANIFEST = "manifest.json"


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to a temp file beside ``path`` and rename it over: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")
    os.replace(tmp, path)


def read_manifest(out: str | Path) -> dict | None:
    p = Path(out) / MANIFEST
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return None


def hash_path(path: str | Path, skip: tuple[str, ...] = ("checkpoints", "ray", MANIFEST)) -> str:
    """sha256 over a file, or over a directory's sorted relative paths and contents. A non-path (hub id) hashes its name."""
    p = Path(path)
    h = hashlib.sha256()
    if p.is_file():
        files = [(p.name, p)]
    elif p.is_dir():
        files = sorted(
            (str(f.relative_to(p)), f)
            for f in p.rglob("*")
            if f.is_file() and not any(part in skip for part in f.relative_to(p).parts)
        )
    else:
        return "name:" + hashlib.sha256(str(path).encode()).hexdigest()
    for rel, f in files:
        h.update(rel.encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return "sha256:" + h.hexdigest()


def versions() -> dict[str, str]:
    """Versions of what produced an artifact, for reproducibility."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("rlhf", "torch", "deepspeed", "transformers", "ray", "trl", "datasets", "peft", "accelerate"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    try:
        from rlhf.paths import REPO_ROOT

        commit = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        if commit:
            out["git_commit"] = commit
    except (OSError, subprocess.SubprocessError):
        pass
    return out


class StageRun:
    """Brackets one stage run: a "running" manifest first, "complete" (with metrics and hashes) last, "failed" on error.

    A run that is killed leaves "running", so nothing downstream ever mistakes it for finished work.
    """

    def __init__(self, stage: str, out: str | Path, config: BaseModel, inputs: dict[str, str] | None = None):
        self.stage = stage
        self.out = Path(out)
        self.config = config
        self.inputs = {k: v for k, v in (inputs or {}).items() if v}
        self.started = time.time()
        self.manifest: dict[str, Any] = {}

    def _base(self, status: str) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "status": status,
            "config": self.config.model_dump(mode="json"),
            "inputs": {k: {"path": str(v), "hash": hash_path(v)} for k, v in self.inputs.items()},
            "started_at": datetime.fromtimestamp(self.started, timezone.utc).isoformat(timespec="seconds"),
            "versions": versions(),
        }

    def __enter__(self) -> "StageRun":
        from rlhf.trackers import Trackers

        self.out.mkdir(parents=True, exist_ok=True)
        self.manifest = self._base("running")
        write_json_atomic(self.out / MANIFEST, self.manifest)
        self.trackers = Trackers(self.stage, self.out, self.manifest["config"], getattr(self.config, "logging", None))
        if self.trackers.backends:  # the resolved config as a file, for the trackers' artifacts
            import yaml

            (self.out / "config.yaml").write_text(yaml.safe_dump(self.manifest["config"], sort_keys=False))
        return self

    def complete(self, metrics: dict[str, Any], outputs: dict[str, str | Path], extra: dict | None = None) -> dict:
        """Hash the outputs and write the final manifest; call this after every output file is in place."""
        m = self._base("complete")
        m["metrics"] = metrics
        m["outputs"] = {k: {"path": str(Path(v).relative_to(self.out)) if Path(v).is_relative_to(self.out) else str(v),
                            "hash": hash_path(v)} for k, v in outputs.items()}
        m.update(extra or {})
        m["finished_at"] = now_iso()
        m["wall_s"] = round(time.time() - self.started, 2)
        self.manifest = m
        write_json_atomic(self.out / MANIFEST, m)
        return m

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None and self.manifest.get("status") != "complete":
            m = self._base("failed")
            m["error"] = f"{exc_type.__name__}: {exc}"[:2000]
            m["finished_at"] = now_iso()
            write_json_atomic(self.out / MANIFEST, m)
        self.trackers.close(ok=exc_type is None, files=[self.out / "config.yaml", self.out / MANIFEST])
