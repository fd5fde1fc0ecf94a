"""PPO with LoRA (StackLLaMA's way onto one GPU): the reference is the actor's base with its adapters off.

The unit test checks the adapter-off log-probs against a separately loaded reference; the slow one runs the stage
with no reference workers and checks that the saved actor is the merged model plain transformers loads.
"""

from __future__ import annotations

import pytest
import torch

from rlhf.models.lora import LoraSection, adapters_disabled, apply_lora
from rlhf.models.loading import load_causal_lm
from rlhf.models.tiny import materialize
from rlhf.ppo.experience import batched_logprobs, build_rollout


def test_adapter_off_logprobs_equal_a_separately_loaded_reference():
    path = materialize("embedded:tiny-llama")
    actor = apply_lora(load_causal_lm(path), LoraSection(r=4, dropout=0.0)).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in actor.named_parameters():
            if "lora_B" in name:  # peft starts B at zero; a trained adapter is not
                p.normal_(0, 0.5)
    reference = load_causal_lm(path).eval()
    rollout = build_rollout([[5, 6, 7, 8], [9, 10]], [[11, 12, 13], [14, 15, 16, 17]], eos_id=2, pad_id=0)
    with torch.no_grad():
        ref = batched_logprobs(reference, rollout, 1.0, 2)[0]
        on = batched_logprobs(actor, rollout, 1.0, 2)[0]
        with adapters_disabled(actor):
            off = batched_logprobs(actor, rollout, 1.0, 2)[0]
        on_again = batched_logprobs(actor, rollout, 1.0, 2)[0]
    assert torch.allclose(off, ref, atol=1e-6)
    assert not torch.allclose(on, ref, atol=1e-3)  # the adapters do change the policy
    assert torch.equal(on, on_again)  # and are back on afterwards
    assert all(p.requires_grad for n, p in actor.named_parameters() if "lora_" in n)


def test_adapters_disabled_needs_adapters():
    with pytest.raises(RuntimeError, match="no active LoRA adapters"):
        with adapters_disabled(torch.nn.Linear(2, 2)):
            pass


def test_lora_ppo_plan_holds_no_reference_copy():
    from rlhf.config import load_config
    from rlhf.plan import GiB, Hardware, estimate_stage
    from stages.ppo import Config

    over = ["actor.path=meta-llama/Llama-2-7b-hf", "reward.function=null", "reward.kwargs={}",
            "reward.model=meta-llama/Llama-2-7b-hf", "resources.colocate_all=true", "deepspeed.zero_stage=0",
            "actor.gradient_checkpointing=true", "critic.gradient_checkpointing=true"]
    full = estimate_stage("ppo", load_config(Config, "configs/ppo/tiny.yaml", over), Hardware(1, 1, 80 * GiB))
    lora = estimate_stage("ppo", load_config(Config, "configs/ppo/tiny.yaml", over + ["lora.r=16"]),
                          Hardware(1, 1, 80 * GiB))
    assert [r.role for r in lora.roles] == ["actor", "critic", "reward"]
    assert lora.gpus_needed == 1
    assert full.verdict == "does not fit" and lora.verdict in ("fits", "tight")
    actor = lora.roles[0]
    assert actor.trainable == 32 * 16 * (4096 + 4096) * 4  # r (in + out) for q, k, v, o_proj in 32 layers
    assert actor.gradients == 6 * actor.trainable


@pytest.mark.slow
def test_lora_ppo_runs_without_reference_workers(tmp_path):
    from rlhf.config import load_config
    from stages import ppo
    from tests.helpers import load_and_generate_plain

    out = tmp_path / "ppo-lora"
    cfg = load_config(ppo.Config, "configs/ppo/tiny.yaml", ["loop.iterations=2", "lora.r=4", "lora.dropout=0",
                                                            "resources.colocate_all=true"])
    manifest = ppo.run(cfg, out)
    assert manifest["status"] == "complete"
    from rlhf.metrics import read_metrics

    rows = [r for r in read_metrics(out) if "reward_mean" in r]
    assert len(rows) == 2 and rows[0]["kl"] == pytest.approx(0.0, abs=1e-6)  # adapters start at B = 0: pi = ref
    assert "lora_" not in " ".join(load_causal_lm(str(out / "actor")).state_dict())  # merged on save
    assert isinstance(load_and_generate_plain(out / "actor"), str)
