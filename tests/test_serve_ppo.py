"""End to end: the PPO stage with ``reward.url`` pointed at a running ``rlhf serve`` service (loopback namespace)."""

from __future__ import annotations

import json
import math
import time

import httpx
import pytest

from rlhf.config import load_config
from rlhf.paths import CONFIGS_DIR
from rlhf.serve.config import ServeConfig
from rlhf.serve.launch import free_port, metrics_url, start_service, stop_service, wait_healthy
from rlhf.serve.random_rm import write_random_reward_model

pytestmark = pytest.mark.slow

PROMPTS_PER_ITERATION, ITERATIONS = 8, 1
PROTOCOLS = ("score", "get_reward")


def items_scored() -> float:
    """The service's own Prometheus counter, summed over replicas (0 before the first export)."""
    text = httpx.get(metrics_url(), timeout=10.0, trust_env=False).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("ray_rlhf_rm_items_scored") and not line.startswith("#"))


def test_ppo_stage_scores_through_the_service(tmp_path):
    """Both protocols against one service: our /score and OpenRLHF's /get_reward (whole decoded sequences)."""
    import stages.ppo as ppo

    rm_dir = write_random_reward_model(tmp_path / "rm", max_length=128)
    # A small CPU share, so the PPO roles' placement group still fits on a 2-CPU machine beside the replica.
    serve_cfg = ServeConfig(model_dir=str(rm_dir), port=free_port(), cpus_per_replica=0.25)
    url = start_service(serve_cfg)
    try:
        wait_healthy(url, timeout_s=180)
        for route in PROTOCOLS:
            cfg = load_config(ppo.Config, CONFIGS_DIR / "ppo" / "tiny.yaml", [
                f"reward.url={url}/{route}", "reward.function=null", "reward.kwargs={}",
                f"rollout.prompts_per_iteration={PROMPTS_PER_ITERATION}", f"loop.iterations={ITERATIONS}",
                "resources.cpus_per_bundle=0.25",
            ])
            manifest = ppo.run(cfg, tmp_path / route)
            assert manifest["status"] == "complete"
            rows = [json.loads(line) for line in (tmp_path / route / "metrics.jsonl").read_text().splitlines()]
            rewards = [r["reward_mean"] for r in rows if "reward_mean" in r]
            assert len(rewards) == ITERATIONS and all(math.isfinite(r) for r in rewards), route
        expected = PROMPTS_PER_ITERATION * ITERATIONS * len(PROTOCOLS)
        deadline, scored = time.monotonic() + 60, 0.0
        while time.monotonic() < deadline:  # Ray exports metrics on an interval
            scored = items_scored()
            if scored >= expected:
                break
            time.sleep(2)
        assert scored >= expected
    finally:
        stop_service(serve_cfg.app_name)
