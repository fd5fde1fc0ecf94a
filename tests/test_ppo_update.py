"""PPO's update on a real DeepSpeed engine (one gloo rank on loopback, the tiny LLaMA, the actor's clipped loss):
gradient accumulation over micro-batches gives the one-batch update, and an update that meets a non-finite loss
is not applied at all (weights, optimizer, scheduler, step counters), whichever minibatch it fails on."""

from __future__ import annotations


import pytest
import torch

from rlhf.engine.build import build_engine
from rlhf.ppo.experience import Experience, build_rollout, response_logits, response_logprobs
from rlhf.ppo.losses import policy_loss
from rlhf.ppo.minibatch import micro_weights, run_update
from rlhf.sections import DeepSpeedSection, OptimSection
from tests.helpers import needs_loopback

pytestmark = needs_loopback()


@pytest.fixture(scope="module")
def process_group():
    """A one-rank gloo group on loopback, the same kind each PPO role worker forms. 
    One thread, like one worker with cpus_per_worker 1 (spinning OMP threads only contend)."""
    from rlhf.engine.build import single_rank

    with single_rank(threads=1):
        yield


def experience(rows: int = 8) -> Experience:
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 200, (3 + i % 3,), generator=g).tolist() for i in range(rows)]
    responses = [torch.randint(3, 200, (2 + (i * 3) % 5,), generator=g).tolist() for i in range(rows)]  # ragged
    rollout = build_rollout(prompts, responses, eos_id=2, pad_id=0)
    shape = rollout.response_mask.shape
    old_logp = -5.0 + 0.1 * torch.randn(shape, generator=g)
    adv = torch.randn(shape, generator=g)
    return Experience(rollout, old_logp, torch.zeros(shape), adv, adv.clone())


def loss_fn(engine, batch: Experience, agg: str = "token_mean"):
    logp = response_logprobs(response_logits(engine, batch.rollout), batch.rollout, 1.0)
    return policy_loss(logp, batch.old_logp, batch.advantages, batch.rollout.response_mask, 0.2, None, agg, 8)


def row_mean_loss_fn(engine, batch: Experience):
    return loss_fn(engine, batch, "seq_sum_norm")  # Dr. GRPO's per-row aggregation


def engine_for(micro: int, accumulation: int, zero_stage: int = 2):
    from rlhf.models.loading import load_causal_lm, resolve_model_path

    torch.manual_seed(0)
    model = load_causal_lm(resolve_model_path("embedded:tiny-llama"))
    ds = DeepSpeedSection(zero_stage=zero_stage, precision="fp32", micro_batch_size=micro,
                          gradient_accumulation_steps=accumulation, gradient_clipping=0.0)
    return build_engine(model, ds, OptimSection(lr=1e-3, schedule="linear", warmup_steps=2), total_steps=10)


def weights(engine) -> dict[str, torch.Tensor]:
    """Full weights (ZeRO-3: gathered from the partitions)."""
    import deepspeed

    params = list(engine.module.parameters())
    with deepspeed.zero.GatheredParameters(params, enabled=engine.zero_optimization_stage() == 3):
        return {n: p.detach().clone() for n, p in engine.module.named_parameters()}


def optimizer_state(engine) -> list[torch.Tensor]:
    """The optimizer's master weights and every state tensor (Adam moments, step)."""
    from rlhf.engine.snapshot import base_optimizer, master_params

    opt = base_optimizer(engine)
    out = [p.detach().clone() for p in master_params(engine)]
    for state in opt.state.values():
        out.extend(v.detach().clone() for v in state.values() if torch.is_tensor(v))
    return out


def assert_close(a: dict, b: dict, atol: float) -> None:
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=atol, rtol=0, msg=k)


def nan_on_call(k: int):
    """loss_fn whose k-th call (1-based) returns a NaN loss."""
    calls = [0]

    def fn(engine, batch):
        calls[0] += 1
        loss, stats = loss_fn(engine, batch)
        return (loss * float("nan") if calls[0] == k else loss), stats
    return fn


def test_micro_weights_are_token_shares() -> None:
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1]])
    assert micro_weights(mask, 2) == pytest.approx([4 * 2 / 9, 5 * 2 / 9])  # tokens 4 and 5 of 9, two parts
    assert micro_weights(torch.zeros(4, 3), 2) == [1.0, 1.0]
    assert micro_weights(mask, 2, "rows") == [1.0, 1.0]  # a per-row mean (Dr. GRPO's seq_sum_norm)


@pytest.mark.slow
@pytest.mark.parametrize("weigh_by", ["tokens", "rows"])
def test_accumulated_update_equals_one_batch_update(process_group, weigh_by) -> None:
    """Minibatches of 4 rows (2 optimizer steps): 2 micro-batches of 2 accumulated == one forward of 4 (fp32),
    for a token-mean loss and a per-row one, on ragged responses."""
    exp = experience()
    fn = loss_fn if weigh_by == "tokens" else row_mean_loss_fn
    whole = engine_for(micro=4, accumulation=1)
    stats_whole = run_update(whole, exp, epochs=1, size=4, seed=0, loss_fn=fn, device=torch.device("cpu"),
                             weigh_by=weigh_by)
    accumulated = engine_for(micro=2, accumulation=2)
    stats_acc = run_update(accumulated, exp, epochs=1, size=4, seed=0, loss_fn=fn, device=torch.device("cpu"),
                           micro=2, weigh_by=weigh_by)
    assert whole.global_steps == accumulated.global_steps == 2
    # Adam divides by sqrt(v), so float32 summation-order noise in the gradients of weights with tiny gradients
    # shows as weight differences up to ~3e-6 (measured, fused and unfused AdamW); micro-batches weighted wrongly
    # (rows instead of tokens) differ by 3e-3. The bar sits between the two.
    assert_close(weights(whole), weights(accumulated), atol=1e-5)
    assert stats_acc["loss"] == pytest.approx(stats_whole["loss"], abs=1e-5)
    assert stats_acc["nonfinite_loss"] == stats_whole["nonfinite_loss"] == 0.0


@pytest.mark.slow
def test_single_rank_zero0_skips_the_gradient_allreduce_with_the_same_update(process_group) -> None:
    """One data-parallel rank under ZeRO-0: no flatten/all-reduce/copy-back of the gradients after each backward,
    and the update is exactly the one with DeepSpeed's reduction left on. The optimizer is torch's fused AdamW."""
    from rlhf.engine.snapshot import base_optimizer

    exp = experience()
    skipped = engine_for(micro=4, accumulation=1, zero_stage=0)
    reduced = engine_for(micro=4, accumulation=1, zero_stage=0)
    reduced.enable_backward_allreduce = True
    assert skipped.enable_backward_allreduce is False
    assert base_optimizer(skipped).defaults["fused"] is True
    for engine in (skipped, reduced):
        run_update(engine, exp, epochs=2, size=4, seed=0, loss_fn=loss_fn, device=torch.device("cpu"))
    assert skipped.global_steps == reduced.global_steps == 4
    assert_close(weights(skipped), weights(reduced), atol=0)
    assert engine_for(micro=4, accumulation=1, zero_stage=2).enable_backward_allreduce is True  # ZeRO's own path


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage,micro,nan_call", [(2, None, 2), (2, 2, 4), (0, 2, 4), (3, 2, 4)],
                         ids=["zero2-second-minibatch", "zero2-mid-accumulation", "zero0-mid-accumulation",
                              "zero3-mid-accumulation"])
def test_nonfinite_update_is_not_applied(process_group, zero_stage, micro, nan_call) -> None:
    """A NaN loss in the 2nd minibatch (after the 1st stepped), or in the 2nd micro-batch of it (after the 1st
    micro-batch's backward): the engine is as before the update, and a later clean update matches one on a fresh
    engine (no gradient or counter left over)."""
    exp = experience()
    accumulation = 4 // (micro or 4)
    engine = engine_for(micro=micro or 4, accumulation=accumulation, zero_stage=zero_stage)
    before_w, before_opt = weights(engine), optimizer_state(engine)
    lr = engine.get_lr()[0]
    stats = run_update(engine, exp, epochs=1, size=4, seed=0, loss_fn=nan_on_call(nan_call),
                       device=torch.device("cpu"), micro=micro)
    assert stats["nonfinite_loss"] == 1.0
    assert_close(before_w, weights(engine), atol=0)
    after_opt = optimizer_state(engine)
    assert len(after_opt) == len(before_opt) and all(torch.equal(a, b) for a, b in zip(before_opt, after_opt))
    assert engine.global_steps == 0 and engine.get_lr()[0] == lr

    run_update(engine, exp, epochs=1, size=4, seed=1, loss_fn=loss_fn, device=torch.device("cpu"), micro=micro)
    fresh = engine_for(micro=micro or 4, accumulation=accumulation, zero_stage=zero_stage)
    run_update(fresh, exp, epochs=1, size=4, seed=1, loss_fn=loss_fn, device=torch.device("cpu"), micro=micro)
    assert_close(weights(fresh), weights(engine), atol=0)


def test_single_rank_refuses_a_process_that_already_has_a_group(process_group):
    import torch.distributed as dist

    from rlhf.engine.build import single_rank
    from rlhf.errors import UserError

    with pytest.raises(UserError, match="already has one"):
        with single_rank(threads=1):
            pass
    assert dist.is_initialized()  # the fixture's group is left as it was
