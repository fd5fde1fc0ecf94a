"""``rlhf serve RM_DIR``: serve a reward model over HTTP (Ray Serve, dynamic batching) until Ctrl-C.

Endpoints: POST /score, POST /get_reward (OpenRLHF's remote-RM protocol), GET /health, GET /docs (OpenAPI).
"""

from __future__ import annotations

import argparse
import signal
import time

from rlhf.config import apply_overrides, read_yaml, validate
from rlhf.serve.config import ServeConfig

# Flag -> config key; flags override the YAML, and key=value overrides reach every other setting.
FLAG_KEYS = {
    "host": "host",
    "port": "port",
    "replicas": "replicas",
    "max_batch_size": "max_batch_size",
    "batch_wait_ms": "batch_wait_ms",
    "max_ongoing_requests": "max_ongoing_requests",
    "device": "device",
    "token_env": "token_env",
}


def add_parser(sub) -> None:
    p = sub.add_parser(
        "serve",
        help="serve a reward model over HTTP (POST /score, POST /get_reward)",
        description=__doc__,
        epilog="Binds 127.0.0.1 by default. Never expose Ray's dashboard (8265) or job port (10001) publicly.",
    )
    p.add_argument("model_dir", metavar="RM_DIR", help="HF sequence-classification dir with one label (rm stage output)")
    p.add_argument("--config", "-c", help="serve YAML (e.g. configs/serve/default.yaml); flags override it")
    p.add_argument("--host", help="address to bind [127.0.0.1]")
    p.add_argument("--port", type=int, help="HTTP port [8000]")
    p.add_argument("--replicas", type=int, help="model replicas [1]")
    p.add_argument("--max-batch-size", type=int, help="texts per forward pass [32]")
    p.add_argument("--batch-wait-ms", type=float, help="how long a batch waits to fill [5]")
    p.add_argument("--max-ongoing-requests", type=int, help="requests in flight per replica [256]")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="where replicas run [auto]")
    p.add_argument("--token-env", metavar="VAR", help="require Authorization: Bearer $VAR on every request")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides, e.g. limits.max_items=64")
    p.set_defaults(func=main)


def config_from_args(args: argparse.Namespace) -> ServeConfig:
    """YAML (optional), then key=value overrides, then flags (typed by argparse, never re-parsed as YAML)."""
    data = read_yaml(args.config) if args.config else {}
    apply_overrides(data, list(args.overrides or []), ServeConfig)
    data["model_dir"] = args.model_dir
    data.update({key: getattr(args, flag) for flag, key in FLAG_KEYS.items() if getattr(args, flag) is not None})
    return validate(ServeConfig, data, where=args.config or "rlhf serve")


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


def main(args: argparse.Namespace) -> int:
    from rlhf.serve.auth import read_token, token_digest
    from rlhf.serve.launch import metrics_url, start_service, stop_service, wait_healthy

    cfg = config_from_args(args)
    token = read_token(cfg.token_env) if cfg.token_env else None
    url = start_service(cfg, token_digest(token) if token else None)
    previous = signal.signal(signal.SIGTERM, _interrupt)  # `kill`, docker stop, systemd: shut down like Ctrl-C
    try:
        health = wait_healthy(url, token)
        print(f"[rlhf] serving {health['model']} at {url} (POST /score, POST /get_reward, docs at {url}/docs)")
        print(f"[rlhf] Prometheus metrics: {metrics_url() or 'not exported by this Ray node'}")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("[rlhf] stopping")
    finally:
        stop_service(cfg.app_name)
        signal.signal(signal.SIGTERM, previous)
    return 0
