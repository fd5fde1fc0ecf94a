"""Eval stage: compare a policy (PPO's) with a baseline (SFT's) on held-out prompts.

    rlhf stage eval --config configs/eval/tiny.yaml --out runs/eval [key.sub=value ...]

validate -> sample (each policy answers every prompt K times, in this process) -> score:
  * oracle accuracy per policy (and per task family), when the prompts are task-world rows
    (``rlhf.world.oracle``): the share of samples that are exactly the correct, well-formed answer;
  * the oracle win rate of the policy over the baseline: sample k of a prompt against sample k of the
    other policy, ties half (``rlhf.world.winrate.win_rate``);
  * with ``reward_model``: each policy's mean RM score, and the RM's accuracy on held-out pairs with
    clean oracle labels (``rlhf.eval.rm``);
  * KL(policy || baseline), a Monte-Carlo estimate from the policy's samples (``rlhf.eval.kl``);
  * with ``judge``: an MT-bench pairwise LLM judge, both orders (``rlhf.eval.judge``).
-> save (OUT/eval.json, OUT/samples.jsonl, manifest.json last).

Decoding: the default samples at temperature 1.0, the temperature PPO's rollouts used, so an accuracy is
the expected oracle score of the distribution PPO optimised (and of the SFT model it started from), and the
KL estimate is on the same samples. ``sampling.temperature: 0`` evaluates greedy decoding instead (K=1);
the KL estimate then draws its own K samples at ``kl.temperature``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from rlhf.config import Section
from rlhf.models.loading import INFERENCE_PRECISION_HELP, InferencePrecision
from rlhf.data.formats import to_prompt_messages
from rlhf.data.io import write_jsonl
from rlhf.sections import Source, read_source
from rlhf.data.templates import encode_prompt
from rlhf.errors import UserError
from rlhf.eval.judge import LLMJudgeSection
from rlhf.manifest import StageRun, write_json_atomic
from rlhf.sampling.config import GenerationSection

EVAL_FILE = "eval.json"


class SamplingSection(Section):
    temperature: float = Field(1.0, ge=0, description="sampling temperature; 0 = greedy (then K=1)")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling mass")
    max_new_tokens: int = Field(32, ge=1, description="response length cap (use PPO's rollout.max_new_tokens)")
    samples_per_prompt: int = Field(2, ge=1, description="K responses per prompt and policy")
    seed: int = Field(0, description="sampling seed (the same for both policies)")
    best_of: int = Field(1, ge=1, description="best-of-n for the policy: each of its K responses is the reward "
                         "model's favourite of n samples (needs reward_model; KL reported as log n - (n-1)/n)")


class RMPairsSection(Section):
    samples_per_prompt: int = Field(4, ge=2, description="K baseline samples per prompt; its best vs worst is a pair")
    seed: int = Field(0, description="seed for sampling and for breaking oracle ties")


class KLSection(Section):
    enabled: bool = Field(True, description="estimate KL(policy || baseline) on the policy's samples")
    temperature: float = Field(1.0, gt=0, description="temperature of the log-probs (PPO's rollout temperature)")


class Config(Section):
    """Evaluation of a policy against a baseline on held-out prompts."""

    policy: str = Field(..., description="the policy to evaluate: an HF dir (e.g. ${ppo.actor}) or embedded:<name>")
    baseline: str | None = Field(None, description="the policy to compare with (e.g. ${sft.model})")
    policy_name: str = Field("ppo", description="name of the policy in eval.json and the report")
    baseline_name: str = Field("sft", description="name of the baseline in eval.json and the report")
    tokenizer: str | None = Field(None, description="tokenizer path; default: each policy's own")
    prompts: Source = Field(..., description="held-out prompt rows (task-world rows carry 'task' for the oracle): a "
                                             "path, or {path, config, split} for a hub dataset")
    format: Literal["auto", "alpaca", "sharegpt", "messages", "prompt_completion"] = Field(
        "auto", description="prompt record format; auto detects by keys")
    template: Literal["alpaca", "vicuna", "koala", "chat"] = Field("alpaca", description="the policies' prompt template")
    limit: int | None = Field(None, ge=1, description="use only the first N prompts")
    oracle: Literal["auto", "on", "off"] = Field(
        "auto", description="score with the task world's oracle; auto = when every row has a 'task' field")
    reward_model: str | None = Field(None, description="RM dir (e.g. ${rm.model}): mean scores and clean pair accuracy")
    sampling: SamplingSection = Field(default_factory=SamplingSection, description="how the policies answer")
    rm_pairs: RMPairsSection = Field(default_factory=RMPairsSection, description="held-out pairs for RM accuracy")
    kl: KLSection = Field(default_factory=KLSection, description="KL(policy || baseline) estimate")
    judge: LLMJudgeSection | None = Field(None, description="optional pairwise LLM judge (OpenAI-compatible API)")
    batch_size: int = Field(64, ge=1, description="sequences per generate/forward call")
    precision: InferencePrecision = Field("auto", description=INFERENCE_PRECISION_HELP)
    generation: GenerationSection = Field(default_factory=GenerationSection,
                                          description="sampling engine and token budget (rlhf.sampling)")
    threads: int | None = Field(None, ge=1, description="torch threads (default: torch's own)")


def load_rows(cfg: Config) -> tuple[list[dict], list[list[dict]], bool]:
    """(rows, prompt messages, whether the oracle scores them)."""
    rows = read_source(cfg.prompts)[: cfg.limit]
    if not rows:
        raise UserError(f"prompts {cfg.prompts.path}: no rows")
    messages = [to_prompt_messages(r, cfg.format) for r in rows]
    has_tasks = all(isinstance(r.data, dict) and "task" in r.data for r in rows)
    if cfg.oracle == "on" and not has_tasks:
        raise UserError(f"prompts {cfg.prompts.path}: oracle: on needs a 'task' field in every row (task-world prompts)")
    return [r.data for r in rows], messages, has_tasks and cfg.oracle != "off"


def run(cfg: Config, out: str | Path) -> dict:
    from rlhf.eval.evaluate import evaluate
    from rlhf.models.loading import resolve_model_path
    from rlhf.reward.model import check_reward_model

    out = Path(out)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.reward_model:  # before any policy loads: a causal-LM dir would score with a random head
        check_reward_model(resolve_model_path(cfg.reward_model))
    inputs = {"policy": cfg.policy, "baseline": cfg.baseline, "prompts": cfg.prompts.path, "reward_model": cfg.reward_model}
    with StageRun("eval", out, cfg, inputs={k: v for k, v in inputs.items() if v and Path(v).exists()}) as stage:
        rows, messages, use_oracle = load_rows(cfg)
        print(f"[rlhf] eval: {cfg.policy_name} vs {cfg.baseline_name if cfg.baseline else '-'} on {len(rows)} "
              f"prompts x {cfg.sampling.samples_per_prompt} samples (oracle {'on' if use_oracle else 'off'}) -> {out}",
              flush=True)
        result, samples = evaluate(cfg, rows, messages, use_oracle, lambda m, tok: encode_prompt(m, cfg.template, tok))
        write_json_atomic(out / EVAL_FILE, result)
        write_jsonl(out / "samples.jsonl", samples)
        manifest = stage.complete(result, outputs={"eval": out / EVAL_FILE, "samples": out / "samples.jsonl"})
    print(f"[rlhf] eval done: {summary_line(result)}", flush=True)
    return manifest


def summary_line(result: dict) -> str:
    acc = result.get("oracle_accuracy") or {}
    parts = [f"oracle accuracy {', '.join(f'{k} {v:.3f}' for k, v in acc.items())}" if acc else None]
    for key in ("win_rate_ppo_vs_sft", "rm_accuracy_clean", "kl_ppo_vs_sft"):
        if result.get(key) is not None:
            parts.append(f"{key} {result[key]:.3f}")
    return "; ".join(p for p in parts if p)
