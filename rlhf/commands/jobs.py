"""``rlhf jobs list|status|logs|stop [ID] [--address URL]``: the Ray jobs that ``rlhf submit`` started."""

from __future__ import annotations

import argparse

from rlhf.errors import UserError


def add_parser(sub) -> None:
    p = sub.add_parser("jobs", help="list, inspect, follow or stop Ray jobs", description=__doc__)
    p.add_argument("action", choices=["list", "status", "logs", "stop"], help="what to do")
    p.add_argument("job_id", nargs="?", help="job id printed by `rlhf submit` (not for list)")
    p.add_argument("--address", help="Ray job server URL, e.g. http://HOST:8265 (default: RAY_ADDRESS)")
    p.add_argument("--follow", "-f", action="store_true", help="logs: stream until the job ends")
    p.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    from rlhf.pipeline.ray_jobs import follow_logs, job_client

    if args.action != "list" and not args.job_id:
        raise UserError(f"rlhf jobs {args.action}: give a job id")
    client = job_client(args.address)
    try:
        if args.action == "list":
            for job in client.list_jobs():
                name = (job.metadata or {}).get("pipeline", "")
                print(f"{job.submission_id or job.job_id}  {job.status.value:9s}  {name}  {job.entrypoint}")
        elif args.action == "status":
            info = client.get_job_info(args.job_id)
            print(f"{args.job_id}: {info.status.value}" + (f" ({info.message})" if info.message else ""))
        elif args.action == "logs":
            if args.follow:
                follow_logs(client, args.job_id)
            else:
                print(client.get_job_logs(args.job_id), end="")
        else:
            stopped = client.stop_job(args.job_id)
            print(f"{args.job_id}: {'stop requested' if stopped else 'already finished'}")
    except RuntimeError as err:  # the SDK raises RuntimeError for an unknown id
        raise UserError(f"job {args.job_id}: {str(err).splitlines()[0]}") from None
    return 0
