"""The GPU check's measurements and checks, one subcommand each (benchmarks/gpu_check.sh runs them in order):

  matmul     bf16 8192^3 matrix products: median of 10 after warm-up -> the MFU denominator (TFLOP/s)
  sft        SFT of a ~1.1B LLaMA (TinyLlama shape, vocab 32000, random weights) through stages.sft.run:
             1 Ray Train worker on the GPU, ZeRO-2, bf16, seq 2048 -> tokens/s and MFU
  generate   PPO-style sampling (rlhf.sampling.sample, KV cache, bf16) on the same model -> tokens/s
  overrides  the `rlhf run` overrides that put a pipeline's stages on the GPUs this machine has
  manifests  every DIR/*/manifest.json must say "complete"
  serve      the reward-model service (Ray Serve) with its replica on the GPU, scoring pairs over 127.0.0.1
  report     merge the parts into one JSON and print a table

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

SEQ, VOCAB, MODEL_SIZE = 2048, 32000, "llama-1b"
WARMUP_STEPS = 3
GEN_PROMPTS, GEN_NEW_TOKENS = 64, 256
MAX_ITERATIONS, MAX_STEPS, CPU_PPO_THREADS = 8, 300, 3  # keep the pipeline inside the check's time budget


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
    import torch

    n, reps = (256, 2) if args.dry_run else (8192, 10)
    dev = "cpu" if args.dry_run else "cuda"
    a = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        if dev == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            a @ b
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - t0)
    seconds = statistics.median(times)
    save_part(args.parts, "matmul", {"n": n, "reps": reps, "median_s": seconds,
                                     "bf16_matmul_tflops": 2 * n**3 / seconds / 1e12})


def long_rows(n: int, words: int) -> list[dict]:
    """Alpaca rows long enough that every example is cut to exactly SEQ tokens (full sequences, no padding)."""
    vocab = "the quick brown fox jumps over a lazy dog while seven small birds sing in the tall green tree".split()
    return [{"instruction": f"Write passage number {i}.", "input": "",
             "output": " ".join(vocab[(i + j) % len(vocab)] for j in range(words))} for i in range(n)]


def sft_overrides(data: Path, model_dir: Path, steps: int, micro: int, accum: int, seq: int, gpu: bool) -> list[str]:
    return [
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
    cfg = load_config(sft.Config, None, sft_overrides(data, args.work / "model", args.steps, micro, accum, seq, gpu))
    part = {"model": f"{size} (vocab {config.vocab_size})", "params": total, "matmul_params": matmul,
            "layers": config.num_hidden_layers, "d_model": config.hidden_size, "seq": seq, "micro_batch": micro,
            "grad_accum": accum, "zero_stage": cfg.deepspeed.zero_stage, "precision": cfg.deepspeed.precision,
            "flops_per_token": model_flops_per_token(matmul, config.num_hidden_layers, config.hidden_size, seq)}
    if args.dry_run:
        save_part(args.parts, "sft", {**part, "dry_run": True})
        return
    model_dir = build_model_dir(args.work, vocab, size)
    cfg = load_config(sft.Config, None, sft_overrides(data, model_dir, args.steps, micro, accum, seq, gpu))
    out = args.work / "sft-run"
    started = time.perf_counter()
    sft.run(cfg, out)
    lengths = {len(e["input_ids"]) for e in load_examples(out, "train")}
    if lengths != {seq}:
        raise RuntimeError(f"sft bench: examples must all be {seq} tokens, got lengths {sorted(lengths)[:5]}")
    speeds = [r["tokens_per_s"] for r in read_metrics(out) if "tokens_per_s" in r][WARMUP_STEPS:]
    tps = statistics.median(speeds)
    matmul_part = args.parts / "matmul.json"
    rate = json.loads(matmul_part.read_text())["bf16_matmul_tflops"] * 1e12 if matmul_part.is_file() else None
    causal = model_flops_per_token(matmul, config.num_hidden_layers, config.hidden_size, seq, causal=True)
    save_part(args.parts, "sft", {**part, "steps_timed": len(speeds), "tokens_per_s": tps,
                                  "mfu": part["flops_per_token"] * tps / rate if rate else None,
                                  "mfu_causal": causal * tps / rate if rate else None,
                                  "stage_wall_s": time.perf_counter() - started, "model_dir": str(model_dir)})


def cmd_generate(args) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    from rlhf.data.formats import to_prompt_messages
    from rlhf.data.io import read_rows
    from rlhf.data.templates import encode_prompt
    from rlhf.sampling import SamplingParams, sample

    if args.dry_run:
        from rlhf.models.loading import resolve_model_path

        model_dir, dev, n_prompts, new_tokens, dtype = resolve_model_path("embedded:tiny-llama"), "cpu", 4, 4, torch.float32
    else:
        model_dir, dev, n_prompts, new_tokens, dtype = build_model_dir(args.work, VOCAB, MODEL_SIZE), "cuda", \
            GEN_PROMPTS, GEN_NEW_TOKENS, torch.bfloat16
    from rlhf.models.tokenizer import EMBEDDED_TOKENIZER, load_tokenizer

    tok = load_tokenizer(EMBEDDED_TOKENIZER)
    rows = read_rows(str(REPO / "data" / "instructions.jsonl"))[:n_prompts]
    prompts = [encode_prompt(to_prompt_messages(r, "alpaca"), "alpaca", tok) for r in rows]
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype).to(dev)

    def timed(max_new: int) -> tuple[list[list[int]], float]:
        if dev == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = sample(model, prompts, SamplingParams(max_new_tokens=max_new), tok.eos_token_id, tok.pad_token_id,
                     batch_size=len(prompts), generator_seed=0)
        if dev == "cuda":
            torch.cuda.synchronize()
        return out, time.perf_counter() - t0

    timed(new_tokens)  # warm-up at the timed shapes: kernels, allocator, KV cache, the static engine's compile
    responses, seconds = timed(new_tokens)
    tokens = sum(len(r) for r in responses)
    save_part(args.parts, "generate", {"prompts": len(prompts), "max_new_tokens": new_tokens, "tokens": tokens,
                                       "mean_prompt_tokens": sum(map(len, prompts)) / len(prompts), "seconds": seconds,
                                       "tokens_per_s": tokens / seconds, "dtype": str(dtype).removeprefix("torch."),
                                       **({"dry_run": True} if args.dry_run else {})})


def gpu_overrides(pipeline, gpus: int) -> tuple[list[str], list[str]]:
    """Overrides putting every stage's Ray workers on GPUs (bf16, at most ``gpus`` GPU workers at once), and notes
    on what cannot: a PPO placement needing more GPU bundles than there are GPUs stays on CPU. PPO loops are
    cut to MAX_ITERATIONS and training to MAX_STEPS: the check proves the path, the pipeline's own runs the learning."""
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
            if "actor_workers" in fields:  # PPO: four roles in one placement group, one GPU per bundle
                bundles, _ = plan(section, True)
                if len(bundles) > gpus:
                    use_gpu = False
                    notes.append(f"{prefix}use_gpu=false: PPO's placement needs {len(bundles)} GPU bundles "
                                 f"(even colocated, 2), this machine has {gpus} GPU(s)")
                    # On CPU, give each role's worker a few of the device's 16 cores.
                    overrides.extend([f"{prefix}cpus_per_bundle={CPU_PPO_THREADS}",
                                      f"{prefix}threads_per_worker={CPU_PPO_THREADS}"])
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
    statuses = {name: (read_manifest(args.dir / name) or {}).get("status", "missing") for name in names}
    ok = all(s == "complete" for s in statuses.values())
    save_part(args.parts, "pipeline", {"dir": str(args.dir), "stages": statuses, "all_complete": ok})
    if not ok:
        raise SystemExit(f"[gpu] pipeline manifests not all complete: {statuses}")


def pipeline_reward_model(pipeline_dir: Path | None) -> str | None:
    """The model dir of a complete rm stage under a pipeline's output dir, if there is one."""
    from rlhf.manifest import read_manifest

    for stage_dir in sorted(pipeline_dir.iterdir()) if pipeline_dir and pipeline_dir.is_dir() else []:
        m = read_manifest(stage_dir) if stage_dir.is_dir() else None
        if m and m.get("stage") == "rm" and m.get("status") == "complete" and "model" in m.get("outputs", {}):
            path = Path(m["outputs"]["model"]["path"])
            return str(path if path.is_absolute() else stage_dir / path)
    return None


def cmd_serve(args) -> None:
    import ray

    from rlhf.engine.launch import ensure_ray
    from rlhf.serve.config import ServeConfig
    from rlhf.serve.launch import free_port, start_service, stop_service, wait_healthy

    model_dir, source = pipeline_reward_model(args.pipeline_dir), "the pipeline's rm stage"
    if model_dir is None:
        from rlhf.serve.random_rm import write_random_reward_model

        model_dir, source = str(write_random_reward_model(args.work / "random-rm")), "random RM (no pipeline RM)"
    cfg = ServeConfig(model_dir=model_dir, device="cpu" if args.dry_run else "cuda", port=free_port())
    if args.dry_run:
        save_part(args.parts, "serve", {"model": source, "device": cfg.device, "dry_run": True})
        return
    import httpx

    ensure_ray()
    url = start_service(cfg)
    try:
        wait_healthy(url)
        gpus_free = ray.available_resources().get("GPU", 0.0)
        pairs = [{"prompt": f"Name {i} colours.", "response": " ".join(["red", "green", "blue"][: 1 + i % 3])}
                 for i in range(8)]
        answer = httpx.post(f"{url}/score", json={"pairs": pairs}, timeout=120.0, trust_env=False)
        scores = answer.json().get("scores", []) if answer.status_code == 200 else []
    finally:
        stop_service(cfg.app_name)
    ok = answer.status_code == 200 and len(scores) == len(pairs) and all(math.isfinite(s) for s in scores)
    total = ray.cluster_resources().get("GPU", 0.0)
    save_part(args.parts, "serve", {"model": source, "status": answer.status_code, "scores": scores,
                                    "replica_on_gpu": gpus_free < total, "ok": ok and gpus_free < total})
    if not (ok and gpus_free < total):
        raise SystemExit(f"[gpu] serve check failed: HTTP {answer.status_code}, {len(scores)} scores, "
                         f"{total - gpus_free} GPU(s) held by the replica")


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
    report = {"environment": environment(), "target_mfu": 0.45, **parts}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    sft, gen, mm = parts.get("sft", {}), parts.get("generate", {}), parts.get("matmul", {})

    def fmt(value, spec: str) -> str:
        return format(value, spec) if isinstance(value, (int, float)) else "-"

    rows = [("device", report["environment"]["device"]),
            ("bf16 matmul 8192^3 (TFLOP/s)", fmt(mm.get("bf16_matmul_tflops"), ".0f")),
            (f"SFT {sft.get('model', '?')} tokens/s", fmt(sft.get("tokens_per_s"), ".0f")),
            ("SFT MFU (PaLM 6N+12LHQT; target 0.45)", fmt(sft.get("mfu"), ".3f")),
            ("SFT MFU (causal attention)", fmt(sft.get("mfu_causal"), ".3f")),
            ("PPO generation tokens/s", fmt(gen.get("tokens_per_s"), ".0f")),
            ("pipeline manifests complete", str(parts.get("pipeline", {}).get("all_complete", "-"))),
            ("serve on GPU scored pairs", str(parts.get("serve", {}).get("ok", "-"))),
            ("failed steps", ", ".join(args.failed) or "none")]
    width = max(len(k) for k, _ in rows)
    print("\n".join(f"{k.ljust(width)}  {v}" for k, v in rows))
    print(f"[gpu] report -> {args.out}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    commands = {"matmul": cmd_matmul, "sft": cmd_sft, "generate": cmd_generate, "overrides": cmd_overrides,
                "manifests": cmd_manifests, "serve": cmd_serve, "report": cmd_report}
    for name in commands:
        p = sub.add_parser(name)
        p.add_argument("--parts", type=Path, default=Path("/tmp/rlhf-gpu-check/parts"), help="per-step JSON parts")
        p.add_argument("--work", type=Path, default=Path("/tmp/rlhf-gpu-check/work"), help="scratch directory")
        p.add_argument("--dry-run", action="store_true", help="CPU, toy sizes: check configs and code paths")
    sub.choices["sft"].add_argument("--steps", type=int, default=12)
    sub.choices["sft"].add_argument("--micro", type=int, help="micro batch (default: by GPU memory)")
    sub.choices["sft"].add_argument("--seqs-per-step", type=int, default=16, help="sequences per optimizer step")
    sub.choices["overrides"].add_argument("pipeline")
    sub.choices["overrides"].add_argument("--gpus", type=int, default=1)
    sub.choices["manifests"].add_argument("dir", type=Path)
    sub.choices["manifests"].add_argument("--pipeline", required=True, help="shipped name or YAML: the stages to expect")
    sub.choices["serve"].add_argument("--pipeline-dir", type=Path, help="serve its rm stage's model (else a random RM)")
    sub.choices["report"].add_argument("--out", type=Path, required=True)
    sub.choices["report"].add_argument("--failed", nargs="*", default=[])
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    commands[args.cmd](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
