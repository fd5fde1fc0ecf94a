"""SFT training throughput (tokens/s) on one ~25M-param LLaMA, seq 256, batch 8, fp32, CPU:

  ours  - the SFT stage's engine (DeepSpeed on 1 Ray Train worker), as `rlhf stage sft` runs it
  bare  - a plain PyTorch loop (AdamW, forward/backward/step) over the same batches
  trl   - TRL's SFTTrainer on the same model, data and batch size

--precision fp32 (default) runs all three in fp32; amp_bf16 runs all three with fp32 weights and bf16 autocast
(ours: deepspeed.precision=amp_bf16; bare: torch.autocast; TRL: bf16=True, which autocasts on CPU), so each
comparison is at equal precision.
Every sequence is exactly 256 tokens (long rows truncated), so tokens/step is identical across the three.
Prints a table and writes JSON.

    bash benchmarks/run.sh sft_throughput [--steps 30] [--threads 2] [--precision fp32|amp_bf16]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

SEQ, BATCH, WARMUP = 256, 8, 3


def make_rows(n: int) -> list[dict]:
    """Alpaca rows long enough that every example is cut to SEQ tokens."""
    words = "the quick brown fox jumps over a lazy dog while seven small birds sing in the tall green tree".split()
    rows = []
    for i in range(n):
        body = " ".join(words[(i + j) % len(words)] for j in range(400))
        rows.append({"instruction": f"Write passage number {i}.", "input": "", "output": body})
    return rows


def run_ours(work: Path, data: Path, steps: int, threads: int, precision: str) -> tuple[float, Path]:
    from rlhf.config import load_config
    from rlhf.metrics import read_metrics
    from stages import sft

    out = work / "ours"
    overrides = [
        f"data.path={data}", "data.format=alpaca", "data.template=alpaca", f"data.max_length={SEQ}",
        "data.eval_fraction=0", "model.path=embedded:llama-25m", f"train.max_steps={steps}", "train.log_every=1",
        "train.eval_every=0", "train.checkpoint_every=0", "deepspeed.zero_stage=0", f"deepspeed.micro_batch_size={BATCH}",
        f"deepspeed.precision={precision}", "resources.num_workers=1", f"resources.cpus_per_worker={threads}",
        f"resources.threads_per_worker={threads}", "optim.lr=1e-4", "optim.schedule=constant",
    ]
    sft.run(load_config(sft.Config, None, overrides), out)
    rows = [r for r in read_metrics(out) if "tokens_per_s" in r][WARMUP:]
    return statistics.median(r["tokens_per_s"] for r in rows), out


def batches(examples: list[dict], steps: int, seed: int = 0):
    from rlhf.engine.loop import batch_indices

    for step in range(steps):
        idx = batch_indices(len(examples), seed, step * BATCH, BATCH)
        ids = torch.tensor([examples[i]["input_ids"] for i in idx])
        labels = torch.tensor([examples[i]["labels"] for i in idx])
        yield ids, labels


def run_bare(model_dir: str, examples: list[dict], steps: int, threads: int, precision: str) -> float:
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))
    speeds = []
    for step, (ids, labels) in enumerate(batches(examples, steps)):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "amp_bf16"):
            loss = model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step >= WARMUP:
            speeds.append(ids.numel() / (time.perf_counter() - t0))
    return statistics.median(speeds)


def run_trl(model_dir: str, examples: list[dict], steps: int, threads: int, work: Path, precision: str) -> float:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    torch.set_num_threads(threads)
    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

    order = [ids.tolist() for ids, _ in batches(examples, steps)]
    ds = Dataset.from_list([{"input_ids": row} for batch in order for row in batch])
    args = SFTConfig(
        output_dir=str(work / "trl"), max_steps=steps, per_device_train_batch_size=BATCH, learning_rate=1e-4,
        lr_scheduler_type="constant", max_grad_norm=1.0, logging_steps=10**6, save_strategy="no", report_to=[],
        max_length=SEQ, packing=False, dataloader_num_workers=0, use_cpu=True, bf16=precision == "amp_bf16", fp16=False,
        adam_beta2=0.95, seed=0, disable_tqdm=True,
    )
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), args=args, train_dataset=ds,
        processing_class=AutoTokenizer.from_pretrained(model_dir), callbacks=[StepTimer()],
    )
    trainer.train()
    return statistics.median(BATCH * SEQ / t for t in times[WARMUP:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--work", default="/tmp/rlhf-bench-sft")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--precision", choices=("fp32", "amp_bf16"), default="fp32")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = work / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in make_rows(400)))

    ours, ours_dir = run_ours(work, data, args.steps, args.threads, args.precision)
    from rlhf.data.splits import load_examples
    from rlhf.models.loading import resolve_model_path

    examples = load_examples(ours_dir, "train")
    assert all(len(e["input_ids"]) == SEQ for e in examples), "every example must be SEQ tokens"
    model_dir = resolve_model_path("embedded:llama-25m")
    n_params = sum(p.numel() for p in __import__("transformers").AutoModelForCausalLM.from_pretrained(model_dir).parameters())
    bare = run_bare(model_dir, examples, args.steps, args.threads, args.precision)
    trl = run_trl(model_dir, examples, args.steps, args.threads, work, args.precision)

    result = {
        "benchmark": "sft_throughput", "model_params": n_params, "seq": SEQ, "batch": BATCH, "precision": args.precision,
        "steps": args.steps, "threads": args.threads, "tokens_per_s": {"ours": ours, "bare": bare, "trl": trl},
        "ours_vs_trl": ours / trl, "ours_vs_bare": ours / bare, "targets": {"ours_vs_trl": 1.5, "ours_vs_bare": 0.9},
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
                    "torch": torch.__version__},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    print(f"\nSFT throughput, {n_params / 1e6:.1f}M-param LLaMA, seq {SEQ}, batch {BATCH}, {args.precision}, {args.threads} threads")
    print(f"{'engine':<8}{'tokens/s':>12}{'vs ours':>10}")
    for name in ("ours", "bare", "trl"):
        print(f"{name:<8}{result['tokens_per_s'][name]:>12.0f}{ours / result['tokens_per_s'][name]:>10.2f}")
    print(f"ours/trl = {result['ours_vs_trl']:.2f} (target >= 1.5), ours/bare = {result['ours_vs_bare']:.2f} (target >= 0.9)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "sft_throughput" + ("" if args.precision == "fp32" else f"_{args.precision}")
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
