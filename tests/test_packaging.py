"""A non-editable install works away from the checkout: the wheel (built from the sdist when `build` is installed)
carries the embedded data and configs, and an installed `rlhf` finds them from any cwd."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from rlhf.paths import REPO_ROOT

# What the sdist needs; copied so that the build writes nothing (build/, *.egg-info) into the checkout.
SOURCES = ("pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "rlhf", "stages", "data", "configs", "cluster")


def run(cmd: list[str], cwd: Path, env: dict | None = None) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def build_wheel(src: Path, dist: Path) -> Path:
    """`python -m build` (sdist, then the wheel from the sdist) where installed, else `pip wheel`; no network."""
    if importlib.util.find_spec("build") is not None:
        run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(src)], cwd=src)
        sdists = list(dist.glob("rlhf-*.tar.gz"))
        assert len(sdists) == 1, sdists
    else:
        run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
             "-w", str(dist), str(src)], cwd=src)
    wheels = list(dist.glob("rlhf-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def test_installed_wheel_finds_its_data_and_configs(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        if (REPO_ROOT / name).is_dir():
            shutil.copytree(REPO_ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(REPO_ROOT / name, src / name)
    wheel = build_wheel(src, tmp_path / "dist")

    # A fresh venv that sees this interpreter's packages (torch, transformers...) but gets rlhf only from the wheel.
    env_dir = tmp_path / "venv"
    venv.create(env_dir, system_site_packages=True, with_pip=False)
    py = env_dir / "bin" / "python"
    site = Path(run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path).strip())
    # Plain path lines (not site.addsitedir), so the current env's own .pth files, an editable rlhf among them,
    # are not processed there.
    (site / "shared-env.pth").write_text("".join(f"{sysconfig.get_paths()[k]}\n" for k in ("purelib", "platlib")))
    run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", str(wheel)], tmp_path)

    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RLHF_CACHE")}
    env["HOME"] = str(tmp_path / "home")
    listing = run([str(env_dir / "bin" / "rlhf"), "configs"], cwd, env)
    assert "configs/sft/tiny.yaml" in listing and "configs/pipelines/rlhf.yaml" in listing, listing
    check = ("import rlhf, rlhf.paths as p\n"
             "from rlhf.models.tokenizer import EMBEDDED_TOKENIZER, load_tokenizer\n"
             "from rlhf.data.io import read_rows\n"
             "tok = load_tokenizer(EMBEDDED_TOKENIZER)\n"
             "print(rlhf.__file__, p.DATA_DIR, tok.vocab_size, len(read_rows('data/instructions.jsonl')))\n")
    module, data_dir, vocab, rows = run([str(py), "-c", check], cwd, env).split()
    assert Path(module).is_relative_to(site) and Path(data_dir) == site / "rlhf" / "_shipped" / "data"
    assert int(vocab) > 256 and int(rows) > 100
    assert not list(cwd.iterdir())  # nothing was built or written into the cwd
