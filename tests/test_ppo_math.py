"""PPO math on hand-computed numbers: masks, KL, rewards, GAE, losses. Arithmetic is written out per case."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlhf.ppo.estimators import gae
from rlhf.ppo.kl import AdaptiveKLController, FixedKLController, kl_penalty
from rlhf.ppo.losses import entropy_from_logits, logprobs_from_logits, policy_loss, value_loss
from rlhf.ppo.masking import masked_mean, masked_sum, masked_var, masked_whiten
from rlhf.reward.shaping import RunningMoments, clip_reward, compose_rewards, normalize_score

D = torch.float64


def t(values, dtype=D) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


# ---------------------------------------------------------------- masking


X = t([[1.0, 2.0, 3.0], [4.0, 5.0, float("nan")]])
M = t([[1, 1, 0], [1, 0, 0]])  # kept values: 1, 2, 4


def test_masked_sum_and_mean_ignore_masked_values_even_nan() -> None:
    assert masked_sum(X, M).item() == pytest.approx(7.0)
    assert masked_mean(X, M).item() == pytest.approx(7.0 / 3.0)
    # Per row: (1 + 2) / 2 = 1.5 and 4 / 1 = 4.
    assert torch.allclose(masked_mean(X, M, dim=1), t([1.5, 4.0]))
    assert torch.allclose(masked_sum(X, M.bool(), dim=1), t([3.0, 4.0]))
    # An all-masked row gives 0, not NaN.
    assert masked_mean(X, t([[1, 1, 0], [0, 0, 0]]), dim=1)[1].item() == 0.0


def test_masked_var_hand_computed() -> None:
    # mean 7/3; deviations -4/3, -1/3, 5/3; squares sum (16 + 1 + 25) / 9 = 42/9 = 14/3.
    assert masked_var(X, M, unbiased=False).item() == pytest.approx(14.0 / 9.0)  # / 3
    assert masked_var(X, M, unbiased=True).item() == pytest.approx(14.0 / 6.0)  # / (3 - 1)
    with pytest.raises(ValueError):
        masked_var(X, t([[1, 0, 0], [0, 0, 0]]), unbiased=True)


def test_masked_whiten_has_masked_mean_0_and_var_1() -> None:
    w = masked_whiten(X, M)
    std = math.sqrt(7.0 / 3.0)
    expected = t([[(1 - 7 / 3) / std, (2 - 7 / 3) / std, 0.0], [(4 - 7 / 3) / std, 0.0, 0.0]])
    assert torch.allclose(w, expected, atol=1e-7)
    assert masked_mean(w, M).item() == pytest.approx(0.0, abs=1e-7)
    assert masked_var(w, M).item() == pytest.approx(1.0, abs=1e-6)
    # Larger random case, float mask with ragged rows.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 7, generator=g, dtype=D) * 3 + 5
    mask = t([[1] * 7, [1, 1, 1, 0, 0, 0, 0], [1] + [0] * 6, [1] * 7], torch.float32)  # prefix runs of 1s
    w = masked_whiten(x, mask)
    assert masked_mean(w, mask).item() == pytest.approx(0.0, abs=1e-7)
    assert masked_var(w, mask).item() == pytest.approx(1.0, abs=1e-6)
    assert torch.all(w[mask == 0] == 0)


def test_masked_whiten_without_shift_keeps_mean() -> None:
    w = masked_whiten(X, M, shift_mean=False)
    assert masked_mean(w, M).item() == pytest.approx(7.0 / 3.0)
    assert masked_var(w, M).item() == pytest.approx(1.0, abs=1e-6)


def test_masked_whiten_single_token_is_only_centred() -> None:
    one = t([[3.0, 9.0]])
    assert torch.equal(masked_whiten(one, t([[1, 0]])), t([[0.0, 0.0]]))
    assert torch.equal(masked_whiten(one, t([[1, 0]]), shift_mean=False), t([[3.0, 0.0]]))


# ---------------------------------------------------------------- KL


def test_kl_estimators_on_known_numbers() -> None:
    # Token 0: pi = 0.5, pi_ref = 0.25 -> r = pi_ref / pi = 0.5.  Token 1: pi = 0.25, pi_ref = 0.5 -> r = 2.
    logp = t([[math.log(0.5), math.log(0.25)]])
    ref = t([[math.log(0.25), math.log(0.5)]])
    k1 = kl_penalty(logp, ref, "k1")
    assert torch.allclose(k1, t([[math.log(2), -math.log(2)]]))  # k1 = -log r; negative when pi < pi_ref
    k2 = kl_penalty(logp, ref, "k2")
    assert torch.allclose(k2, t([[0.5 * math.log(2) ** 2, 0.5 * math.log(2) ** 2]]))
    k3 = kl_penalty(logp, ref, "k3")
    # (r - 1) - log r: (0.5 - 1) + log 2 = 0.19315; (2 - 1) - log 2 = 0.30685.
    assert torch.allclose(k3, t([[-0.5 + math.log(2), 1.0 - math.log(2)]]))
    assert k3[0, 0].item() == pytest.approx(0.1931472, abs=1e-7)
    with pytest.raises(ValueError):
        kl_penalty(logp, ref, "k4")  # type: ignore[arg-type]


def test_k3_nonnegative_and_zero_on_policy() -> None:
    g = torch.Generator().manual_seed(1)
    logp, ref = -torch.rand(8, 16, generator=g) * 5, -torch.rand(8, 16, generator=g) * 5
    assert torch.all(kl_penalty(logp, ref, "k3") >= 0)
    assert torch.all(kl_penalty(logp, ref, "k2") >= 0)
    assert torch.all(kl_penalty(logp, logp, "k3") == 0)
    # Clamped log-ratio: ref - logp = 30 is treated as 10, so the penalty stays finite.
    far = kl_penalty(t([[-30.0]]), t([[0.0]]), "k3")
    assert far.item() == pytest.approx(math.exp(10) - 1 - 10)


def test_adaptive_kl_controller_moves_toward_target_and_clips() -> None:
    # target 6, horizon 10000, n_steps 256 -> K_beta = 0.0256.
    ctl = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10000)
    # KL 6.6: error 6.6/6 - 1 = 0.1 -> beta * (1 + 0.1 * 0.0256) = 0.2 * 1.00256.
    assert ctl.update(6.6, 256) == pytest.approx(0.2 * 1.00256)
    ctl = AdaptiveKLController(0.2, 6.0, 10000)
    # KL 9: error 0.5 clipped to 0.2 -> 0.2 * 1.00512 = 0.201024 (KL above target: coefficient rises).
    assert ctl.update(9.0, 256) == pytest.approx(0.201024)
    ctl = AdaptiveKLController(0.2, 6.0, 10000)
    # KL 0: error -1 clipped to -0.2 -> 0.2 * 0.99488 = 0.198976 (KL below target: coefficient falls).
    assert ctl.update(0.0, 256) == pytest.approx(0.198976)
    assert ctl.value == pytest.approx(0.198976)
    # At target it stays put.
    ctl = AdaptiveKLController(0.2, 6.0, 10000)
    assert ctl.update(6.0, 256) == pytest.approx(0.2)


def test_adaptive_kl_controller_closes_the_loop() -> None:
    # A toy policy whose KL falls as beta rises (KL = 1.2 / beta): the controller settles at beta = 0.2.
    ctl = AdaptiveKLController(init_kl_coef=0.05, target=6.0, horizon=1000)
    for _ in range(2000):
        ctl.update(1.2 / ctl.value, 64)
    assert ctl.value == pytest.approx(0.2, rel=1e-3)


def test_fixed_kl_controller() -> None:
    ctl = FixedKLController(0.05)
    assert ctl.update(100.0, 512) == 0.05
    assert ctl.value == 0.05
    with pytest.raises(ValueError):
        FixedKLController(-1.0)


# ---------------------------------------------------------------- rewards


def test_compose_rewards_places_score_at_last_token_and_penalises_missing_eos() -> None:
    score = t([1.0, 2.0])
    kl = t([[0.1, 0.2, 0.3], [0.4, -0.2, 9.0]])  # 9.0 sits after row 1's EOS: must not appear
    mask = t([[1, 1, 1], [1, 1, 0]])
    ended = torch.tensor([False, True])
    r = compose_rewards(score, kl, mask, kl_coef=0.5, missing_eos_penalty=1.5, ended_with_eos=ended)
    # Row 0: -0.5 * kl = [-0.05, -0.1, -0.15]; no EOS so score 1.0 - 1.5 = -0.5 lands on token 2.
    # Row 1: [-0.2, +0.1, 0]; score 2.0 lands on token 1 (its EOS).
    assert torch.allclose(r, t([[-0.05, -0.1, -0.65], [-0.2, 2.1, 0.0]]))
    r = compose_rewards(score, kl, mask, kl_coef=0.5, missing_eos_penalty=None, ended_with_eos=ended)
    assert torch.allclose(r, t([[-0.05, -0.1, 0.85], [-0.2, 2.1, 0.0]]))


def test_compose_rewards_empty_row_contributes_nothing() -> None:
    r = compose_rewards(t([3.0]), t([[0.5, 0.5]]), t([[0, 0]]), 0.1, None, torch.tensor([False]))
    assert torch.equal(r, t([[0.0, 0.0]]))


def test_clip_reward() -> None:
    assert torch.equal(clip_reward(t([-3.0, 0.5, 3.0]), 1.0), t([-1.0, 0.5, 1.0]))
    assert torch.equal(clip_reward(t([-3.0, 3.0]), None), t([-3.0, 3.0]))
    with pytest.raises(ValueError):
        clip_reward(t([1.0]), 0.0)


def test_running_moments_match_numpy_over_concatenated_batches() -> None:
    batches = [[1.0, 2.0, 3.0], [4.0, 5.0], [10.0]]
    rm = RunningMoments()
    # After [1, 2, 3]: mean 2, unbiased var ((1 + 0 + 1) / 2) = 1.
    assert rm.update(t(batches[0])) == pytest.approx((2.0, 1.0))
    rm.update(t(batches[1]))
    mean, std = rm.update(t(batches[2]))
    # All six: mean 25/6; sum of squares 155, M2 = 155 - 6 * (25/6)^2 = 305/6, var = M2 / 5 = 61/6.
    assert mean == pytest.approx(25.0 / 6.0)
    assert std == pytest.approx(math.sqrt(61.0 / 6.0))
    flat = np.concatenate([np.array(b) for b in batches])
    assert (rm.mean, rm.std) == pytest.approx((flat.mean(), flat.std(ddof=1)))
    # Random batches of uneven sizes, in float32.
    g = torch.Generator().manual_seed(2)
    rm, seen = RunningMoments(), []
    for n in (7, 1, 33, 4):
        x = torch.randn(n, generator=g) * 4 + 3
        rm.update(x)
        seen.append(x.double().numpy())
    flat = np.concatenate(seen)
    assert rm.count == 45
    assert (rm.mean, rm.std) == pytest.approx((flat.mean(), flat.std(ddof=1)), rel=1e-9)
    restored = RunningMoments()
    restored.load_state_dict(rm.state_dict())
    assert (restored.mean, restored.std) == (rm.mean, rm.std)


def test_normalize_score() -> None:
    rm = RunningMoments()
    # mean 2, std 1 -> (s - 2) / 1.
    assert torch.allclose(normalize_score(t([1.0, 2.0, 3.0]), rm), t([-1.0, 0.0, 1.0]), atol=1e-7)
    # Without updating, the stored moments are used as they are; shift_mean=False only scales.
    assert torch.allclose(normalize_score(t([4.0]), rm, update=False, shift_mean=False), t([4.0]), atol=1e-7)
    assert rm.count == 3


# ---------------------------------------------------------------- GAE


def test_gae_hand_computed_with_masked_tail() -> None:
    gamma, lam = 0.9, 0.8  # gamma * lam = 0.72
    rewards = t([[0.1, -0.2, 1.0], [0.2, 0.7, 99.0]])
    values = t([[0.5, 0.4, 0.3], [0.6, 0.2, 50.0]])
    mask = t([[1, 1, 1], [1, 1, 0]])  # row 1 ends in EOS at position 1; position 2 holds garbage
    adv, ret = gae(rewards, values, mask, gamma, lam)
    # Row 0 (V after the last token is 0):
    #   t=2: delta = 1.0 + 0.9*0   - 0.3 =  0.70;  A = 0.70
    #   t=1: delta = -0.2 + 0.9*0.3 - 0.4 = -0.33;  A = -0.33 + 0.72*0.70  = 0.174
    #   t=0: delta = 0.1 + 0.9*0.4 - 0.5 = -0.04;  A = -0.04 + 0.72*0.174 = 0.08528
    # Row 1 (position 2 masked, so token 1 is terminal):
    #   t=1: delta = 0.7 + 0.9*0   - 0.2 =  0.50;  A = 0.50
    #   t=0: delta = 0.2 + 0.9*0.2 - 0.6 = -0.22;  A = -0.22 + 0.72*0.50 = 0.14
    assert torch.allclose(adv, t([[0.08528, 0.174, 0.7], [0.14, 0.5, 0.0]]))
    # returns = advantages + values on response tokens.
    assert torch.allclose(ret, t([[0.58528, 0.574, 1.0], [0.74, 0.7, 0.0]]))
    # Garbage after the EOS changes nothing.
    rewards[1, 2], values[1, 2] = -1e6, 1e6
    adv2, ret2 = gae(rewards, values, mask, gamma, lam)
    assert torch.equal(adv2, adv) and torch.equal(ret2, ret)


def test_gae_gamma_lam_one_gives_reward_to_go() -> None:
    # gamma = lam = 1: A_t = sum_{k>=t} r_k - V_t, so returns are the reward-to-go [3, 2, 1].
    adv, ret = gae(t([[1.0, 1.0, 1.0]]), t([[0.3, -0.4, 2.0]]), t([[1, 1, 1]]), 1.0, 1.0)
    assert torch.allclose(ret, t([[3.0, 2.0, 1.0]]))
    assert torch.allclose(adv, t([[2.7, 2.4, -1.0]]))
    with pytest.raises(ValueError):
        gae(t([[1.0]]), t([[1.0]]), t([[1]]), 1.5, 0.9)


def test_gae_is_detached() -> None:
    values = t([[0.5, 0.4]]).requires_grad_()
    adv, ret = gae(t([[0.0, 1.0]]), values, t([[1, 1]]), 0.9, 0.8)
    assert not adv.requires_grad and not ret.requires_grad


# ---------------------------------------------------------------- losses


def _logp_pair(ratios: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    old = t([[-1.0] * len(ratios)])
    return (old + t([[math.log(r) for r in ratios]])).requires_grad_(), old


def test_policy_loss_in_and_out_of_clip_region() -> None:
    # eps = 0.2; ratio and advantage per token; the last token is masked out.
    ratios = [1.5, 0.5, 1.5, 0.5, 1.1, 7.0]
    adv = t([[1.0, 1.0, -1.0, -1.0, 2.0, 5.0]])
    mask = t([[1, 1, 1, 1, 1, 0]])
    logp, old = _logp_pair(ratios)
    loss, stats = policy_loss(logp, old, adv, mask, clip_eps=0.2, dual_clip=None)
    # min(r*A, clip(r)*A) per token:
    #   A=+1 r=1.5: min(1.5, 1.2)   = 1.2   clipped
    #   A=+1 r=0.5: min(0.5, 0.8)   = 0.5
    #   A=-1 r=1.5: min(-1.5, -1.2) = -1.5
    #   A=-1 r=0.5: min(-0.5, -0.8) = -0.8  clipped
    #   A=+2 r=1.1: min(2.2, 2.2)   = 2.2   inside the region
    # loss = -(1.2 + 0.5 - 1.5 - 0.8 + 2.2) / 5 = -1.6 / 5 = -0.32
    assert loss.item() == pytest.approx(-0.32)
    assert stats["clipfrac"].item() == pytest.approx(2 / 5)
    assert stats["dual_clipfrac"].item() == 0.0
    # approx_kl = 0.5 * mean(log(r)^2) over the 5 kept tokens.
    logs = [math.log(r) for r in ratios[:5]]
    assert stats["approx_kl"].item() == pytest.approx(0.5 * sum(x * x for x in logs) / 5)
    loss.backward()
    # d(-r*A/5)/dlogp = -r*A/5 where the unclipped term is active; 0 where clipped or masked.
    expected_grad = t([[0.0, -0.5 / 5, 1.5 / 5, 0.0, -2.2 / 5, 0.0]])
    assert torch.allclose(logp.grad, expected_grad)


def test_policy_loss_dual_clip() -> None:
    logp, old = _logp_pair([4.0, 2.0, 4.0])
    adv = t([[-1.0, -1.0, 1.0]])
    mask = t([[1, 1, 1]])
    loss, stats = policy_loss(logp, old, adv, mask, clip_eps=0.2, dual_clip=3.0)
    #   A=-1 r=4: min(-4, -1.2) = -4, below c*A = -3 -> -3   dual clipped
    #   A=-1 r=2: min(-2, -1.2) = -2, above -3           -> -2
    #   A=+1 r=4: min(4, 1.2)   = 1.2 (dual clip only acts on A < 0), clipped
    # loss = -(-3 - 2 + 1.2) / 3 = 3.8 / 3
    assert loss.item() == pytest.approx(3.8 / 3)
    assert stats["dual_clipfrac"].item() == pytest.approx(1 / 3)
    assert stats["clipfrac"].item() == pytest.approx(1 / 3)
    loss.backward()
    # Only the middle token has gradient: -r*A/3 = 2/3.
    assert torch.allclose(logp.grad, t([[0.0, 2.0 / 3.0, 0.0]]))
    # Without dual clip the first token costs 4: (4 + 2 - 1.2) / 3.
    no_dual, _ = policy_loss(logp.detach(), old, adv, mask, clip_eps=0.2)
    assert no_dual.item() == pytest.approx(4.8 / 3)
    with pytest.raises(ValueError):
        policy_loss(logp, old, adv, mask, clip_eps=0.2, dual_clip=1.0)


def test_value_loss_clipped_and_unclipped() -> None:
    # eps = 0.2; V_clip = V_old + clip(V - V_old, -0.2, 0.2).
    old = t([[0.5, 0.5, 0.0, 0.0, 3.0]])
    new = t([[1.0, 0.6, -1.0, 1.0, 9.0]]).requires_grad_()
    ret = t([[1.2, 0.0, -2.0, 0.1, 0.0]])
    mask = t([[1, 1, 1, 1, 0]])
    loss, stats = value_loss(new, old, ret, mask, clip_eps=0.2)
    #   V=1.0  R=1.2 : (1.0-1.2)^2 = 0.04, V_clip 0.7  -> 0.25  max 0.25 (clipped)
    #   V=0.6  R=0.0 : 0.36,               V_clip 0.6  -> 0.36  max 0.36
    #   V=-1.0 R=-2.0: 1.00,               V_clip -0.2 -> 3.24  max 3.24 (clipped)
    #   V=1.0  R=0.1 : 0.81,               V_clip 0.2  -> 0.01  max 0.81
    # loss = 0.5 * (0.25 + 0.36 + 3.24 + 0.81) / 4 = 0.5 * 1.165 = 0.5825
    assert loss.item() == pytest.approx(0.5825)
    assert stats["vf_clipfrac"].item() == pytest.approx(0.5)
    loss.backward()
    # Clipped tokens pass no gradient to V; others: 0.5 * 2 * (V - R) / 4.
    assert torch.allclose(new.grad, t([[0.0, 0.6 / 4, 0.0, 0.9 / 4, 0.0]]))
    plain, plain_stats = value_loss(new.detach(), old, ret, mask, clip_eps=None)
    assert plain.item() == pytest.approx(0.5 * (0.04 + 0.36 + 1.0 + 0.81) / 4)
    assert plain_stats["vf_clipfrac"].item() == 0.0


def test_logprobs_from_logits() -> None:
    # Logits log 1, log 2, log 3 -> probabilities 1/6, 2/6, 3/6.
    logits = t([[[0.0, math.log(2), math.log(3)], [5.0, 5.0, 5.0]]], torch.float32)
    labels = torch.tensor([[2, 0]])
    lp = logprobs_from_logits(logits, labels)
    assert lp.dtype == torch.float32
    assert torch.allclose(lp, t([[math.log(0.5), math.log(1 / 3)]], torch.float32))
    # bf16 logits are upcast per row: same answer as float32 on the bf16-rounded values.
    bf = logits.to(torch.bfloat16)
    assert torch.allclose(logprobs_from_logits(bf, labels), logprobs_from_logits(bf.float(), labels))
    # Matches full log_softmax + gather on a random batch, and gradients flow.
    g = torch.Generator().manual_seed(3)
    z = torch.randn(3, 4, 11, generator=g, requires_grad=True)
    y = torch.randint(0, 11, (3, 4), generator=g)
    ref = torch.log_softmax(z, -1).gather(-1, y.unsqueeze(-1)).squeeze(-1)
    out = logprobs_from_logits(z, y)
    assert torch.allclose(out, ref, atol=1e-6)
    out.sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()


def test_entropy_from_logits() -> None:
    logits = t([[[0.0, 0.0, 0.0, 0.0], [0.0, math.log(2), math.log(3), -1e4], [50.0, 0.0, 0.0, 0.0]]], torch.float32)
    h = entropy_from_logits(logits)
    # Uniform over 4: log 4. (1/6, 2/6, 3/6, ~0): -(1/6 ln 1/6 + 1/3 ln 1/3 + 1/2 ln 1/2). Near one-hot: ~0.
    h_mixed = -(1 / 6 * math.log(1 / 6) + 1 / 3 * math.log(1 / 3) + 1 / 2 * math.log(1 / 2))
    assert torch.allclose(h, t([[math.log(4), h_mixed, 0.0]], torch.float32), atol=1e-5)
    assert h_mixed == pytest.approx(1.0114043)
