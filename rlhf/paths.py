"""Where the project's own files live, and how config paths resolve."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
# A checkout keeps data/ and configs/ beside the package; an installed wheel carries them inside it (setup.py).
IN_CHECKOUT = (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "data").is_dir()
SHIPPED_ROOT = REPO_ROOT if IN_CHECKOUT else PACKAGE_DIR / "_shipped"
DATA_DIR = SHIPPED_ROOT / "data"
CONFIGS_DIR = SHIPPED_ROOT / "configs"


def resolve_path(path: str | Path) -> Path:
    """A path as given if it exists (absolute or relative to the cwd), else relative to the shipped files' root
    (the checkout, or the installed package's copy).

    Shipped configs name embedded files as ``data/...`` and ``configs/...``; this makes them run from any cwd.
    """
    p = Path(path).expanduser()
    if p.is_absolute() or p.exists():
        return p
    candidate = SHIPPED_ROOT / p
    return candidate if candidate.exists() else p


def cache_root() -> Path:
    """Where built artifacts (embedded models) go: $RLHF_CACHE, else the checkout's .cache/, else the user's cache."""
    if os.environ.get("RLHF_CACHE"):
        return Path(os.environ["RLHF_CACHE"])
    if IN_CHECKOUT:
        return REPO_ROOT / ".cache"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "rlhf"
