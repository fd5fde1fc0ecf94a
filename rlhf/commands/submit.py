"""``rlhf submit PIPELINE --address http://HOST:8265 [--out DIR] [--follow] [STAGE.key=value ...]``.

Submits ``rlhf run PIPELINE`` to a Ray cluster as a Ray job (this repository as its working dir), prints the job
id, and with ``--follow`` streams the job's log until it ends. The same job by hand:
``ray job submit --address URL --working-dir . -- python -m rlhf.cli run PIPELINE --out DIR``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rlhf.paths import IN_CHECKOUT, REPO_ROOT


def add_parser(sub) -> None:
    p = sub.add_parser("submit", help="submit a pipeline to a Ray cluster as a Ray job", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("pipeline", help="shipped pipeline name or pipeline YAML inside the working dir")
    p.add_argument("--address", help="Ray dashboard / job server URL, e.g. http://HOST:8265 (default: RAY_ADDRESS)")
    p.add_argument("--out", help="output directory on the cluster; use shared storage on a multi-node cluster "
                                 "(default: ~/rlhf-runs/<pipeline> on the node running the job)")
    p.add_argument("--from", dest="from_stage", metavar="STAGE", help="rerun this stage and every stage after it")
    p.add_argument("--follow", "-f", action="store_true", help="stream the job's log until it ends")
    p.add_argument("--pip", action="store_true", help="install the project's dependencies in the job's environment")
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="environment variable for the job")
    p.add_argument("--working-dir", default=str(REPO_ROOT) if IN_CHECKOUT else ".",
                   help="directory uploaded as the job's working dir [the checkout, or the cwd when installed]")
    p.add_argument("--job-id", help="submission id to use (default: Ray picks one)")
    p.add_argument("overrides", nargs="*", help="STAGE.key.sub=value overrides, e.g. rm.optim.lr=1e-4")
    p.set_defaults(func=main)


def submit(pipeline: str, address: str | None, out: str | None = None, from_stage: str | None = None,
           overrides: list[str] | None = None, env: dict[str, str] | None = None, pip: bool = False,
           working_dir: str | Path = REPO_ROOT, job_id: str | None = None) -> tuple[object, str]:
    """Validate locally, then submit; returns (client, job id)."""
    from rlhf.pipeline.ray_jobs import job_client, job_path, run_entrypoint, runtime_env, submit_job
    from rlhf.pipeline.shipped import find_pipeline
    from rlhf.pipeline.spec import load_pipeline

    path = find_pipeline(pipeline)
    loaded = load_pipeline(path, overrides)  # a bad pipeline or override fails here, not on the cluster
    wd = Path(working_dir)
    entry = run_entrypoint(job_path(path, wd), out or f"~/rlhf-runs/{loaded.name}", from_stage, list(overrides or []))
    client = job_client(address)
    submitted = submit_job(
        client,
        entrypoint=entry,
        runtime_env=runtime_env(wd, dict(env or {}), pip),
        submission_id=job_id,
        metadata={"pipeline": loaded.name, "submitted_by": "rlhf submit"},
    )
    return client, submitted


def main(args: argparse.Namespace) -> int:
    from rlhf.pipeline.ray_jobs import follow_logs, parse_env, wait_for

    client, job_id = submit(args.pipeline, args.address, args.out, args.from_stage, args.overrides,
                            parse_env(args.env), args.pip, args.working_dir, args.job_id)
    print(job_id, flush=True)
    if not args.follow:
        print(f"[rlhf] submitted; follow with `rlhf jobs logs {job_id} --follow`", flush=True)
        return 0
    follow_logs(client, job_id)
    time.sleep(0.5)
    status = wait_for(client, job_id)
    print(f"[rlhf] job {job_id}: {status}", flush=True)
    return 0 if status == "SUCCEEDED" else 1
