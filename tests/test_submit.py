"""A real Ray head (cluster/start-local-head.sh), a tiny pipeline submitted with `rlhf submit` and with Ray's SDK.

Slow (~2-3 min): the head starts, each job uploads the repo as its working dir and runs `rlhf run` on the head.
Run: unshare -n bash -c 'ip link set lo up; HF_HUB_OFFLINE=1 python -m pytest -q tests/test_submit.py'
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from rlhf.cli import main as rlhf_main
from rlhf.manifest import read_manifest
from rlhf.paths import REPO_ROOT
from rlhf.pipeline.ray_jobs import auth_token, job_client, runtime_env, wait_for

pytestmark = pytest.mark.slow

DASHBOARD_PORT = 8265
ADDRESS = f"http://127.0.0.1:{DASHBOARD_PORT}"
SHORT = ["sft.train.max_steps=2", "sft.data.limit=48"]


def wait_for_http(url: str, timeout_s: float) -> bool:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return True
        except urllib.error.HTTPError:
            return True  # the dashboard answers (the job agent may need a few more seconds; submit waits for it)
        except OSError:
            time.sleep(1)
    return False


def start_head(tmp: Path, attempt: int) -> subprocess.Popen:
    env = dict(os.environ, RAY_TEMP_DIR=str(tmp / f"ray{attempt}"), RAY_NUM_CPUS="2",
               RAY_DASHBOARD_PORT=str(DASHBOARD_PORT), RAY_GCS_PORT="6380")
    env.pop("RAY_ADDRESS", None)
    log = open(tmp / f"head{attempt}.log", "w")
    # Its own session: every process of this head (GCS, raylet, dashboard, job drivers, workers) is in one process
    # group that the teardown can end without touching other Ray instances on the machine.
    return subprocess.Popen([str(REPO_ROOT / "cluster" / "start-local-head.sh"), "--block",
                             "--node-ip-address=127.0.0.1"], env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def stop_head(head: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM to our own `ray start --block` (never `ray stop`: other Ray instances on the machine are not ours),
    then SIGKILL to its process group after ``grace_s``. After jobs have run, the graceful stop alone took 31 s
    (measured), waiting on the node's processes one by one; nothing here needs them to stop gracefully."""
    import signal

    if head.poll() is None:
        head.terminate()
        try:
            head.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(head.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    head.wait()


@pytest.fixture(scope="module")
def ray_head():
    # A short temp path: Ray's unix sockets live under it.
    tmp = Path(tempfile.mkdtemp(prefix="rh", dir="/tmp"))
    for attempt in range(2):  # a loaded machine can miss Ray's fixed 30 s node-startup deadline; retry once
        head = start_head(tmp, attempt)
        if wait_for_http(f"{ADDRESS}/api/gcs_healthz", 120) and head.poll() is None:
            break
        stop_head(head)
    else:
        pytest.fail(f"Ray head did not start; see {tmp}/head*.log")
    try:
        yield ADDRESS
    finally:
        stop_head(head)
        leftovers = subprocess.run(["pgrep", "-f", str(tmp)], capture_output=True, text=True).stdout.split()
        assert not leftovers, f"processes of the test's Ray head outlived it: {leftovers}"


def check_artifacts(out: Path) -> None:
    manifest = read_manifest(out / "sft")
    assert manifest["status"] == "complete" and manifest["config"]["train"]["max_steps"] == 2
    assert (out / "sft" / "model" / "config.json").is_file()
    assert (out / "pipeline.json").is_file()


def test_token_auth_is_on_and_found(ray_head):
    assert auth_token(), "start-local-head.sh makes ~/.ray/auth_token"
    with pytest.raises(urllib.error.HTTPError) as err:  # the job API refuses a request without the token
        urllib.request.urlopen(f"{ray_head}/api/jobs/", timeout=10)
    assert err.value.code in (401, 403)


def test_rlhf_submit_follow_succeeds(ray_head, tmp_path, capfd):
    out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, "-m", "rlhf.cli", "submit", "smoke", "--address", ray_head,
                           "--out", str(out), "--follow", *SHORT],
                          capture_output=True, text=True, timeout=600, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    job_id = proc.stdout.splitlines()[0].strip()
    assert job_id.startswith("raysubmit_")
    assert "[rlhf] [1/1] sft (sft): running" in proc.stdout  # the job's log was streamed
    assert f"[rlhf] job {job_id}: SUCCEEDED" in proc.stdout
    check_artifacts(out)

    capfd.readouterr()
    assert rlhf_main(["jobs", "status", job_id, "--address", ray_head]) == 0
    assert capfd.readouterr().out.startswith(f"{job_id}: SUCCEEDED")
    assert rlhf_main(["jobs", "logs", job_id, "--address", ray_head]) == 0
    assert "pipeline complete" in capfd.readouterr().out


def test_sdk_submission_succeeds(ray_head, tmp_path):
    """What the README shows for Ray's own SDK: the same entrypoint, working dir and token header."""
    from ray.job_submission import JobSubmissionClient

    out = tmp_path / "sdk"
    client = JobSubmissionClient(ray_head, headers={"Authorization": f"Bearer {auth_token()}"})
    job_id = client.submit_job(
        entrypoint=f"python -m rlhf.cli run smoke --out {out} " + " ".join(SHORT),
        runtime_env=runtime_env(REPO_ROOT, {"HF_HUB_OFFLINE": "1"}, pip=False),
    )
    status = wait_for(client, job_id, timeout_s=600)
    assert status == "SUCCEEDED", client.get_job_logs(job_id)[-3000:]
    check_artifacts(out)
    assert job_client(ray_head).get_job_status(job_id).value == "SUCCEEDED"
