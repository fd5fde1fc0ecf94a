"""Where the project's own files live, and how config paths resolve."""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = REPO_ROOT / "data"
CONFIGS_DIR = REPO_ROOT / "configs"


def resolve_path(path: str | Path) -> Path:
    """A path as given if it exists (absolute or relative to the cwd), else relative to the repo root.

    Shipped configs name embedded files as ``data/...``; this makes them run from any cwd.
    """
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    candidate = REPO_ROOT / p
    return candidate if candidate.exists() else p
