"""The PPO stage end to end on tiny models with real Ray and DeepSpeed on CPU.

1. Programmatic reward: the reward rises clearly over 30 iterations with the KL under a bound; outputs load.
2. Huge fixed KL coefficient: the policy stays at the reference; a NaN reward skips that update and the run goes
   on; NaNs in a row stop the stage with a clear error, the last good checkpoint intact; the run resumes from it.
3. An RM (built here in the RM stage's output format) as reward and critic init, 2 actor workers under ZeRO-2,
   actor + reference and critic + reward colocated.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhf.config import load_config
from rlhf.errors import UserError
from rlhf.metrics import read_metrics
from tests.helpers import load_and_generate_plain, ray_held

pytestmark = pytest.mark.slow
TINY = "configs/ppo/tiny.yaml"
TIME_KEYS = ("time_generation_s", "time_scoring_s", "time_training_s", "time_weight_sync_s")


def run_ppo(out: Path, *overrides: str) -> dict:
    from stages import ppo

    return ppo.run(load_config(ppo.Config, TINY, list(overrides)), out)


def good_rows(out: Path) -> list[dict]:
    return [r for r in read_metrics(out) if "reward_mean" in r]


def test_reward_rises_with_kl_bounded_and_actor_loads(tmp_path):
    out = tmp_path / "ppo"
    manifest = run_ppo(out)
    m = manifest["metrics"]
    assert manifest["status"] == "complete" and m["iterations"] == 30
    # Count of "e" in 16 sampled tokens starts near 5; PPO should push it up by several.
    assert m["reward_last"] > m["reward_first"] + 3.0, m
    # The KL grows as the policy moves but stays far from a collapse onto one token (16 * log 1910 ~ 121 nats).
    assert 0.0 < m["kl_last"] < 40.0, m
    rows = good_rows(out)
    assert [r["step"] for r in rows] == list(range(1, 31))
    for key in ("reward_std", "kl", "entropy", "policy_loss", "value_loss", "clipfrac", "approx_kl",
                "response_length", *TIME_KEYS):
        assert all(key in r for r in rows), key
    # The first rollout comes from the reference weights. Its old log-probs are the sampler's (rollout.old_logprobs
    # auto, fp32) and the reference's a full forward: position by position they agree.
    assert all(r["old_logprobs_sampled"] == 1.0 for r in rows)
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-4)
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert (out / "critic" / "config.json").is_file()
    assert "GENERATED" in load_and_generate_plain(out / "actor")


def test_huge_kl_nan_skip_stop_and_resume(tmp_path):
    out = tmp_path / "ppo-kl"
    common = ("algorithm.kl_coef=1000", "loop.iterations=10", "loop.checkpoint_every=1",
              "loop.max_nonfinite_in_a_row=2", "loop.keep_checkpoints=1")
    # Reward calls 2, 4 and 5 return NaN: iteration 2 is skipped and the run goes on; 4 and 5 stop it.
    with pytest.raises(UserError, match=r"2 updates in a row skipped.*non-finite reward.*step_3"):
        run_ppo(out, *common, "reward.function=tests.ppo_rewards:nan_on_calls", "reward.kwargs={calls: [2, 4, 5]}")
    assert json.loads((out / "manifest.json").read_text())["status"] == "failed"
    assert json.loads((out / "checkpoints" / "latest.json").read_text()) == {"iteration": 3}
    assert (out / "checkpoints" / "actor" / "step_3").is_dir() and (out / "checkpoints" / "critic" / "step_3").is_dir()
    skipped = [r for r in read_metrics(out) if r.get("skipped")]
    assert [(r["step"], r["skip_reason"]) for r in skipped] == [(2, "non-finite reward"), (4, "non-finite reward"),
                                                               (5, "non-finite reward")]

    manifest = run_ppo(out, *common)  # the plain reward again: resumes after iteration 3
    assert manifest["status"] == "complete"
    rows = read_metrics(out)
    assert [r["step"] for r in rows] == list(range(1, 11))
    assert rows[1].get("skipped") == 1 and manifest["metrics"]["skipped_updates"] == 1
    kls = [r["kl"] for r in rows if "kl" in r]
    # beta = 1000 pins the policy to the reference. Advantages are whitened and Adam steps have a fixed size, so the
    # policy still jitters around it: about 1 nat over a 16-token response (< 0.1 per token), where the same run
    # with beta = 0.05 drifts to ~25 nats; and the reward does not climb.
    assert kls[0] == 0.0 and max(kls) < 2.0 and sum(kls[-5:]) / 5 < 1.5, kls
    m = manifest["metrics"]
    assert m["reward_last"] < m["reward_first"] + 1.5, m
    assert (out / "actor" / "config.json").is_file()


def test_dead_actor_worker_is_restarted_from_the_last_checkpoint(tmp_path):
    """SIGKILL the actor role's worker process after the first checkpoint: the roles restart, resume from the newest
    checkpoint, and the stage completes with every iteration logged exactly once."""
    import os
    import signal
    import threading
    import time

    out = tmp_path / "ppo-kill"
    killed: list[int] = []

    def kill_actor_after_checkpoint() -> None:
        import ray
        from ray.util.state import list_actors

        deadline = time.time() + 600
        while time.time() < deadline and not (out / "checkpoints" / "latest.json").is_file():
            time.sleep(0.5)
        if ray.is_initialized():
            # This test's own Ray instance (other instances may share the machine): its actors only.
            alive = list_actors(address=ray.get_runtime_context().gcs_address,
                                filters=[("class_name", "=", "ActorWorker"), ("state", "=", "ALIVE")])
            if alive:
                os.kill(alive[0].pid, signal.SIGKILL)
                killed.append(alive[0].pid)

    killer = threading.Thread(target=kill_actor_after_checkpoint, daemon=True)
    killer.start()
    manifest = run_ppo(out, "loop.iterations=6", "loop.checkpoint_every=2", "resources.max_failures=1")
    killer.join(timeout=5)
    assert killed, "the actor worker was never killed"
    assert manifest["status"] == "complete"
    assert [r["step"] for r in read_metrics(out)] == list(range(1, 7))


def make_reward_model(path: Path) -> Path:
    """An RM dir as the RM stage writes it: LlamaForSequenceClassification (1 label) + tokenizer + rlhf_* keys."""
    import torch
    from transformers import LlamaForSequenceClassification

    from rlhf.reward.model import reward_config
    from rlhf.models.tiny import llama_config
    from rlhf.models.tokenizer import EMBEDDED_TOKENIZER, load_tokenizer

    tok = load_tokenizer(EMBEDDED_TOKENIZER)
    config = llama_config("tiny-llama", len(tok), tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, num_labels=1)
    torch.manual_seed(1)
    model = LlamaForSequenceClassification(config)
    for key, value in reward_config(0.1, 2.0, "chat", 128).items():
        setattr(model.config, key, value)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def test_reward_model_two_actor_workers_zero2_colocated(tmp_path):
    rm = make_reward_model(tmp_path / "rm")
    out = tmp_path / "ppo-rm"
    manifest = run_ppo(
        out, "reward.function=null", "reward.kwargs={}", f"reward.model={rm}", "loop.iterations=3",
        "deepspeed.zero_stage=2", "resources.actor_workers=2", "resources.ref_workers=2",
        "resources.colocate_actor_ref=true", "resources.colocate_critic_reward=true", "resources.cpus_per_bundle=0.5",
        "rollout.old_logprobs=recompute",  # the actor workers' forward, sharded (the default in bf16)
    )
    assert manifest["status"] == "complete"
    assert manifest["inputs"]["critic"]["path"] == str(rm)  # critic initialised from the RM
    rows = good_rows(out)
    assert len(rows) == 3 and all(r["reward_std"] > 0 and r["old_logprobs_sampled"] == 0.0 for r in rows)
    assert "GENERATED" in load_and_generate_plain(out / "actor")
    from rlhf.reward.model import RewardScorer

    critic = RewardScorer(str(out / "critic"))  # the trained critic is an RM-format dir again
    assert len(critic.score_texts(["USER: hi\nASSISTANT: hello"])) == 1


def test_a_role_that_fails_to_start_releases_every_reservation(tmp_path):
    """The reward worker cannot load its function, so starting the roles fails after the placement group and the
    other roles exist: the stage fails with the cause, and the bundles and workers are freed for the next job."""
    with pytest.raises(Exception, match="no_such_reward"):
        run_ppo(tmp_path / "ppo", "reward.function=tests.ppo_rewards:no_such_reward", "loop.iterations=1")
    assert json.loads((tmp_path / "ppo" / "manifest.json").read_text())["status"] == "failed"
    assert ray_held() == []


def test_colocate_all_with_states_asleep_while_generating_matches_awake(tmp_path):
    """All four roles on one bundle; the actor's and critic's optimizer states and gradients leave for the host while
    the actor generates and come back: the run is bit-identical, step for step and in the trained actor's content
    hash, to one that keeps them. Any nondeterminism in a run (threads, sampling, reductions) would break that
    equality too, so it is also the README's reproducibility statement: one config and seed on one machine gives
    the same numbers twice."""
    common = ("loop.iterations=2", "resources.colocate_all=true", "resources.cpus_per_bundle=1")
    awake = run_ppo(tmp_path / "awake", *common)
    asleep = run_ppo(tmp_path / "asleep", *common, "resources.offload_while_generating=true")
    assert awake["outputs"]["actor"]["hash"] == asleep["outputs"]["actor"]["hash"]
    rows = {name: good_rows(tmp_path / name) for name in ("awake", "asleep")}
    assert len(rows["awake"]) == 2 and all(r["time_state_offload_s"] >= 0 for r in rows["asleep"])
    assert [{k: v for k, v in r.items() if not k.startswith("time")} for r in rows["awake"]] == \
        [{k: v for k, v in r.items() if not k.startswith("time")} for r in rows["asleep"]]
