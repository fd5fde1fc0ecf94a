"""Throughput and latency of the reward-model service (``rlhf serve``): dynamic batching vs one request at a time.

Starts the service (Ray Serve) on a reward model, sends the same workload of /score requests at concurrency
1, 8 and 64 (closed loop: each client sends its next request when the last one is answered), then redeploys
with batching off (max_batch_size=1) and scores the workload one request at a time. Prints requests/s and
p50/p99 latency per level and the speedup of batched-at-64 over the unbatched baseline.
Targets (issue 7): >= 8x at 64 concurrent clients, p99 <= 3x p50.

Run inside the loopback-only namespace:
    bash benchmarks/run.sh serve_throughput
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from rlhf.serve.config import ServeConfig
from rlhf.serve.launch import free_port, start_service, stop_service, wait_healthy
from rlhf.serve.random_rm import write_random_reward_model

WORDS = ("the a model answer question colour number cat sky river stone light green quick slow bright "
         "because therefore however explain describe list three reasons why how what").split()


def workload(n: int, items_per_request: int, seed: int = 0) -> list[dict]:
    """``n`` /score bodies of ``items_per_request`` pairs: short prompts, 20-60-word responses (PPO-like)."""
    rng = random.Random(seed)

    def pair() -> dict:
        return {"prompt": " ".join(rng.choices(WORDS, k=rng.randint(4, 16))) + "?",
                "response": " ".join(rng.choices(WORDS, k=rng.randint(20, 60)))}

    return [{"pairs": [pair() for _ in range(items_per_request)]} for _ in range(n)]


async def run_level(url: str, bodies: list[dict], concurrency: int) -> dict:
    """Closed-loop clients; returns requests/s and latency percentiles (ms). Any non-200 answer is an error."""
    latencies: list[float] = []
    queue = list(bodies)
    async with httpx.AsyncClient(base_url=url, timeout=120.0, trust_env=False,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        async def worker() -> None:
            while queue:
                body = queue.pop()
                started = time.perf_counter()
                answer = await client.post("/score", json=body)
                latencies.append(time.perf_counter() - started)
                if answer.status_code != 200:
                    raise RuntimeError(f"HTTP {answer.status_code}: {answer.text[:200]}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    ms = sorted(1000 * x for x in latencies)
    return {"concurrency": concurrency, "requests": len(ms), "req_per_s": len(ms) / elapsed,
            "p50_ms": statistics.median(ms), "p99_ms": ms[min(len(ms) - 1, int(0.99 * len(ms)))]}


def measure(url: str, bodies: list[dict], levels: list[int], warmup: int) -> list[dict]:
    asyncio.run(run_level(url, bodies[:warmup], max(levels)))  # first-batch costs (allocations, lazy imports)
    return [asyncio.run(run_level(url, bodies, c)) for c in levels]


def show(label: str, rows: list[dict]) -> None:
    for r in rows:
        print(f"{label:>10}  c={r['concurrency']:>3}  {r['req_per_s']:8.1f} req/s  p50 {r['p50_ms']:8.1f} ms  "
              f"p99 {r['p99_ms']:8.1f} ms  (p99/p50 {r['p99_ms'] / r['p50_ms']:.2f})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", help="reward-model dir; default: a random one of --size")
    parser.add_argument("--size", default="tiny-llama", help="embedded model size for the random RM")
    parser.add_argument("--requests", type=int, default=640, help="requests per batched level")
    parser.add_argument("--baseline-requests", type=int, default=160, help="requests for the unbatched baseline")
    parser.add_argument("--items-per-request", type=int, default=1)
    parser.add_argument("--levels", default="1,8,64", help="client concurrencies")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--cpus-per-replica", type=float, default=1.0)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="where the replica scores")
    parser.add_argument("--json", default="benchmarks/results/serve_throughput.json", help="write the results here")
    args = parser.parse_args()

    levels = [int(x) for x in args.levels.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model_dir or str(write_random_reward_model(Path(tmp) / "rm", size=args.size, max_length=256))
        base = ServeConfig(model_dir=model_dir, port=free_port(), max_batch_size=args.max_batch_size,
                           batch_wait_ms=args.batch_wait_ms, cpus_per_replica=args.cpus_per_replica,
                           device=args.device,
                           limits={"max_items": max(256, args.items_per_request)})
        bodies = workload(args.requests, args.items_per_request)
        try:
            url = start_service(base)
            wait_healthy(url, timeout_s=300)
            batched = measure(url, bodies, levels, warmup=128)
            show("batched", batched)
            # Same service, batching off: every item is its own forward pass, one request at a time.
            start_service(base.model_copy(update={"max_batch_size": 1, "batch_wait_ms": 0.0}))
            wait_healthy(url, timeout_s=300)
            baseline = measure(url, bodies[: args.baseline_requests], [1], warmup=16)
            show("unbatched", baseline)
        finally:
            stop_service(base.app_name)
    top = next(r for r in batched if r["concurrency"] == max(levels))
    ratio = top["req_per_s"] / baseline[0]["req_per_s"]
    print(f"speedup at c={top['concurrency']} (batched) over one-at-a-time unbatched: {ratio:.1f}x "
          f"(target >= 8x); p99/p50 at c={top['concurrency']}: {top['p99_ms'] / top['p50_ms']:.2f} (target <= 3)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({"batched": batched, "unbatched": baseline, "speedup": ratio,
                                               "p99_over_p50": top["p99_ms"] / top["p50_ms"],
                                               "size": args.size, "device": args.device,
                                               "items_per_request": args.items_per_request},
                                              indent=2))


if __name__ == "__main__":
    main()
