"""The GPU run's measurements and checks, one subcommand each (benchmarks/gpu_check.sh runs them in order):

  matmul     bf16 8192^3 matrix products (the MFU denominator, TFLOP/s) and the device copy rate
  model      the ~1.1B LLaMA dir (TinyLlama shape, vocab 32000, random weights) the next steps share
  sft        SFT of that model through stages.sft.run: 1 Ray Train worker on the GPU, ZeRO-2, bf16, seq 2048 ->
             tokens/s, MFU, the rank's peak memory against `rlhf plan` (``--kernels liger|hf``)
  ppo        PPO of that model, all roles on the one GPU (benchmarks/gpu_ppo.py)
  multirank  two ranks on CUDA tensors on the one GPU: SFT ZeRO-2 and a 2-worker PPO actor (benchmarks/gpu_ppo.py)
  overrides  the `rlhf run` overrides that put a pipeline's stages on the GPUs this machine has
  manifests  every DIR/*/manifest.json must say "complete"; the eval stage's figures
  report     merge the parts into one JSON and print a table against issue 19's targets
(Sampling and the scoring service have programs of their own: benchmarks/sampling.py, benchmarks/serve_throughput.py.)

MFU follows PaLM (Chowdhery et al. 2022, appendix B): model FLOPs per token = 6N + 12·L·H·Q·T for forward and
backward, N = the weights that take part in matmuls (every parameter but the input embedding, a lookup; the
untied LM head counts), L layers, H heads of size Q (H·Q = d_model), T = sequence length. MFU = FLOPs/token ×
tokens/s ÷ the bf16 matmul rate measured in the same run (not the datasheet peak). ``mfu_causal`` halves the
attention term (flash attention skips the masked half).

Every subcommand takes --dry-run: on CPU it validates configs and runs the code paths at toy sizes; no GPU needed.
    python benchmarks/gpu_bench.py sft --parts DIR [--dry-run]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))  # gpu_ppo

SEQ, VOCAB, MODEL_SIZE = 2048, 32000, "llama-1b"
WARMUP_STEPS = 3
MAX_ITERATIONS, MAX_STEPS = 8, 300  # keep the pipeline inside the check's time budget


def save_part(parts: Path, name: str, data: dict) -> None:
    parts.mkdir(parents=True, exist_ok=True)
    (parts / f"{name}.json").write_text(json.dumps(data, indent=2))
    print(f"[gpu] {name}: {json.dumps(data)}", flush=True)


def model_flops_per_token(n_matmul_params: int, layers: int, d_model: int, seq: int, causal: bool = False) -> float:
    """PaLM appendix B: 6N + 12·L·H·Q·T (forward + backward); ``causal`` counts half the attention matmuls."""
    attention = 12 * layers * d_model * seq
    return 6 * n_matmul_params + (attention / 2 if causal else attention)


def bench_config(vocab: int = VOCAB, size: str = MODEL_SIZE):
    from rlhf.models.tiny import llama_config
    from rlhf.models.tokenizer import EMBEDDED_TOKENIZER, load_tokenizer

    tok = load_tokenizer(EMBEDDED_TOKENIZER)
    # A LLaMA-sized vocab (the SentencePiece one does not travel); ids above the embedded tokenizer's are unused.
    return tok, llama_config(size, max(vocab, len(tok)), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)


def count_params(config) -> tuple[int, int]:
    """(all parameters, matmul parameters) of a LlamaForCausalLM, counted on the meta device (no memory)."""
    import torch
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    total = sum(p.numel() for p in model.parameters())
    return total, total - model.get_input_embeddings().weight.numel()


def build_model_dir(work: Path, vocab: int, size: str) -> Path:
    """Random-weight HF dir (bf16) with the embedded tokenizer, built on the GPU when there is one (seconds)."""
    import torch
    from transformers import LlamaForCausalLM

    target = work / f"{size}-v{vocab}"
    if (target / "config.json").is_file():
        return target
    tok, config = bench_config(vocab, size)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(target, safe_serialization=True)
    tok.save_pretrained(target)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return target


def cmd_matmul(args) -> None:
    """bf16 matmul rate (the MFU denominator) and the device copy rate (the sampling bandwidth bound's numerator)."""
    import torch

    n, reps = (256, 2) if args.dry_run else (8192, 10)
    dev = "cpu" if args.dry_run else "cuda"
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    seconds = median_seconds(lambda: a @ b, reps, dev)
    # Copy rate: bytes read + written by a device-to-device copy of a 2 GiB buffer (KINDS.md saw ~4.3 TB/s).
    size = (1 << 20) if args.dry_run else (1 << 31)
    src = torch.empty(size, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    copy_s = median_seconds(lambda: dst.copy_(src), reps, dev)
    save_part(args.parts, "matmul", {"n": n, "reps": reps, "median_s": seconds,
                                     "bf16_matmul_tflops": 2 * n**3 / seconds / 1e12,
                                     "copy_bytes": 2 * size, "copy_gb_per_s": 2 * size / copy_s / 1e9})


def median_seconds(fn, reps: int, dev: str) -> float:
    """Median wall time of ``fn`` over ``reps`` runs after 3 warm-ups (CUDA events on the GPU)."""
    import torch

    for _ in range(3):
        fn()
    times = []
    for _ in range(reps):
        if dev == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def long_rows(n: int, words: int) -> list[dict]:
    """Alpaca rows long enough that every example is cut to exactly SEQ tokens (full sequences, no padding)."""
    vocab = "the quick brown fox jumps over a lazy dog while seven small birds sing in the tall green tree".split()
    return [{"instruction": f"Write passage number {i}.", "input": "",
             "output": " ".join(vocab[(i + j) % len(vocab)] for j in range(words))} for i in range(n)]


def sft_overrides(data: Path, model_dir: Path, steps: int, micro: int, accum: int, seq: int, gpu: bool,
                  kernels: str = "hf") -> list[str]:
    return [f"model.kernels={kernels}",
        f"data.path={data}", "data.format=alpaca", "data.template=alpaca", f"data.max_length={seq}",
        "data.eval_fraction=0", f"model.path={model_dir}", "model.gradient_checkpointing=false",
        f"train.max_steps={steps}", "train.log_every=1", "train.eval_every=0", "train.checkpoint_every=0",
        "deepspeed.zero_stage=2", f"deepspeed.micro_batch_size={micro}", f"deepspeed.gradient_accumulation_steps={accum}",
        f"deepspeed.precision={'bf16' if gpu else 'fp32'}", "resources.num_workers=1", f"resources.use_gpu={str(gpu).lower()}",
        "resources.cpus_per_worker=4", "optim.lr=1e-5", "optim.schedule=constant",
    ]


def pick_micro_batch(gpu_gib: float) -> int:
    """Sequences of 2048 per forward pass. Estimate for the 1.1B model, no activation checkpointing: ~22 GiB of
    ZeRO-2 states (bf16 weights and grads, fp32 master, Adam moments) + ~7 GiB of activations and logits per
    sequence, so 4 on an 80 GB H100 (~50 GiB) and 8 on a 141 GB H200 (~78 GiB)."""
    return 8 if gpu_gib > 120 else 4


def cmd_sft(args) -> None:
    import torch

    from rlhf.config import load_config
    from rlhf.data.splits import load_examples
    from rlhf.metrics import read_metrics
    from stages import sft

    gpu = not args.dry_run
    vocab, size, seq = (VOCAB, MODEL_SIZE, SEQ) if gpu else (512, "tiny-llama", 64)
    gib = torch.cuda.get_device_properties(0).total_memory / 2**30 if gpu else 0.0
    micro = args.micro or (pick_micro_batch(gib) if gpu else 2)
    accum = max(1, args.seqs_per_step // micro) if gpu else 1
    _, config = bench_config(vocab, size)
    total, matmul = count_params(config)
    data = args.work / "sft-rows.jsonl"
    args.work.mkdir(parents=True, exist_ok=True)
    data.write_text("".join(json.dumps(r) + "\n" for r in long_rows(64, int(seq * 1.2))))
    kernels = args.kernels if gpu else "hf"
    cfg = load_config(sft.Config, None, sft_overrides(data, args.work / "model", args.steps, micro, accum, seq, gpu,
                                                      kernels))
    part = {"model": f"{size} (vocab {config.vocab_size})", "params": total, "matmul_params": matmul,
            "layers": config.num_hidden_layers, "d_model": config.hidden_size, "seq": seq, "micro_batch": micro,
            "grad_accum": accum, "zero_stage": cfg.deepspeed.zero_stage, "precision": cfg.deepspeed.precision,
            "kernels": kernels,
            "flops_per_token": model_flops_per_token(matmul, config.num_hidden_layers, config.hidden_size, seq)}
    if args.dry_run:
        cfg = load_config(sft.Config, None, sft_overrides(data, "embedded:tiny-llama", 1, micro, accum, seq, gpu))
        save_part(args.parts, "sft" if args.kernels == "liger" else "sft_hf",
                  {**part, "plan": planned_memory("sft", cfg, gib), "dry_run": True})
        return
    model_dir = build_model_dir(args.work, vocab, size)
    cfg = load_config(sft.Config, None, sft_overrides(data, model_dir, args.steps, micro, accum, seq, gpu, kernels))
    part["plan"] = planned_memory("sft", cfg, gib)
    out = args.work / f"sft-run-{kernels}"
    started = time.perf_counter()
    sft.run(cfg, out)
    lengths = {len(e["input_ids"]) for e in load_examples(out, "train")}
    if lengths != {seq}:
        raise RuntimeError(f"sft bench: examples must all be {seq} tokens, got lengths {sorted(lengths)[:5]}")
    rows = read_metrics(out)
    speeds = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r][WARMUP_STEPS:]
    peak = max((r["gpu_mem_peak_gib"] for r in rows if "gpu_mem_peak_gib" in r), default=None)
    tps = statistics.median(speeds)
    matmul_part = args.parts / "matmul.json"
    rate = json.loads(matmul_part.read_text())["bf16_matmul_tflops"] * 1e12 if matmul_part.is_file() else None
    causal = model_flops_per_token(matmul, config.num_hidden_layers, config.hidden_size, seq, causal=True)
    save_part(args.parts, "sft" if kernels == "liger" else "sft_hf", {**part, "steps_timed": len(speeds), "tokens_per_s": tps,
                                  "mfu": part["flops_per_token"] * tps / rate if rate else None,
                                  "mfu_causal": causal * tps / rate if rate else None,
                                  "stage_wall_s": time.perf_counter() - started, "model_dir": str(model_dir),
                                  "gpu_mem_peak_gib": peak, "measured_over_plan":
                                      peak / part["plan"]["states_and_activations_gib"] if peak else None})


def planned_memory(stage: str, cfg, gpu_gib: float) -> dict:
    """`rlhf plan`'s per-GPU estimate for one stage config on this GPU, in GiB: each role's weights + gradients +
    optimizer states + its largest phase's activations (what torch.cuda.max_memory_allocated measures; the plan's
    peak adds a reserve for the CUDA context and allocator slack, which that counter does not see)."""
    from rlhf.plan.estimate import Hardware, estimate_stage

    hw = Hardware(gpus_per_node=1, nodes=1, gpu_mem=int((gpu_gib or 80) * 2**30))
    plan = estimate_stage(stage, cfg, hw, suggest=False)
    g = 2**30
    roles = {r.role: {"weights_gib": r.weights / g, "gradients_gib": r.gradients / g,
                      "optimizer_states_gib": r.optimizer_states / g,
                      "transients_gib": {k: v / g for k, v in r.transients.items()},
                      "states_and_activations_gib": (r.states + max(r.transients.values(), default=0)) / g}
             for r in plan.roles}
    first = next(iter(roles.values()))
    return {"roles": roles, "states_and_activations_gib": first["states_and_activations_gib"],
            "plan_peak_gib": plan.gpu_peak / g, "verdict": plan.verdict}


def gpu_overrides(pipeline, gpus: int) -> tuple[list[str], list[str]]:
    """Overrides putting every stage's Ray workers on GPUs (bf16, at most ``gpus`` GPU workers at once), and notes:
    a PPO placement with more bundles than GPUs gives each bundle a share of a GPU (``gpus_per_bundle``). PPO loops
    are cut to MAX_ITERATIONS and training to MAX_STEPS: the check proves the path, the pipeline's own runs the
    learning."""
    from pydantic import BaseModel

    from rlhf.pipeline.spec import validate_stage
    from rlhf.ppo.placement import plan

    overrides, notes = [], []

    def walk(section: BaseModel, prefix: str) -> None:
        fields = type(section).model_fields
        if "precision" in fields:
            overrides.append(f"{prefix}precision=bf16")
        if "use_gpu" in fields:
            use_gpu = True
            for key in ("num_workers", "num_actors"):
                if key in fields and getattr(section, key) > gpus:
                    overrides.append(f"{prefix}{key}={gpus}")
            if "actor_workers" in fields:  # PPO: one bundle per role (or colocated pair); share the GPUs
                bundles, _ = plan(section, True)
                if len(bundles) > gpus:
                    share = math.floor(100 * gpus / len(bundles)) / 100
                    overrides.append(f"{prefix}gpus_per_bundle={share}")
                    notes.append(f"{prefix}gpus_per_bundle={share}: PPO's {len(bundles)} bundles share "
                                 f"{gpus} GPU(s)")
            overrides.append(f"{prefix}use_gpu={str(use_gpu).lower()}")
        if "iterations" in fields and section.iterations > MAX_ITERATIONS:  # a path check, not a training run
            overrides.append(f"{prefix}iterations={MAX_ITERATIONS}")
        if "max_steps" in fields and (section.max_steps or 0) > MAX_STEPS:
            overrides.append(f"{prefix}max_steps={MAX_STEPS}")
        for name in fields:
            value = getattr(section, name)
            if isinstance(value, BaseModel):
                walk(value, f"{prefix}{name}.")

    for stage in pipeline.spec.stages:
        walk(validate_stage(pipeline, stage), f"{stage.name}.")
    return overrides, notes


def cmd_model(args) -> None:
    """Build the 1.1B random-weight dir the sampling, SFT and PPO steps share (on the GPU: seconds)."""
    if args.dry_run:
        save_part(args.parts, "model", {"dry_run": True})
        return
    started = time.perf_counter()
    path = build_model_dir(args.work, VOCAB, MODEL_SIZE)
    save_part(args.parts, "model", {"dir": str(path), "build_s": time.perf_counter() - started})


def cmd_overrides(args) -> None:
    """Write PARTS/overrides.txt, one override per line (for `rlhf run`), after checking the pipeline accepts them."""
    from rlhf.pipeline.shipped import find_pipeline
    from rlhf.pipeline.spec import load_pipeline, validate_stages

    source = find_pipeline(args.pipeline)
    overrides, notes = gpu_overrides(load_pipeline(source), args.gpus)
    validate_stages(load_pipeline(source, overrides))
    save_part(args.parts, "pipeline_overrides", {"pipeline": str(source), "overrides": overrides, "notes": notes})
    (args.parts / "overrides.txt").write_text("".join(o + "\n" for o in overrides))


def cmd_manifests(args) -> None:
    """Every stage the pipeline lists (not just the dirs that exist: a stage never reached has none) is complete."""
    from rlhf.manifest import read_manifest
    from rlhf.pipeline.shipped import find_pipeline
    from rlhf.pipeline.spec import load_pipeline

    names = load_pipeline(find_pipeline(args.pipeline)).names()
    manifests = {name: read_manifest(args.dir / name) or {} for name in names}
    statuses = {name: m.get("status", "missing") for name, m in manifests.items()}
    ok = all(s == "complete" for s in statuses.values())
    # The report's figures: the eval stage's metrics (oracle accuracy, win rate, RM clean accuracy, KL).
    figures = {name: m.get("metrics", {}) for name, m in manifests.items() if m.get("stage") == "eval"}
    save_part(args.parts, "pipeline", {"dir": str(args.dir), "stages": statuses, "all_complete": ok,
                                       "eval": figures})
    if not ok:
        raise SystemExit(f"[gpu] pipeline manifests not all complete: {statuses}")


def environment() -> dict:
    import torch

    from rlhf.manifest import versions

    env = {**versions(), "cuda": torch.version.cuda, "device": "cpu"}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        env.update(device=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                   nccl=".".join(map(str, torch.cuda.nccl.version())), gpus=torch.cuda.device_count())
    return env


def cmd_report(args) -> None:
    parts = {p.stem: json.loads(p.read_text()) for p in sorted(args.parts.glob("*.json"))}
    report = {"environment": environment(), "targets": TARGETS, **parts}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print("\n".join(report_rows(report, args.failed)))
    print(f"[gpu] report -> {args.out}")


# Issue 19's targets, kept beside the report that checks them.
TARGETS = {"static_tokens_per_s": 15000, "bound_share": 0.12, "generation_share_max": 0.5, "sft_mfu": 0.50,
           "memory_within": 0.15, "serve_speedup": 8.0, "serve_p99_over_p50_max": 3.0}


def report_rows(report: dict, failed: list[str]) -> list[str]:
    def fmt(value, spec: str) -> str:
        return format(value, spec) if isinstance(value, (int, float)) and not isinstance(value, bool) else "-"

    mm, sm, sft = report.get("matmul", {}), report.get("sampling", {}), report.get("sft") or report.get("sft_hf", {})
    ppo, mr, sv, pl = (report.get(k, {}) for k in ("ppo", "multirank", "serve", "pipeline"))
    engines = {e.get("engine"): e for e in sm.get("engines", [])} if isinstance(sm.get("engines"), list) else \
        sm.get("engines", {})
    rows = [("device", report["environment"]["device"]),
            ("bf16 matmul 8192^3 (TFLOP/s)", fmt(mm.get("bf16_matmul_tflops"), ".0f")),
            ("device copy rate (GB/s, read+write)", fmt(mm.get("copy_gb_per_s"), ".0f"))]
    for name, e in engines.items():
        rows.append((f"sampling {name} tokens/s (share of bound)",
                     f"{fmt(e.get('tokens_per_s'), '.0f')} ({fmt(e.get('bound_share'), '.3f')})"))
    rows += [(f"SFT {sft.get('model', '?')} {sft.get('kernels', '')} tokens/s", fmt(sft.get("tokens_per_s"), ".0f")),
             ("SFT MFU (PaLM 6N+12LHQT; target 0.50)", fmt(sft.get("mfu"), ".3f")),
             ("SFT peak GiB / plan (states+activations)",
              f"{fmt(sft.get('gpu_mem_peak_gib'), '.1f')} / "
              f"{fmt(sft.get('plan', {}).get('states_and_activations_gib'), '.1f')}"),
             ("PPO iteration s (generation share)",
              f"{fmt(ppo.get('phases', {}).get('iteration_s'), '.2f')} "
              f"({fmt(ppo.get('phases', {}).get('generation_share'), '.2f')})"),
             ("PPO peak / plan per role", ", ".join(f"{r} {v:.2f}" for r, v in ppo.get("measured_over_plan", {}).items())
              or "-"),
             ("multi-rank on one GPU (backend)", f"{mr.get('ok', '-')} ({mr.get('backend', '-')})"),
             ("serve speedup at 64 clients (p99/p50)",
              f"{fmt(sv.get('speedup'), '.1f')}x ({fmt(sv.get('p99_over_p50'), '.2f')})"),
             ("pipeline manifests complete", str(pl.get("all_complete", "-"))),
             ("failed steps", ", ".join(failed) or "none")]
    width = max(len(k) for k, _ in rows)
    return [f"{k.ljust(width)}  {v}" for k, v in rows]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    from gpu_ppo import cmd_multirank, cmd_ppo

    commands = {"matmul": cmd_matmul, "model": cmd_model, "sft": cmd_sft, "ppo": cmd_ppo, "multirank": cmd_multirank, "overrides": cmd_overrides,
                "manifests": cmd_manifests, "report": cmd_report}
    for name in commands:
        p = sub.add_parser(name)
        p.add_argument("--parts", type=Path, default=Path("/tmp/rlhf-gpu-check/parts"), help="per-step JSON parts")
        p.add_argument("--work", type=Path, default=Path("/tmp/rlhf-gpu-check/work"), help="scratch directory")
        p.add_argument("--dry-run", action="store_true", help="CPU, toy sizes: check configs and code paths")
    sub.choices["sft"].add_argument("--steps", type=int, default=12)
    sub.choices["sft"].add_argument("--micro", type=int, help="micro batch (default: by GPU memory)")
    sub.choices["sft"].add_argument("--kernels", default="hf", choices=["hf", "liger"], help="model.kernels")
    sub.choices["sft"].add_argument("--seqs-per-step", type=int, default=16, help="sequences per optimizer step")
    sub.choices["overrides"].add_argument("pipeline")
    sub.choices["overrides"].add_argument("--gpus", type=int, default=1)
    sub.choices["manifests"].add_argument("dir", type=Path)
    sub.choices["manifests"].add_argument("--pipeline", required=True, help="shipped name or YAML: the stages to expect")
    sub.choices["report"].add_argument("--out", type=Path, required=True)
    sub.choices["report"].add_argument("--failed", nargs="*", default=[])
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    commands[args.cmd](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
