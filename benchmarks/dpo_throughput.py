"""DPO training throughput (pairs/s) on the embedded tiny LLaMA, every sequence 128 tokens, 8 pairs a step, fp32, CPU:

  ours          - the DPO stage's engine (DeepSpeed ZeRO-0 on 1 Ray Train worker), reference log-probs precomputed
  ours_live     - the same with reference.mode=live (a frozen reference forward every step)
  trl           - TRL's DPOTrainer (its default: a live reference model)
  trl_precomp   - TRL's DPOTrainer with precompute_ref_log_probs=True

All four train on the same token ids (TRL gets our tokenized pairs: prompt_ids/chosen_ids/rejected_ids, its own
collator and loss), the same batch order, beta, lr and precision; time per step is the median after warm-up steps,
reference precomputation excluded for both. Prints a table and writes JSON to benchmarks/results/.

    bash benchmarks/run.sh dpo_throughput [--steps 20] [--threads 2] [--repeats 3]
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

SEQ, BATCH, WARMUP, MODEL = 128, 8, 3, "embedded:tiny-llama"


def make_rows(n: int) -> list[dict]:
    """Pairs whose prompts are long enough that every sequence is cut to SEQ tokens (the prompt loses its start)."""
    words = "the quick brown fox jumps over a lazy dog while seven small birds sing in the tall green tree".split()
    rows = []
    for i in range(n):
        prompt = " ".join(words[(i + j) % len(words)] for j in range(300))
        chosen = [words[(2 * i + j) % len(words)] for j in range(30)]
        # The same words, all but the first reversed: a different response of the same token count, so that both sides keep the same
        # prompt tokens after the cut to SEQ (TRL's DPO collator takes one prompt per pair).
        rows.append({"prompt": f"Passage {i}: {prompt}", "chosen": " ".join(chosen),
                     "rejected": " ".join(chosen[:1] + chosen[:0:-1])})
    return rows


def run_ours(work: Path, data: Path, steps: int, threads: int, mode: str) -> tuple[float, Path]:
    from rlhf.config import load_config
    from rlhf.metrics import read_metrics
    from stages import dpo

    out = work / f"ours-{mode}"
    overrides = [
        f"data.path={data}", "data.format=pairs", "data.template=alpaca", f"data.max_length={SEQ}",
        "data.eval_fraction=0", f"model.path={MODEL}", f"train.max_steps={steps}", "train.log_every=1",
        "train.eval_every=0", "train.checkpoint_every=0", "deepspeed.zero_stage=0", f"deepspeed.micro_batch_size={BATCH}",
        "deepspeed.precision=fp32", "resources.num_workers=1", f"resources.cpus_per_worker={threads}",
        f"resources.threads_per_worker={threads}", "optim.lr=1e-5", "optim.schedule=constant", "optim.warmup_steps=0",
        "loss.kind=dpo", "loss.beta=0.1", f"reference.mode={mode}",
    ]
    dpo.run(load_config(dpo.Config, None, overrides), out)
    rows = [r for r in read_metrics(out) if "tokens_per_s" in r][WARMUP:]
    return statistics.median(r["tokens_per_s"] for r in rows) / (2 * SEQ), out


def run_trl(model_dir: str, examples: list[dict], steps: int, threads: int, work: Path, precompute: bool) -> float:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    from rlhf.engine.loop import batch_indices

    torch.set_num_threads(threads)
    times: list[float] = []

    class StepTimer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            self.t0 = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            times.append(time.perf_counter() - self.t0)

    class PreTokenized(DPOTrainer):
        """Our token ids as they are: TRL's tokenization step is skipped, its collator and loss are not."""

        def _prepare_dataset(self, dataset, *args, **kwargs):
            return dataset

    def split(e: dict) -> dict:
        (c, r), (nc, nr) = e["ids"], e["resp"]
        assert c[:len(c) - nc] == r[:len(r) - nr], "both sides share the prompt"
        return {"prompt_ids": c[:len(c) - nc], "chosen_ids": c[len(c) - nc:], "rejected_ids": r[len(r) - nr:]}

    order = [examples[i] for s in range(steps) for i in batch_indices(len(examples), 0, s * BATCH, BATCH)]
    ds = Dataset.from_list([split(e) for e in order])
    args = DPOConfig(
        output_dir=str(work / "trl"), max_steps=steps, per_device_train_batch_size=BATCH, learning_rate=1e-5,
        lr_scheduler_type="constant", max_grad_norm=1.0, logging_steps=10**6, save_strategy="no", report_to=[],
        max_length=None, beta=0.1, loss_type=["sigmoid"], dataloader_num_workers=0, use_cpu=True, bf16=False,
        fp16=False, adam_beta2=0.95, seed=0, disable_tqdm=True, precompute_ref_log_probs=precompute,
        precompute_ref_batch_size=BATCH,
    )
    trainer = PreTokenized(
        model=AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), args=args, train_dataset=ds,
        processing_class=AutoTokenizer.from_pretrained(model_dir), callbacks=[StepTimer()],
    )
    trainer.train()
    return statistics.median(BATCH / t for t in times[WARMUP:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    ap.add_argument("--repeats", type=int, default=3, help="whole comparisons to run; median and range reported")
    ap.add_argument("--work", default="/tmp/rlhf-bench-dpo")
    ap.add_argument("--out", default="benchmarks/results")
    ap.add_argument("--note", default="", help="machine state to record (e.g. 'shared with other jobs')")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    data = work / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in make_rows(200)))

    # Whole comparisons repeated (ours and TRL interleaved, so drift in machine load hits both sides): the
    # ratio's median and range over runs is what we report, never one run.
    from rlhf.data.splits import load_examples
    from rlhf.models.loading import resolve_model_path

    model_dir = resolve_model_path(MODEL)
    runs = []
    for r in range(args.repeats):
        ours, ours_dir = run_ours(work, data, args.steps, args.threads, "precompute")
        ours_live, _ = run_ours(work, data, args.steps, args.threads, "live")
        examples = load_examples(ours_dir, "train")
        assert all(len(s) == SEQ for e in examples for s in e["ids"]), "every sequence must be SEQ tokens"
        trl = run_trl(model_dir, examples, args.steps, args.threads, work, precompute=False)
        trl_pre = run_trl(model_dir, examples, args.steps, args.threads, work, precompute=True)
        runs.append({"ours": ours, "ours_live": ours_live, "trl": trl, "trl_precomp": trl_pre})
        print(f"run {r + 1}/{args.repeats}: " + ", ".join(f"{k} {v:.2f}" for k, v in runs[-1].items()) + " pairs/s")

    def summary(values: list[float]) -> dict:
        return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}

    speeds = {k: summary([run[k] for run in runs]) for k in runs[0]}
    ratios = {name: summary([run[a] / run[b] for run in runs])
              for name, (a, b) in {"ours_vs_trl": ("ours", "trl"), "ours_live_vs_trl": ("ours_live", "trl"),
                                   "ours_vs_trl_precomp": ("ours", "trl_precomp")}.items()}
    result = {
        "benchmark": "dpo_throughput", "model": MODEL, "seq": SEQ, "batch_pairs": BATCH, "precision": "fp32",
        "steps": args.steps, "threads": args.threads, "repeats": args.repeats, "pairs_per_s": speeds, **ratios,
        "target": {"ours_vs_trl": 1.2}, "note": args.note,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": sys.version.split()[0],
                    "torch": torch.__version__},
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    print(f"\nDPO throughput, {MODEL}, {BATCH} pairs x 2 x {SEQ} tokens a step, fp32, {args.threads} threads, "
          f"median [min, max] of {args.repeats} runs")
    print(f"{'engine':<13}{'pairs/s':>22}{'ours/engine':>24}")
    for name, v in speeds.items():
        ratio = summary([run["ours"] / run[name] for run in runs])
        print(f"{name:<13}{v['median']:>8.2f} [{v['min']:.2f}, {v['max']:.2f}]"
              f"{ratio['median']:>10.2f} [{ratio['min']:.2f}, {ratio['max']:.2f}]")
    r = ratios["ours_vs_trl"]
    print(f"ours/trl = {r['median']:.2f} [{r['min']:.2f}, {r['max']:.2f}] (target >= 1.2)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "dpo_throughput.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
