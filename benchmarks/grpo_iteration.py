"""Time one GRPO iteration (group sampling + scoring + training) for our PPO stage (algorithm.estimator=grpo) and for
TRL 1.16's GRPOTrainer (installed in the project venv).

    unshare -n bash -c 'ip link set lo up; HF_HUB_OFFLINE=1 python benchmarks/grpo_iteration.py'

Both sides get the same tiny model (the embedded tiny LLaMA as policy and reference), the same prompts
(data/instructions.jsonl in the chat template), the same programmatic reward (count of "e", no RM), the same group
layout and lengths (4 prompts x 4 samples, 16 new tokens, temperature 1), the same update (2 epochs of 2 minibatches
of 8 sequences: 4 optimizer steps), the KL to the reference as a k3 loss term with beta 0.05, and the same CPU.
TRL: per_device_train_batch_size 8 x steps_per_generation 2 = 16 completions per generation, num_generations 4,
num_iterations 2; an iteration is the time between every 4th ``on_step_end`` callback (one generation and its 4
steps). Ours is ``time_iteration_s`` from metrics.jsonl. The first iteration of each is warm-up and dropped; the
median of the rest is reported, with our phase split. Target: ours <= 0.7x TRL's.

Our layout: one actor worker colocated with the reference, one reward worker, no critic; one torch thread each;
ZeRO-0.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ppo_iteration import PHASES, REPO, prompt_ids  # noqa: E402

TRL_CHILD = r"""
import json, sys, tempfile, time
import torch
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
torch.manual_seed(0)
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from trl import GRPOConfig, GRPOTrainer

tok = AutoTokenizer.from_pretrained(args["policy"])
tok.padding_side = "left"
policy = AutoModelForCausalLM.from_pretrained(args["policy"])
ds = Dataset.from_dict({"prompt": args["prompts"]})
stamps = []

class Clock(TrainerCallback):
    def on_step_end(self, *a, **k):
        stamps.append(time.perf_counter())

def count_e(prompts, completions, **kwargs):
    return [float(c.count("e")) for c in completions]

per_gen = args["groups"] * args["samples"]
config = GRPOConfig(
    output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args["mini_batch"],
    steps_per_generation=per_gen // args["mini_batch"], num_generations=args["samples"],
    num_iterations=args["epochs"], gradient_accumulation_steps=1, max_completion_length=args["max_new_tokens"],
    temperature=1.0, beta=0.05, learning_rate=1e-3, max_steps=args["iterations"] * args["steps"],
    report_to="none", save_strategy="no", use_cpu=True, bf16=False, fp16=False, logging_steps=10**6, seed=0,
    dataloader_num_workers=0, disable_dropout=True,
)
trainer = GRPOTrainer(model=policy, reward_funcs=count_e, args=config, train_dataset=ds, processing_class=tok)
trainer.add_callback(Clock())
start = time.perf_counter()
trainer.train()
ends = [start] + stamps[args["steps"] - 1::args["steps"]]
times = [b - a for a, b in zip(ends[:-1], ends[1:])]
print("TRL_RESULT " + json.dumps({"iteration_s": times}))
"""


def run_ours(args, out: Path) -> dict:
    from rlhf.config import load_config
    from rlhf.metrics import read_metrics
    from stages import ppo

    overrides = [
        "algorithm.estimator=grpo", "algorithm.kl_in=loss", "algorithm.kl_estimator=k3", "algorithm.kl_coef=0.05",
        f"loop.iterations={args.iterations}", f"rollout.prompts_per_iteration={args.groups}",
        f"rollout.samples_per_prompt={args.samples}", f"rollout.max_new_tokens={args.max_new_tokens}",
        f"rollout.forward_batch_size={args.groups * args.samples}", f"algorithm.ppo_epochs={args.epochs}",
        f"algorithm.mini_batch_size={args.mini_batch}", "actor_optim.lr=1e-3", "deepspeed.zero_stage=0",
        "resources.colocate_actor_ref=true", f"resources.cpus_per_bundle={args.cpus_per_bundle}",
        f"resources.threads_per_worker={args.threads}",
    ]
    ppo.run(load_config(ppo.Config, REPO / "configs" / "ppo" / "tiny.yaml", overrides), out)
    rows = [r for r in read_metrics(out) if "time_iteration_s" in r][1:]
    return {"iteration_s": statistics.median(r["time_iteration_s"] for r in rows),
            **{k: statistics.median(r[k] for r in rows) for k in PHASES}}


def prompt_texts(n: int) -> list[str]:
    """The same templated prompts as ours, as text (TRL tokenizes its ``prompt`` column itself)."""
    from rlhf.models.tokenizer import EMBEDDED_TOKENIZER, load_tokenizer

    tok = load_tokenizer(EMBEDDED_TOKENIZER)
    return [tok.decode(ids, skip_special_tokens=True) for ids in prompt_ids(n)]


def run_trl(args) -> dict:
    from rlhf.models.tiny import materialize

    steps = args.epochs * args.groups * args.samples // args.mini_batch
    payload = {"policy": materialize("embedded:tiny-llama"), "prompts": prompt_texts(args.groups * args.iterations),
               "groups": args.groups, "samples": args.samples, "mini_batch": args.mini_batch, "epochs": args.epochs,
               "iterations": args.iterations, "steps": steps, "max_new_tokens": args.max_new_tokens,
               "threads": args.trl_threads}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-c", TRL_CHILD, json.dumps(payload)], capture_output=True, text=True,
                          env=env, cwd=tempfile.gettempdir())
    line = next((x for x in proc.stdout.splitlines() if x.startswith("TRL_RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"TRL benchmark failed:\n{proc.stderr[-4000:]}")
    times = json.loads(line.split(" ", 1)[1])["iteration_s"]
    print(f"[bench] TRL iterations (s): {[round(t, 3) for t in times]}", flush=True)
    return {"iteration_s": statistics.median(times[1:]), "threads": payload["threads"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=5, help="iterations per side (the first is warm-up)")
    p.add_argument("--groups", type=int, default=4, help="prompts per iteration")
    p.add_argument("--samples", type=int, default=4, help="samples per prompt (group size)")
    p.add_argument("--mini-batch", type=int, default=8, help="sequences per optimizer step")
    p.add_argument("--epochs", type=int, default=2, help="passes over each batch (TRL num_iterations)")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--cpus-per-bundle", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker of ours")
    p.add_argument("--trl-threads", type=int, default=1, help="torch threads for TRL's single process")
    p.add_argument("--repeats", type=int, default=3, help="whole comparisons to run; median and range reported")
    p.add_argument("--skip-trl", action="store_true", help="time ours only")
    p.add_argument("--skip-ours", action="store_true", help="time TRL only")
    p.add_argument("--json", default="benchmarks/results/grpo_iteration.json", help="write the results here")
    args = p.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Whole comparisons repeated, TRL and ours interleaved so drift in machine load hits both: the ratio's median
    # and range over runs is what we report, never one run.
    runs = []
    for r in range(args.repeats):
        trl = None if args.skip_trl else run_trl(args)
        with tempfile.TemporaryDirectory() as tmp:
            ours = None if args.skip_ours else run_ours(args, Path(tmp) / "ours")
        runs.append({"ours": ours, "trl": trl,
                     "ratio": ours["iteration_s"] / trl["iteration_s"] if ours and trl else None})
        print(f"run {r + 1}/{args.repeats}: ours {ours and ours['iteration_s']}, trl {trl and trl['iteration_s']}")
    print(f"\nGRPO iteration, {args.groups} prompts x {args.samples} samples x {args.max_new_tokens} new tokens, "
          f"{args.epochs} epochs x {args.groups * args.samples // args.mini_batch} minibatches, tiny LLaMA, "
          f"{os.cpu_count()} CPUs (per run: median of {args.iterations - 1} iterations after warm-up)")
    for i, run in enumerate(runs):
        ours, trl = run["ours"], run["trl"]
        line = f"  run {i + 1}:"
        if ours:
            line += f" ours {ours['iteration_s']:.3f} s (" + ", ".join(f"{k[5:-2]} {ours[k]:.3f}" for k in PHASES) + ")"
        if trl:
            line += f"  TRL 1.16 GRPOTrainer ({trl['threads']} threads) {trl['iteration_s']:.3f} s"
        print(line)
    ratios = [run["ratio"] for run in runs if run["ratio"] is not None]
    ratio = {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios)} if ratios else None
    if ratio:
        print(f"  ours / TRL = {ratio['median']:.2f} [{ratio['min']:.2f}, {ratio['max']:.2f}] over {len(ratios)} runs "
              "(target <= 0.7)")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"runs": runs, "ratio": ratio, "args": vars(args),
                               "cpus": os.cpu_count()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
