"""The main job's console: the project's own lines on the terminal, Ray's/DeepSpeed's/torch's messages in OUT/rlhf.log."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from rlhf.paths import REPO_ROOT

NOISE = ("Token authentication is enabled", "Failed to determine local IP", "Setting accelerator to CPU", "[c10d]")


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}


def test_quiet_console_shows_own_lines_and_logs_everything(tmp_path):
    """Python prints, fd-level writes, a child process and a Ray-forwarded worker line, through the real streams."""
    script = textwrap.dedent(f"""
        import logging, os, subprocess, sys
        from pathlib import Path
        from rlhf.console import quiet_console, terminal
        with quiet_console(Path({str(tmp_path / 'out')!r})) as log:
            print("[rlhf] own line")
            print("[rlhf] a table:\\n  row one\\n  row two")
            print("library chatter")
            logging.getLogger("lib").warning("a library warning")
            os.write(2, b"[W socket.cpp] c10d noise from C++\\n")
            subprocess.run(["sh", "-c", "echo child noise >&2"])
            print("\\x1b[36m(RayTrainWorker pid=12)\\x1b[0m [rlhf] worker says hi")
            print("\\x1b[36m(RayTrainWorker pid=12)\\x1b[0m Setting accelerator to CPU")
            terminal().write("bar 1/2\\r")
            print("rlhf: error: bad thing", file=sys.stderr)
        print("after: shown again")
        """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=child_env(), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["[rlhf] own line", "[rlhf] a table:", "  row one", "  row two",
                                        "\x1b[36m(RayTrainWorker pid=12)\x1b[0m [rlhf] worker says hi",
                                        "after: shown again"]
    assert proc.stderr.splitlines() == ["bar 1/2", "rlhf: error: bad thing"]  # text mode reads "\r" as a newline
    log = (tmp_path / "out" / "rlhf.log").read_text()
    for text in ("[rlhf] own line", "library chatter", "a library warning", "c10d noise from C++", "child noise",
                 "Setting accelerator to CPU", "rlhf: error: bad thing"):
        assert text in log, text
    assert "after: shown again" not in log


@pytest.mark.slow
def test_short_run_prints_only_its_own_lines(tmp_path):
    """`rlhf run` (a 2-step smoke pipeline): no Ray/DeepSpeed/torch line on stdout or stderr; they are in the log."""
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "rlhf.cli", "run", "smoke", "--out", str(out), "sft.train.max_steps=2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    shown = [line for line in proc.stdout.splitlines() if line.strip()]
    assert shown and all(line.startswith(("[rlhf]", "  ")) for line in shown), shown
    bars = [part for part in proc.stderr.replace("\r", "\n").splitlines() if part.strip()]
    assert bars and all(part.startswith("sft:") for part in bars), bars  # only the progress bar
    log = (out / "rlhf.log").read_text()
    assert not [n for n in NOISE if n in proc.stdout + proc.stderr]
    assert [n for n in NOISE if n in log], log[-2000:]
