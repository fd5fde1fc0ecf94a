"""Time one PPO iteration (rollout + scoring + training) for our PPO stage and for TRL 1.12's PPOTrainer.

    bash benchmarks/run.sh ppo_iteration     # the venvs first (network), then the benchmark in the namespace

Both sides get the same tiny models (the embedded tiny LLaMA as policy and reference, a tiny
LlamaForSequenceClassification as reward model and critic init), the same prompts (data/instructions.jsonl in the
chat template), the same batch (16 prompts, 16 new tokens, 2 PPO epochs of 2 minibatches of 8) and the same CPU.
TRL runs in its own venv (benchmarks/.venv-trl or $RLHF_TRL_VENV, made by ``--setup`` with torch 2.13.0, trl 1.12.0
and our transformers/accelerate/datasets versions; benchmarks/run.sh runs that before entering the loopback-only
namespace, where pip cannot reach a registry) as ``trl.experimental.ppo.PPOTrainer``; an iteration is the time between
two ``on_step_end`` callbacks. Ours is ``time_iteration_s`` from metrics.jsonl. The first iteration of each is
warm-up and dropped; the median of the rest is reported, with our phase split. Target: ours <= 0.5x TRL's.

Our default layout for this tiny model on 2 cores: one actor worker (colocated with the reference) and one critic
(colocated with the reward model), one torch thread each, ZeRO-0. With 2 actor workers under ZeRO-2 the gloo
all-reduce and partitioning cost more than the second worker saves (measured 1.07 s against 0.75 s here).
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

REPO = Path(__file__).resolve().parent.parent
TRL_VENV = Path(os.environ.get("RLHF_TRL_VENV") or REPO / "benchmarks" / ".venv-trl")
TRL_PACKAGES = ["torch==2.13.0", "trl==1.12.0", "transformers==5.24.0", "accelerate==1.15.0", "datasets==5.2.0"]
PHASES = ("time_generation_s", "time_scoring_s", "time_training_s", "time_weight_sync_s")

TRL_CHILD = r"""
import json, sys, tempfile, time
import torch
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
torch.manual_seed(0)
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
from trl.experimental.ppo import PPOConfig, PPOTrainer

tok = AutoTokenizer.from_pretrained(args["policy"])
tok.padding_side = "left"
policy = AutoModelForCausalLM.from_pretrained(args["policy"])
ref = AutoModelForCausalLM.from_pretrained(args["policy"])
reward = AutoModelForSequenceClassification.from_pretrained(args["rm"], num_labels=1)
value = AutoModelForSequenceClassification.from_pretrained(args["rm"], num_labels=1)
ds = Dataset.from_dict({"input_ids": args["prompts"]})
stamps = []

class Clock(TrainerCallback):
    def on_step_end(self, *a, **k):
        stamps.append(time.perf_counter())

config = PPOConfig(
    # TRL 1.12: rollout batch = per_device_train_batch_size * gradient_accumulation_steps; each of its
    # num_mini_batches minibatches is cut into micro-batches of per_device_train_batch_size (here: one), one
    # optimizer step per minibatch, as ours.
    output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args["batch"], gradient_accumulation_steps=1,
    num_mini_batches=args["batch"] // args["mini_batch"], num_ppo_epochs=args["epochs"],
    total_episodes=args["batch"] * args["iterations"], local_rollout_forward_batch_size=args["batch"],
    response_length=args["max_new_tokens"], temperature=1.0, kl_coef=0.05, learning_rate=1e-3, stop_token="eos",
    num_sample_generations=0, report_to="none", save_strategy="no", use_cpu=True, bf16=False, fp16=False,
    logging_steps=10**6, seed=0, dataloader_num_workers=0,
)
trainer = PPOTrainer(args=config, processing_class=tok, model=policy, ref_model=ref, reward_model=reward,
                     value_model=value, train_dataset=ds)
trainer.add_callback(Clock())
start = time.perf_counter()
trainer.train()
times = [b - a for a, b in zip([start] + stamps[:-1], stamps)]
print("TRL_RESULT " + json.dumps({"iteration_s": times}))
"""


def ensure_trl_venv() -> Path:
    """TRL_VENV with TRL 1.12 (the last release with PPOTrainer); created once. A failed install (no registry
    inside the namespace, say) ends the program with one line saying what to run instead."""
    python = TRL_VENV / "bin" / "python"
    probe = [str(python), "-c", "import trl.experimental.ppo, trl; assert trl.__version__ == '1.12.0'"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python
    print(f"[bench] creating {TRL_VENV} ({' '.join(TRL_PACKAGES)})", flush=True)
    for cmd in ([sys.executable, "-m", "venv", str(TRL_VENV)], [str(python), "-m", "pip", "install", "-q", *TRL_PACKAGES]):
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            last = next((x for x in reversed((proc.stderr or proc.stdout).splitlines()) if x.strip()), "no output")
            sys.exit(f"[bench] error: could not set up {TRL_VENV} ({cmd[2]} {cmd[3]} failed: {last.strip()}); "
                     "run `python benchmarks/ppo_iteration.py --setup` where the package registry is reachable "
                     "(benchmarks/run.sh does), or pass --skip-trl")
    return python


def make_models(root: Path) -> tuple[str, str]:
    """(policy dir, reward-model dir): the embedded tiny LLaMA and a tiny RM of the same shape, with tokenizer."""
    import torch
    from transformers import LlamaForSequenceClassification

    from rlhf.reward.model import reward_config
    from rlhf.models.tiny import llama_config, materialize
    from rlhf.models.tokenizer import EMBEDDED_TOKENIZER, load_tokenizer

    policy = materialize("embedded:tiny-llama")
    tok = load_tokenizer(EMBEDDED_TOKENIZER)
    config = llama_config("tiny-llama", len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, num_labels=1)
    torch.manual_seed(1)
    rm = LlamaForSequenceClassification(config)
    for key, value in reward_config(None, None, "chat", 256).items():
        setattr(rm.config, key, value)
    rm.save_pretrained(root / "rm")
    tok.save_pretrained(root / "rm")
    return policy, str(root / "rm")


def prompt_ids(n: int) -> list[list[int]]:
    from rlhf.config import validate
    from rlhf.models.tokenizer import EMBEDDED_TOKENIZER, load_tokenizer
    from rlhf.ppo.config import PromptsSection
    from rlhf.ppo.prompts import load_prompts

    section = validate(PromptsSection, {"path": "data/instructions.jsonl", "format": "alpaca", "template": "chat",
                                        "max_prompt_length": 64}, "benchmark")
    prompts, _ = load_prompts(section, load_tokenizer(EMBEDDED_TOKENIZER))
    return [p.ids for p in prompts[:n]]


def run_ours(args, policy: str, rm: str, out: Path) -> dict:
    from rlhf.config import load_config
    from rlhf.metrics import read_metrics
    from stages import ppo

    overrides = [
        f"actor.path={policy}", "reward.function=null", "reward.kwargs={}", f"reward.model={rm}",
        f"loop.iterations={args.iterations}", f"rollout.prompts_per_iteration={args.batch}",
        f"rollout.max_new_tokens={args.max_new_tokens}", f"rollout.forward_batch_size={args.batch}",
        f"algorithm.ppo_epochs={args.epochs}", f"algorithm.mini_batch_size={args.mini_batch}",
        "algorithm.kl_coef=0.05", "actor_optim.lr=1e-3", f"deepspeed.zero_stage={args.zero_stage}",
        f"resources.actor_workers={args.actor_workers}", f"resources.ref_workers={args.actor_workers}",
        "resources.colocate_actor_ref=true", "resources.colocate_critic_reward=true",
        f"resources.cpus_per_bundle={args.cpus_per_bundle}", f"resources.threads_per_worker={args.threads}",
        f"deepspeed.precision={args.precision}",
    ]
    ppo.run(load_config(ppo.Config, REPO / "configs" / "ppo" / "tiny.yaml", overrides), out)
    rows = [r for r in read_metrics(out) if "time_iteration_s" in r][1:]
    return {"iteration_s": statistics.median(r["time_iteration_s"] for r in rows),
            **{k: statistics.median(r[k] for r in rows) for k in PHASES}}


def run_trl(args, policy: str, rm: str) -> dict:
    python = ensure_trl_venv()
    payload = {"policy": policy, "rm": rm, "prompts": prompt_ids(args.batch * args.iterations), "batch": args.batch,
               "mini_batch": args.mini_batch, "epochs": args.epochs, "iterations": args.iterations,
               "max_new_tokens": args.max_new_tokens, "threads": args.trl_threads}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([str(python), "-c", TRL_CHILD, json.dumps(payload)], capture_output=True, text=True,
                          env=env, cwd=tempfile.gettempdir())
    line = next((x for x in proc.stdout.splitlines() if x.startswith("TRL_RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"TRL benchmark failed:\n{proc.stderr[-4000:]}")
    times = json.loads(line.split(" ", 1)[1])["iteration_s"]
    print(f"[bench] TRL iterations (s): {[round(t, 3) for t in times]}", flush=True)
    times = times[1:]
    return {"iteration_s": statistics.median(times), "threads": payload["threads"]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--iterations", type=int, default=5, help="iterations per side (the first is warm-up)")
    p.add_argument("--batch", type=int, default=16, help="prompts per iteration")
    p.add_argument("--mini-batch", type=int, default=8, help="sequences per optimizer step")
    p.add_argument("--epochs", type=int, default=2, help="PPO epochs per batch")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--actor-workers", type=int, default=1, help="our actor (and reference) workers")
    p.add_argument("--cpus-per-bundle", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker of ours")
    # One thread is TRL's best case here: with 2 threads on 2 shared cores its OpenMP workers spin against each
    # other and the iteration took ~30x longer (181 s vs 5.9 s) on the busy development machine.
    p.add_argument("--trl-threads", type=int, default=1, help="torch threads for TRL's single process")
    p.add_argument("--zero-stage", type=int, default=0, choices=(0, 1, 2, 3), help="our trained roles' ZeRO stage")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "amp_bf16"),
                   help="our trained roles' deepspeed.precision (TRL runs fp32)")
    p.add_argument("--skip-trl", action="store_true", help="time ours only")
    p.add_argument("--skip-ours", action="store_true", help="time TRL only")
    p.add_argument("--json", default="benchmarks/results/ppo_iteration.json", help="write the results here")
    p.add_argument("--setup", action="store_true", help="only make the TRL venv (needs the package registry)")
    args = p.parse_args()
    if args.setup or not args.skip_trl:  # before the models are built: a missing venv fails in a second, not later
        ensure_trl_venv()
    if args.setup:
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as tmp:
        policy, rm = make_models(Path(tmp))
        trl = None if args.skip_trl else run_trl(args, policy, rm)
        ours = None if args.skip_ours else run_ours(args, policy, rm, Path(tmp) / "ours")
    print(f"\nPPO iteration, {args.batch} prompts x {args.max_new_tokens} new tokens, {args.epochs} epochs x "
          f"{args.batch // args.mini_batch} minibatches, tiny LLaMA, {os.cpu_count()} CPUs (median of "
          f"{args.iterations - 1} iterations after warm-up)")
    if ours:
        print(f"  ours: {ours['iteration_s']:.3f} s  (" + ", ".join(
            f"{k[5:-2]} {ours[k]:.3f}" for k in PHASES) + ")")
    if trl:
        print(f"  TRL 1.12 PPOTrainer ({trl['threads']} torch threads): {trl['iteration_s']:.3f} s")
    if ours and trl:
        print(f"  ours / TRL = {ours['iteration_s'] / trl['iteration_s']:.2f} (target <= 0.5)")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"ours": ours, "trl": trl, "ratio": ours["iteration_s"] / trl["iteration_s"] if ours and trl
                               else None, "args": vars(args), "cpus": os.cpu_count()}, indent=2) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    main()
