"""Submitting ``rlhf run`` to a Ray cluster as a Ray job, and watching it (Ray's JobSubmissionClient).

The job ships this repository as its ``working_dir`` (without .venv, runs, caches, .git), so the cluster runs the
same code and configs as the laptop; the entrypoint is ``python -m rlhf.cli run ...`` (the ``rlhf`` command, found
through the working dir even where the package is not installed). ``pip=True`` asks Ray to install the project's
dependencies (from pyproject.toml) in the job's environment, for clusters whose image lacks them.

Token auth (on by default for ``ray start --head`` since Ray 2.5x): the token is read like Ray's own clients do,
from RAY_AUTH_TOKEN, then the file named by RAY_AUTH_TOKEN_PATH, then ~/.ray/auth_token (``ray get-auth-token``
prints it), and sent as ``Authorization: Bearer <token>``; a cluster without auth ignores it.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

from rlhf.errors import UserError
from rlhf.paths import IN_CHECKOUT, REPO_ROOT

# Never uploaded with the working dir: environments, outputs, caches, VCS (Ray's limit is 500 MiB).
WORKING_DIR_EXCLUDES = [".venv", "runs", "out", ".cache", ".git", ".pytest_cache", "__pycache__", "*.egg-info",
                        "benchmarks/.venv-*", ".whl"]
# Passed from the submitting shell to the job when set there (offline hubs, caches).
PASS_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "HF_TOKEN", "RLHF_CACHE")
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


def auth_token() -> str | None:
    """Ray's token from the environment or ~/.ray/auth_token, if there is one."""
    token = os.environ.get("RAY_AUTH_TOKEN")
    if token:
        return token.strip()
    path = Path(os.environ.get("RAY_AUTH_TOKEN_PATH") or Path.home() / ".ray" / "auth_token").expanduser()
    if path.is_file():
        return path.read_text().strip() or None
    return None


def job_client(address: str | None):
    """A JobSubmissionClient for ``address`` (default: RAY_ADDRESS), sending the auth token when one is found."""
    from ray.job_submission import JobSubmissionClient

    address = address or os.environ.get("RAY_ADDRESS")
    if not address:
        raise UserError("no Ray address: pass --address http://HOST:8265 or set RAY_ADDRESS")
    token = auth_token()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    try:
        return JobSubmissionClient(address, headers=headers)
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise UserError(f"cannot reach the Ray job server at {address}: {str(err).splitlines()[0]}") from None


def project_requirements() -> list[str]:
    """The project's dependencies, as listed in pyproject.toml (the one list; no separate requirements file), or
    an installed wheel's metadata of that list."""
    if IN_CHECKOUT:
        return list(tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    from importlib.metadata import requires

    return [r for r in requires("rlhf") or [] if "extra ==" not in r]


def job_path(path: Path, working_dir: Path) -> str:
    """``path`` as the job sees it: relative to the uploaded working dir (the job's cwd)."""
    try:
        return str(path.resolve().relative_to(working_dir.resolve()))
    except ValueError:
        raise UserError(f"pipeline file {path} is outside the working dir {working_dir}, so the job cannot read it; "
                        "move it into the working dir or pass --working-dir") from None


def run_entrypoint(pipeline_arg: str, out: str, from_stage: str | None, overrides: list[str]) -> str:
    """The shell command the job runs: ``rlhf run`` through ``python -m`` (works from the working dir)."""
    cmd = ["python", "-m", "rlhf.cli", "run", pipeline_arg, "--out", out]
    if from_stage:
        cmd += ["--from", from_stage]
    return shlex.join(cmd + list(overrides))


def runtime_env(working_dir: Path, env: dict[str, str], pip: bool) -> dict[str, Any]:
    env_vars = {k: os.environ[k] for k in PASS_ENV if k in os.environ}
    env_vars.update(env)
    # The stages' ray.init passes env vars for their workers; without this, Ray refuses any key the job also sets.
    env_vars.setdefault("RAY_OVERRIDE_JOB_RUNTIME_ENV", "1")
    out: dict[str, Any] = {"working_dir": str(working_dir), "excludes": WORKING_DIR_EXCLUDES, "env_vars": env_vars}
    if pip:
        out["pip"] = project_requirements()
    return out


def parse_env(items: list[str]) -> dict[str, str]:
    env = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--env {item!r}: expected NAME=VALUE")
        env[key] = value
    return env


def submit_job(client, wait_agent_s: float = 120.0, **kwargs: Any) -> str:
    """``client.submit_job(**kwargs)``, retried while a freshly started head's job agent is not up yet."""
    deadline = time.time() + wait_agent_s
    while True:
        try:
            return client.submit_job(**kwargs)
        except RuntimeError as err:
            if "No available agent" in str(err) and time.time() < deadline:
                time.sleep(2.0)
                continue
            raise UserError(f"job submission failed: {str(err).splitlines()[0]}") from None


def follow_logs(client, job_id: str) -> None:
    """Stream the job's driver log to stdout until the job ends."""

    async def tail() -> None:
        async for chunk in client.tail_job_logs(job_id):
            sys.stdout.write(chunk)
            sys.stdout.flush()

    asyncio.run(tail())


def wait_for(client, job_id: str, timeout_s: float | None = None, poll_s: float = 2.0) -> str:
    """Poll until the job reaches SUCCEEDED, FAILED or STOPPED; returns that status."""
    deadline = None if timeout_s is None else time.time() + timeout_s
    while True:
        status = str(client.get_job_status(job_id).value)
        if status in TERMINAL:
            return status
        if deadline is not None and time.time() > deadline:
            raise TimeoutError(f"job {job_id} still {status} after {timeout_s}s")
        time.sleep(poll_s)
