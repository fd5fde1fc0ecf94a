"""README commands on a fresh clone: every script and benchmark they name exists, and an install that cannot
reach the package registry (as inside the loopback-only namespace) ends in one line, not a traceback."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from rlhf.paths import REPO_ROOT


def readme_commands() -> list[str]:
    text = (REPO_ROOT / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    lines = (line.split("#")[0].strip() for block in blocks for line in block.splitlines())
    return [line for line in lines if line]  # comment-only lines name no command


def test_readme_scripts_exist_and_benchmarks_go_through_their_setup():
    commands = readme_commands()
    for cmd in commands:
        words = cmd.split()
        if words[0] in ("bash", "python"):
            assert (REPO_ROOT / words[1]).is_file(), cmd
            # Anything that enters the namespace directly must not need an install first: setup runs outside.
            assert words[1] != "cluster/netns.sh", f"{cmd}: run it through a script that sets up first"
        if words[:2] == ["bash", "benchmarks/run.sh"]:
            assert (REPO_ROOT / "benchmarks" / f"{words[2]}.py").is_file(), cmd
    assert any(c.startswith("bash benchmarks/run.sh ppo_iteration") for c in commands)


def test_trl_venv_install_failure_is_one_line(tmp_path):
    """ppo_iteration's TRL venv with no registry in reach: one `[bench] error:` line naming the way out."""
    env = {**os.environ, "RLHF_TRL_VENV": str(tmp_path / "venv-trl"), "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
           "PIP_EXTRA_INDEX_URL": "", "PIP_FIND_LINKS": "", "PIP_RETRIES": "0", "PIP_TIMEOUT": "2",
           "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    proc = subprocess.run([sys.executable, "benchmarks/ppo_iteration.py", "--setup"], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("[bench] error: could not set up"), proc.stderr
    assert "--setup" in lines[0] and "Traceback" not in proc.stderr
