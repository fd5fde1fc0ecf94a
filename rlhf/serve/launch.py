"""Start and stop the scoring service on Ray Serve, and wait until it answers.

The service binds 127.0.0.1 unless told otherwise. Ray's own ports (dashboard 8265, job/client 10001, GCS) are
never meant for the public internet: anyone who reaches them can run code on the cluster.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from rlhf.errors import UserError
from rlhf.net import is_loopback
from rlhf.paths import resolve_path
from rlhf.serve.config import ServeConfig


def deployment_options(cfg: ServeConfig, use_gpu: bool) -> dict[str, Any]:
    """Replica count or autoscaling, resources and concurrency for ``RewardModelServer.options``."""
    options: dict[str, Any] = {
        "max_ongoing_requests": cfg.max_ongoing_requests,
        "ray_actor_options": {"num_cpus": cfg.cpus_per_replica, "num_gpus": 1 if use_gpu else 0},
    }
    if cfg.autoscaling is not None:
        options["autoscaling_config"] = cfg.autoscaling.model_dump()
    else:
        options["num_replicas"] = cfg.replicas
    return options


def resolve_device(cfg: ServeConfig) -> bool:
    """Whether replicas take a GPU: ``cuda`` always, ``auto`` when the Ray cluster has one."""
    from rlhf.engine.launch import cluster_has_gpus

    if cfg.device == "cuda" and not cluster_has_gpus():
        raise UserError("device: cuda, but the Ray cluster has no GPUs")
    return cfg.device == "cuda" or (cfg.device == "auto" and cluster_has_gpus())


def start_service(cfg: ServeConfig, token_sha256: str | None = None) -> str:
    """Deploy the reward model and return the service's base URL once every replica is up."""
    from ray import serve

    from rlhf.engine.launch import ensure_ray
    from rlhf.models.reward import check_reward_model
    from rlhf.serve.deployment import RewardModelServer

    model_dir = resolve_path(cfg.model_dir)  # a local dir: an absolute path is never taken for a hub id
    check_reward_model(str(model_dir))
    if not is_loopback(cfg.host):
        print(f"[rlhf] warning: binding {cfg.host}:{cfg.port}, reachable beyond this machine"
              + ("" if token_sha256 else " with no token (use --token-env)"), file=sys.stderr)
    ensure_ray(cfg.address)
    use_gpu = resolve_device(cfg)
    settings = cfg.model_copy(update={"model_dir": str(model_dir.resolve())}).model_dump()
    # One access-log line per request would cost more than scoring a small batch; Serve's metrics count requests.
    logging_config = {"enable_access_log": False, "log_level": "WARNING"}
    serve.start(http_options={"host": cfg.host, "port": cfg.port}, logging_config=logging_config)
    deployment = RewardModelServer.options(**deployment_options(cfg, use_gpu), logging_config=logging_config)
    serve.run(deployment.bind(settings, token_sha256), name=cfg.app_name, route_prefix="/",
              logging_config=logging_config)
    host = "127.0.0.1" if cfg.host in ("0.0.0.0", "::") else cfg.host
    return f"http://{host}:{cfg.port}"


def stop_service(app_name: str = "rlhf-rm") -> None:
    """Delete the application and shut Serve down (its proxy too), leaving the Ray instance running."""
    from ray import serve

    serve.delete(app_name)
    serve.shutdown()


def metrics_url() -> str | None:
    """Where this Ray node exports Prometheus metrics (Serve's request/latency/batch series and ours)."""
    import ray

    for node in ray.nodes():
        if node.get("Alive") and node.get("MetricsExportPort"):
            return f"http://{node['NodeManagerAddress']}:{node['MetricsExportPort']}/metrics"
    return None


def wait_healthy(url: str, token: str | None = None, timeout_s: float = 120.0) -> dict:
    """Poll ``GET /health`` until it answers 200 (the proxy may take a moment after deploy)."""
    import httpx

    headers = {"Authorization": f"Bearer {token}"} if token else {}
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{url}/health", headers=headers, timeout=5.0, trust_env=False)
            if response.status_code == 200:
                return response.json()
            last = f"HTTP {response.status_code}"
        except httpx.HTTPError as err:
            last = type(err).__name__
        time.sleep(0.5)
    raise RuntimeError(f"{url}/health did not answer 200 within {timeout_s:.0f} s (last: {last})")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (for tests and benchmarks that start a service)."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
