"""The direct-preference losses: each equals TRL's own code on the same log-probs (to 1e-6), and a hand-computed
case each; sequence log-probs cover response tokens only, the same under left and right padding."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import pytest
import torch

from rlhf.dpo.logps import pad_batch, sequence_logps
from rlhf.dpo.losses import LOSSES, LogpBatch, LossParams

torch.manual_seed(0)
B = 6


def sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


# -- TRL harness: its loss code called on tensors, with a minimal `self` ---------------------------------------

class Accelerator:
    device = torch.device("cpu")

    @staticmethod
    def gather(t):
        return t

    gather_for_metrics = gather


def completion_case(lengths: torch.Tensor, width: int = 9):
    """Per-token log-probs [N, width-1] that are 0 outside each row's completion (TRL sums the whole row) and a
    completion_mask [N, width] whose last lengths[i] tokens are the completion."""
    n = lengths.shape[0]
    mask = torch.zeros(n, width, dtype=torch.long)
    for i, k in enumerate(lengths.tolist()):
        mask[i, width - int(k):] = 1
    per_token = -torch.rand(n, width - 1, dtype=torch.float64) * 2 * mask[:, 1:]
    return per_token, mask


def fake_outputs(per_token):
    """What TRL's fused-LM-head forward returns, with the log-probs we chose (the metrics fields are filler)."""
    return SimpleNamespace(log_probs=per_token, entropy=torch.zeros_like(per_token),
                           mean_logits=torch.zeros_like(per_token), is_top1=torch.zeros_like(per_token, dtype=torch.bool))


def trl_dpo(loss_type: str, policy, ref, lengths, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """trl.DPOTrainer._compute_loss on a batch whose summed completion log-probs are ``policy`` [B, 2]."""
    from trl import DPOTrainer

    lens = torch.cat([lengths[:, 0], lengths[:, 1]])
    per_token, mask = completion_case(lens)
    sums = per_token.sum(1)
    target = torch.cat([policy[:, 0], policy[:, 1]])
    per_token = per_token * (target / sums).unsqueeze(1)  # rescale so each row sums to the chosen value
    self = SimpleNamespace(model=SimpleNamespace(training=True), accelerator=Accelerator(), aux_loss_enabled=False,
                           ld_alpha=None, precompute_ref_logps=True, f_divergence_type="reverse_kl",
                           loss_types=[loss_type], loss_weights=[1.0], beta=beta, label_smoothing=label_smoothing,
                           use_weighting=False, _metrics=defaultdict(lambda: defaultdict(list)),
                           _total_train_tokens=0, _tp_size=1)
    inputs = {"input_ids": torch.zeros_like(mask), "attention_mask": torch.ones_like(mask), "completion_mask": mask,
              "ref_chosen_logps": ref[:, 0], "ref_rejected_logps": ref[:, 1]}
    return DPOTrainer._compute_loss(self, lambda **kw: fake_outputs(per_token), inputs, False)


def case(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    policy = -torch.rand(B, 2, generator=g, dtype=torch.float64) * 20 - 1
    ref = policy + torch.randn(B, 2, generator=g, dtype=torch.float64)
    lengths = torch.randint(1, 8, (B, 2), generator=g).to(torch.float64)
    return policy, ref, lengths


@pytest.mark.parametrize("kind,trl_type,eps", [("dpo", "sigmoid", 0.0), ("ipo", "ipo", 0.0), ("robust", "robust", 0.2)])
def test_dpo_trainer_losses_match_trl(kind, trl_type, eps):
    policy, ref, lengths = case()
    params = LossParams(beta=0.3, label_smoothing=eps)
    ours, _ = LOSSES[kind](LogpBatch(policy, lengths, ref), params)
    theirs = trl_dpo(trl_type, policy, ref, lengths, 0.3, eps)
    assert abs(float(ours.mean()) - float(theirs)) < 1e-6


def cpo_self(loss_type: str, beta: float, label_smoothing: float = 0.0, gamma: float = 0.5):
    return SimpleNamespace(alpha=0.0, loss_type=loss_type, simpo_gamma=gamma, beta=beta,
                           label_smoothing=label_smoothing, accelerator=Accelerator())


def test_simpo_matches_trl_cpo_trainer():
    from trl.experimental.cpo import CPOTrainer

    policy, _, lengths = case(1)
    ours, rewards = LOSSES["simpo"](LogpBatch(policy, lengths), LossParams(beta=2.0, gamma=0.7))
    avg = policy / lengths  # CPOTrainer scores SimPO with average log-probs
    theirs, chosen_r, rejected_r = CPOTrainer.cpo_loss(cpo_self("simpo", 2.0, gamma=0.7), avg[:, 0], avg[:, 1])
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=0)
    assert torch.allclose(rewards, torch.stack([chosen_r, rejected_r], 1), atol=1e-6, rtol=0)


def test_cdpo_matches_trl_label_smoothed_sigmoid():
    """TRL 1.16 keeps the label-smoothed (conservative) sigmoid in CPOTrainer.cpo_loss, which is DPO's when given
    log-ratios instead of log-probs."""
    from trl.experimental.cpo import CPOTrainer

    policy, ref, lengths = case(2)
    ours, _ = LOSSES["cdpo"](LogpBatch(policy, lengths, ref), LossParams(beta=0.5, label_smoothing=0.1))
    ratios = policy - ref
    theirs, _, _ = CPOTrainer.cpo_loss(cpo_self("sigmoid", 0.5, 0.1), ratios[:, 0], ratios[:, 1])
    assert torch.allclose(ours, theirs, atol=1e-6, rtol=0)


def test_orpo_odds_ratio_matches_trl():
    from trl.experimental.orpo import ORPOTrainer

    policy, _, lengths = case(3)
    ours, rewards = LOSSES["orpo"](LogpBatch(policy, lengths), LossParams(beta=0.25))
    avg = policy / lengths
    orpo_self = SimpleNamespace(beta=0.25, accelerator=Accelerator())
    ratio_losses, chosen_r, rejected_r, _, _ = ORPOTrainer.odds_ratio_loss(orpo_self, avg[:, 0], avg[:, 1])
    # ORPO = NLL(y_w) - lambda * log sigma(log odds ratio); TRL returns the second term's lambda * log sigma
    # (TRL computes this term in float32)
    assert torch.allclose(ours, -avg[:, 0] - ratio_losses.double(), atol=1e-6, rtol=0)
    assert torch.allclose(rewards, torch.stack([chosen_r, rejected_r], 1).double(), atol=1e-6, rtol=0)


def test_kto_matches_trl_kto_trainer():
    from trl import KTOTrainer

    g = torch.Generator().manual_seed(4)
    n = 8
    logps = -torch.rand(n, generator=g, dtype=torch.float64) * 10 - 1
    ref = logps + torch.randn(n, generator=g, dtype=torch.float64)
    kl_logps = -torch.rand(n, generator=g, dtype=torch.float64) * 10 - 1
    ref_kl = kl_logps - torch.rand(n, generator=g, dtype=torch.float64)  # mean log-ratio > 0: z0 is not clamped
    desirable = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0], dtype=torch.bool)
    lengths = torch.full((n, 2), 3.0, dtype=torch.float64)
    params = LossParams(beta=0.2, desirable_weight=1.3, undesirable_weight=0.7)
    ours, _ = LOSSES["kto"](LogpBatch(torch.stack([logps, kl_logps], 1), lengths, torch.stack([ref, ref_kl], 1),
                                      desirable), params)

    per_token, mask = completion_case(lengths[:, 0])
    per_token = per_token * (logps / per_token.sum(1)).unsqueeze(1)
    kl_per_token = per_token * (kl_logps / logps).unsqueeze(1)
    kl_ids = torch.ones_like(mask)

    def model(**kw):
        return fake_outputs(kl_per_token if kw["input_ids"] is kl_ids else per_token)

    self = SimpleNamespace(model=SimpleNamespace(training=True), accelerator=Accelerator(), aux_loss_enabled=False,
                           precompute_ref_logps=True, calculate_KL=True, loss_type="kto", beta=0.2,
                           desirable_weight=1.3, undesirable_weight=0.7,
                           _metrics=defaultdict(lambda: defaultdict(list)), _total_train_tokens=0, _tp_size=1)
    self._compute_kl_logps = lambda m, batch: KTOTrainer._compute_kl_logps(self, m, batch)
    inputs = {"input_ids": torch.zeros_like(mask), "attention_mask": torch.ones_like(mask), "completion_mask": mask,
              "KL_input_ids": kl_ids, "KL_attention_mask": torch.ones_like(mask), "KL_completion_mask": mask,
              "label": desirable.long(), "ref_logps": ref, "ref_KL_logps": ref_kl}
    theirs = KTOTrainer._compute_loss(self, model, inputs, False)
    # TRL orders desirable losses before undesirable ones and takes the mean: the same mean as ours
    assert abs(float(ours.mean()) - float(theirs)) < 1e-6


# -- hand-computed cases -------------------------------------------------------------------------------------

ONE = torch.tensor([[-3.0, -5.0]], dtype=torch.float64)
REF = torch.tensor([[-4.0, -4.0]], dtype=torch.float64)
LEN = torch.tensor([[2.0, 4.0]], dtype=torch.float64)


def value(kind: str, **params) -> float:
    losses, _ = LOSSES[kind](LogpBatch(ONE, LEN, REF), LossParams(**params))
    return float(losses[0])


def test_hand_computed_cases():
    # log-ratios: chosen -3 - -4 = 1, rejected -5 - -4 = -1, so h = 2
    assert value("dpo", beta=0.5) == pytest.approx(-math.log(sig(1.0)), abs=1e-12)
    assert value("cdpo", beta=0.5, label_smoothing=0.1) == pytest.approx(
        -0.9 * math.log(sig(1.0)) - 0.1 * math.log(sig(-1.0)), abs=1e-12)
    assert value("robust", beta=0.5, label_smoothing=0.1) == pytest.approx(
        (-0.9 * math.log(sig(1.0)) + 0.1 * math.log(sig(-1.0))) / 0.8, abs=1e-12)
    # IPO: per-token log-ratios 1/2 - (-1/4) = 0.75; target 1/(2*0.5) = 1
    assert value("ipo", beta=0.5) == pytest.approx((0.75 - 1.0) ** 2, abs=1e-12)
    # SimPO: averages -1.5 and -1.25, beta 2, gamma 0.5: -log sigma(2 * -0.25 - 0.5)
    assert value("simpo", beta=2.0, gamma=0.5) == pytest.approx(-math.log(sig(-1.0)), abs=1e-12)
    # ORPO: NLL 1.5; log odds(p) = log p - log(1 - p) on p = e^-1.5 and e^-1.25
    lo = lambda a: a - math.log(1 - math.exp(a))  # noqa: E731
    assert value("orpo", beta=0.1) == pytest.approx(1.5 - 0.1 * math.log(sig(lo(-1.5) - lo(-1.25))), abs=1e-9)


def test_kto_hand_computed():
    # two examples: desirable r = 1, undesirable r = -0.5; KL completion log-ratios 0.2 and 0.6 -> z0 = 0.4
    policy = torch.tensor([[-1.0, -2.0], [-3.0, -1.0]], dtype=torch.float64)
    ref = torch.tensor([[-2.0, -2.2], [-2.5, -1.6]], dtype=torch.float64)
    b = LogpBatch(policy, torch.ones(2, 2), ref, torch.tensor([True, False]))
    losses, rewards = LOSSES["kto"](b, LossParams(beta=0.5, desirable_weight=2.0, undesirable_weight=1.0))
    assert float(losses[0]) == pytest.approx(2.0 * (1 - sig(0.5 * (1.0 - 0.4))), abs=1e-12)
    assert float(losses[1]) == pytest.approx(1 - sig(0.5 * (0.4 + 0.5)), abs=1e-12)
    assert rewards[:, 0].tolist() == pytest.approx([0.5, -0.25])


def test_beta_scales_the_implicit_rewards_only_through_log_ratios():
    _, rewards = LOSSES["dpo"](LogpBatch(ONE, LEN, REF), LossParams(beta=0.5))
    assert rewards.tolist() == [[0.5, -0.5]]


# -- sequence log-probs --------------------------------------------------------------------------------------

def tiny_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    return LlamaForCausalLM(cfg).eval()


def test_logps_mask_the_prompt_and_match_a_manual_sum():
    model = tiny_model()
    seq, n = [1, 5, 7, 9, 11, 13, 2], 3
    batch = pad_batch([seq], [n], pad_id=0)
    assert batch["response_mask"].tolist() == [[0, 0, 0, 0, 1, 1, 1]]
    with torch.no_grad():
        got = sequence_logps(model, **batch)
    with torch.no_grad():
        logp = model(torch.tensor([seq])).logits.log_softmax(-1)[0]
    manual = sum(float(logp[t - 1, seq[t]]) for t in range(len(seq) - n, len(seq)))
    assert float(got[0]) == pytest.approx(manual, abs=1e-5)
    # a different prompt before the same response changes the sum only through the context, never by adding it
    assert batch["response_mask"].sum() == n


def test_left_and_right_padding_give_the_same_logps():
    model = tiny_model()
    seqs = [[1, 5, 7, 9, 2], [1, 4, 4, 6, 8, 10, 12, 3, 2], [1, 3, 2]]
    resp = [2, 4, 1]
    with torch.no_grad():
        right = sequence_logps(model, **pad_batch(seqs, resp, 0, "right"))
        left = sequence_logps(model, **pad_batch(seqs, resp, 0, "left"))
        alone = torch.cat([sequence_logps(model, **pad_batch([s], [r], 0)) for s, r in zip(seqs, resp)])
    assert torch.allclose(right, left, atol=1e-5)
    assert torch.allclose(right, alone, atol=1e-5)
