"""The GPU run's PPO and multi-rank steps (benchmarks/gpu_bench.py registers them as subcommands):

  ppo        PPO of the 1.1B model with all four roles (actor, critic, reference, reward) on the one GPU, each a
             quarter of it: time per phase from metrics.jsonl, each role's peak memory against `rlhf plan`.
  multirank  two ranks on CUDA tensors in one process group on the one GPU: a probe picks NCCL if it takes two
             ranks on one device, else gloo (which serves CUDA tensors too); then SFT with 2 workers under ZeRO-2
             and PPO with a 2-worker actor role run with that backend. On 8 GPUs each rank would own a GPU; what
             this reproduces is every collective seeing CUDA tensors in a group of more than one rank.

--dry-run (CPU): builds and validates the same configs and their plans, trains nothing.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

PPO_PROMPTS, PPO_NEW_TOKENS, PPO_ITERATIONS = 64, 256, 3  # the first iteration pays for compile/warm-up


def ppo_overrides(actor: str, reward: str, gpu: bool, iterations: int, prompts: int, new_tokens: int,
                  actor_workers: int = 1, gpus_per_bundle: float = 1.0, backend: str = "auto",
                  colocate_all: bool = True) -> list[str]:
    """configs/ppo/tiny.yaml put on the GPU: bf16, ZeRO-2; ``colocate_all``: the four roles share each bundle (a
    quarter of it each), else one bundle per role worker, ``gpus_per_bundle`` of a GPU each."""
    mini = max(actor_workers, min(prompts, 32))
    return [
        f"actor.path={actor}", "reward.function=null", f"reward.model={reward}", f"critic.path={reward}",
        "prompts.max_prompt_length=128",
        f"rollout.prompts_per_iteration={prompts}", f"rollout.max_new_tokens={new_tokens}",
        f"rollout.forward_batch_size={min(prompts, 32)}", "rollout.generation.engine=static",
        "algorithm.ppo_epochs=1", f"algorithm.mini_batch_size={mini}",
        f"loop.iterations={iterations}", "loop.checkpoint_every=0",
        "deepspeed.zero_stage=2", f"deepspeed.precision={'bf16' if gpu else 'fp32'}",
        f"resources.actor_workers={actor_workers}", f"resources.use_gpu={str(gpu).lower()}",
        f"resources.gpus_per_bundle={gpus_per_bundle}", f"resources.backend={backend}",
        f"resources.colocate_all={str(colocate_all).lower()}",
        "resources.cpus_per_bundle=2", "resources.threads_per_worker=2",
    ]


def ppo_config(overrides: list[str]):
    from rlhf.config import load_config
    from rlhf.paths import REPO_ROOT
    from stages import ppo

    return load_config(ppo.Config, str(REPO_ROOT / "configs" / "ppo" / "tiny.yaml"), overrides)


def phase_times(rows: list[dict]) -> dict:
    """Median per-phase seconds over the iterations after the first (warm-up), and generation's share."""
    timed = [r for r in rows if "time_iteration_s" in r][1:] or [r for r in rows if "time_iteration_s" in r]
    keys = sorted({k for r in timed for k in r if k.startswith("time_")})
    med = {k.removeprefix("time_"): statistics.median(r[k] for r in timed) for k in keys}
    if med.get("iteration_s"):
        med["generation_share"] = med.get("generation_s", 0.0) / med["iteration_s"]
    return med


def role_peaks(rows: list[dict]) -> dict[str, float]:
    """The largest gpu_mem_peak_gib_<role> any iteration logged (each role's rank 0, GiB)."""
    out: dict[str, float] = {}
    for r in rows:
        for k, v in r.items():
            if k.startswith("gpu_mem_peak_gib_"):
                role = k.removeprefix("gpu_mem_peak_gib_")
                out[role] = max(out.get(role, 0.0), v)
    return out


def cmd_ppo(args) -> None:
    import torch

    from rlhf.metrics import read_metrics
    from rlhf.serve.random_rm import write_random_reward_model
    from stages import ppo

    import gpu_bench

    gpu = not args.dry_run
    gib = torch.cuda.get_device_properties(0).total_memory / 2**30 if gpu else 0.0
    if args.dry_run:
        actor, reward = "embedded:tiny-llama", str(write_random_reward_model(args.work / "rm-tiny"))
        prompts, new_tokens = 4, 4
    else:
        actor = str(gpu_bench.build_model_dir(args.work, gpu_bench.VOCAB, gpu_bench.MODEL_SIZE))
        reward = str(args.work / "rm-llama-1b")
        if not (Path(reward) / "config.json").is_file():
            write_random_reward_model(reward, size=gpu_bench.MODEL_SIZE, device="cuda")
        prompts, new_tokens = PPO_PROMPTS, PPO_NEW_TOKENS
    cfg = ppo_config(ppo_overrides(actor, reward, gpu, PPO_ITERATIONS, prompts, new_tokens))
    plan = gpu_bench.planned_memory("ppo", cfg, gib)
    part = {"model": gpu_bench.MODEL_SIZE if gpu else "tiny-llama", "prompts": prompts, "max_new_tokens": new_tokens,
            "iterations": PPO_ITERATIONS, "plan": plan}
    if args.dry_run:
        gpu_bench.save_part(args.parts, "ppo", {**part, "dry_run": True})
        return
    out = args.work / "ppo-run"
    started = time.perf_counter()
    ppo.run(cfg, out)
    rows = read_metrics(out)
    peaks = role_peaks(rows)
    compare = {role: peaks[role] / plan["roles"][role]["states_and_activations_gib"]
               for role in peaks if role in plan["roles"] and plan["roles"][role]["states_and_activations_gib"]}
    gpu_bench.save_part(args.parts, "ppo", {**part, "phases": phase_times(rows), "gpu_mem_peak_gib": peaks,
                                            "measured_over_plan": compare,
                                            "stage_wall_s": time.perf_counter() - started})


def _probe_rank(rank: int, backend: str, port: int, result: dict) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group(backend, rank=rank, world_size=2)
    t = torch.ones(4, device="cuda")
    dist.all_reduce(t)
    torch.cuda.synchronize()
    result[rank] = float(t[0])
    dist.destroy_process_group()


def probe_backend(timeout_s: float = 60.0) -> tuple[str, dict]:
    """'nccl' if two processes on the one GPU can all-reduce a CUDA tensor with it, else 'gloo' (tried too)."""
    import multiprocessing as mp

    from rlhf.serve.launch import free_port

    tried = {}
    ctx = mp.get_context("spawn")
    for backend in ("nccl", "gloo"):
        with ctx.Manager() as manager:
            result = manager.dict()
            port = free_port()
            procs = [ctx.Process(target=_probe_rank, args=(r, backend, port, result)) for r in range(2)]
            for p in procs:
                p.start()
            for p in procs:
                p.join(timeout_s)
            alive = [p for p in procs if p.is_alive()]
            for p in alive:
                p.kill()
            ok = not alive and all(p.exitcode == 0 for p in procs) and dict(result) == {0: 2.0, 1: 2.0}
            tried[backend] = "ok" if ok else f"failed (exit codes {[p.exitcode for p in procs]})"
        if ok:
            return backend, tried
    raise RuntimeError(f"no backend all-reduces CUDA tensors with two ranks on one GPU: {tried}")


def cmd_multirank(args) -> None:
    from rlhf.config import load_config
    from rlhf.serve.random_rm import write_random_reward_model
    from stages import ppo, sft

    import gpu_bench

    gpu = not args.dry_run
    backend, tried = probe_backend() if gpu else ("gloo", {"dry_run": "not probed"})
    data = args.work / "multirank-rows.jsonl"
    args.work.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps(r) + "\n" for r in gpu_bench.long_rows(32, 40)))
    sft_over = [f"data.path={data}", "data.format=alpaca", "data.max_length=64", "data.eval_fraction=0.1",
                "model.path=embedded:tiny-llama", "train.max_steps=4", "train.log_every=1",
                "deepspeed.zero_stage=2", "deepspeed.micro_batch_size=2",
                f"deepspeed.precision={'bf16' if gpu else 'fp32'}", "resources.num_workers=2",
                f"resources.use_gpu={str(gpu).lower()}", "resources.gpus_per_worker=0.5",
                f"resources.backend={backend}", "resources.cpus_per_worker=1"]
    sft_cfg = load_config(sft.Config, None, sft_over)
    reward = str(write_random_reward_model(args.work / "rm-tiny"))
    # Five bundles (actor x2, critic, ref, reward) share the one GPU; the actor role has two ranks (its own group).
    ppo_cfg = ppo_config(ppo_overrides("embedded:tiny-llama", reward, gpu, 2, 8, 8, actor_workers=2,
                                       gpus_per_bundle=0.2, backend=backend, colocate_all=False))
    part = {"backend": backend, "probe": tried, "sft_workers": sft_cfg.resources.num_workers,
            "ppo_actor_workers": ppo_cfg.resources.actor_workers}
    if args.dry_run:
        gpu_bench.save_part(args.parts, "multirank", {**part, "dry_run": True})
        return
    result = sft.run(sft_cfg, args.work / "multirank-sft")
    part["sft"] = {"status": result["status"], "world_size": json.loads(
        (args.work / "multirank-sft" / "train_result.json").read_text())["world_size"],
        "loss_last": result["metrics"].get("train_loss_last")}
    result = ppo.run(ppo_cfg, args.work / "multirank-ppo")
    part["ppo"] = {"status": result["status"], "iterations": result["metrics"].get("iterations"),
                   "reward_mean_last": result["metrics"].get("reward_mean_last")}
    ok = part["sft"]["status"] == "complete" and part["sft"]["world_size"] == 2 and part["ppo"]["status"] == "complete"
    gpu_bench.save_part(args.parts, "multirank", {**part, "ok": ok})
    if not ok:
        raise SystemExit(f"[gpu] multirank failed: {part}")
