"""Shipped pipelines: ``configs/pipelines/<name>.yaml``; ``<name>-real`` is the real-scale version of ``<name>``."""

from __future__ import annotations

from pathlib import Path

from rlhf.config import yaml_header
from rlhf.errors import UserError
from rlhf.paths import CONFIGS_DIR, resolve_path

PIPELINES_DIR = CONFIGS_DIR / "pipelines"
# `rlhf run` with no PIPELINE: the full RLHF pipeline at tiny scale, offline on CPU.
DEFAULT_PIPELINE = "rlhf"


def shipped_pipelines() -> dict[str, Path]:
    """name -> YAML path for every shipped pipeline."""
    return {p.stem: p for p in sorted(PIPELINES_DIR.glob("*.yaml"))}


def describe(path: Path) -> str:
    """The pipeline's one-line description (its first comment line)."""
    header = yaml_header(path)
    return header[0] if header else ""


def find_pipeline(name_or_path: str | None) -> Path:
    """A shipped name (``alpaca``, ``rlhf-real``) or a YAML path -> the file; None -> the default pipeline."""
    target = name_or_path or DEFAULT_PIPELINE
    shipped = shipped_pipelines()
    if target in shipped:
        return shipped[target]
    path = resolve_path(target)
    if path.is_file():
        return path
    if target.endswith((".yaml", ".yml")) or "/" in target:
        raise UserError(f"pipeline file not found: {target}")
    raise UserError(f"unknown pipeline '{target}'; shipped: {', '.join(shipped)} (or give a YAML path)")
