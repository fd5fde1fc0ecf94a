"""Sampling throughput of the two engines (rlhf.sampling): tokens/s and, on GPU, the share of the bandwidth bound.

A decode step must read every weight once, so at batch B a step cannot beat weight_bytes / copy_rate seconds:
bound tokens/s = B * copy_rate / weight_bytes, with copy_rate measured here (a large on-device clone, bytes read
+ written over time; on CPU the same with host memory). Prompts are the shipped instructions (data/
instructions.jsonl, Alpaca template: ragged lengths); every row runs to --new-tokens (EOS ignored) so tokens/s
counts a full-length rollout. Each engine gets one warm-up call at the same shapes (for static: compile and CUDA
graph capture, reported as warmup_s), then --repeats timed calls (median reported).

    python benchmarks/sampling.py --model embedded:llama-1b --batch 64 --new-tokens 256 --engine eager,static \
        --dtype bf16 --out benchmarks/results/sampling_gpu.json
    python benchmarks/sampling.py --model embedded:tiny-llama --batch 8 --new-tokens 32 --dtype fp32   # CPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def copy_rate(device, mib: int) -> float:
    """Bytes moved per second by a device-local clone (read + write), median of 5 after one warm-up."""
    import torch

    x = torch.empty(mib * 2**20, dtype=torch.uint8, device=device)
    times = []
    for i in range(6):
        sync(device)
        start = time.perf_counter()
        y = x.clone()
        sync(device)
        if i:
            times.append(time.perf_counter() - start)
        del y
    return 2 * x.numel() / statistics.median(times)


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def prompts_for(tokenizer, batch: int) -> list[list[int]]:
    from rlhf.data.formats import to_prompt_messages
    from rlhf.data.io import read_rows
    from rlhf.data.templates import encode_prompt

    rows = read_rows(str(REPO / "data" / "instructions.jsonl"))
    return [encode_prompt(to_prompt_messages(rows[i % len(rows)], "alpaca"), "alpaca", tokenizer)
            for i in range(batch)]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="embedded:tiny-llama")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--engine", default="eager,static", help="comma-separated: eager, static")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--no-compile", action="store_true", help="static engine without torch.compile")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--copy-mib", type=int, default=1024, help="tensor size for the copy-rate measurement")
    ap.add_argument("--out", type=Path, default=None, help="JSON file (default: benchmarks/results/sampling_<dev>.json)")
    args = ap.parse_args(argv)

    import torch

    from rlhf.models.loading import load_causal_lm, resolve_model_path
    from rlhf.models.tokenizer import load_tokenizer
    from rlhf.sampling import GenerationSection, SamplingParams, generate

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[args.dtype]
    path = resolve_model_path(args.model)
    tokenizer = load_tokenizer(path)
    model = load_causal_lm(path).to(device=device, dtype=dtype).eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    prompts = prompts_for(tokenizer, args.batch)
    params = SamplingParams(temperature=1.0, top_p=1.0, max_new_tokens=args.new_tokens)
    rate = copy_rate(device, args.copy_mib)
    bound = args.batch * rate / weight_bytes
    result = {"model": args.model, "parameters": sum(p.numel() for p in model.parameters()),
              "weight_bytes": weight_bytes, "dtype": args.dtype, "device": torch.cuda.get_device_name() if
              device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)", "torch": torch.__version__,
              "batch": args.batch, "new_tokens": args.new_tokens,
              "mean_prompt_tokens": sum(map(len, prompts)) / len(prompts), "copy_rate_gb_s": rate / 1e9,
              "bound_tokens_per_s": bound, "engines": {}}
    for name in [e.strip() for e in args.engine.split(",") if e.strip()]:
        section = GenerationSection(engine=name, compile=not args.no_compile, max_batch_tokens=10**9)

        def once(seed: int) -> tuple[int, float]:
            sync(device)
            start = time.perf_counter()
            # eos -1: no row stops early, every call decodes batch x new_tokens
            out = generate(model, prompts, params, -1, tokenizer.pad_token_id, section, max_rows=args.batch,
                           seed=seed)
            sync(device)
            return sum(map(len, out.tokens)), time.perf_counter() - start

        _, warmup = once(0)
        runs = [once(1 + i) for i in range(args.repeats)]
        seconds = statistics.median(s for _, s in runs)
        tokens = runs[0][0]
        tps = tokens / seconds
        result["engines"][name] = {"tokens": tokens, "seconds": seconds, "warmup_s": warmup, "tokens_per_s": tps,
                                   "ms_per_step": 1000 * seconds / args.new_tokens, "share_of_bound": tps / bound,
                                   "compile": name == "static" and not args.no_compile}
    engines = result["engines"]
    if "eager" in engines and "static" in engines:
        result["static_speedup"] = engines["static"]["tokens_per_s"] / engines["eager"]["tokens_per_s"]
    print(f"{args.model} {args.dtype} on {result['device']}: batch {args.batch} x {args.new_tokens} new tokens, "
          f"bound {bound:,.0f} tokens/s (copy {rate / 1e9:.1f} GB/s, weights {weight_bytes / 1e9:.3f} GB)")
    print(f"{'engine':8} {'tokens/s':>10} {'ms/step':>8} {'share':>7} {'warm-up s':>9}")
    for name, e in engines.items():
        print(f"{name:8} {e['tokens_per_s']:>10,.0f} {e['ms_per_step']:>8.2f} {e['share_of_bound']:>7.2%} "
              f"{e['warmup_s']:>9.1f}")
    out = args.out or REPO / "benchmarks" / "results" / f"sampling_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
