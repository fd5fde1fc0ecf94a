"""``rlhf plan``: parameter counts from configs, DeepSpeed's own model-state estimators, activation and KV-cache
formulas against what torch actually keeps, the verdicts on the shipped pipelines, and the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from rlhf.cli import main as cli
from rlhf.errors import UserError
from rlhf.plan import GiB, Hardware, estimate_stage
from rlhf.plan import memory as mem
from rlhf.plan.model_size import KNOWN, model_shape, shape_from_config

# Published totals (the models' cards / safetensors index metadata).
PUBLISHED = {
    "TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T": 1_100_048_384,
    "meta-llama/Llama-2-7b-hf": 6_738_415_616,
    "huggyllama/llama-7b": 6_738_415_616,
    "meta-llama/Meta-Llama-3-8B": 8_030_261_248,
    "meta-llama/Llama-2-13b-hf": 13_015_864_320,
    "meta-llama/Llama-2-70b-hf": 68_976_648_192,
}


@pytest.mark.parametrize("name", list(PUBLISHED))
def test_parameter_counts_match_published(name):
    assert model_shape(name).causal_lm_params() == PUBLISHED[name]


def meta_model(config: dict, cls_name: str = "LlamaForCausalLM"):
    import transformers

    cfg = transformers.LlamaConfig(**config, num_labels=1, pad_token_id=0)
    with torch.device("meta"):
        return getattr(transformers, cls_name)(cfg)


@pytest.mark.parametrize("name", ["TinyLlama/TinyLlama-1.1B-intermediate-step-1431k-3T", "meta-llama/Meta-Llama-3-8B"])
def test_counts_match_transformers_modules(name):
    """Causal LM and value model (reward/critic) counts, and the largest module DeepSpeed's ZeRO-3 estimate uses."""
    from deepspeed.runtime.zero.stage3 import model_to_params

    shape = model_shape(name)
    lm = meta_model(KNOWN[name])
    assert sum(p.numel() for p in lm.parameters()) == shape.causal_lm_params()
    # (Its total dedups by data_ptr, which is 0 for every meta tensor; the largest module is per module.)
    assert model_to_params(lm)[1] == shape.largest_layer_params()
    vm = meta_model(KNOWN[name], "LlamaForSequenceClassification")
    assert sum(p.numel() for p in vm.parameters()) == shape.value_model_params()


def test_embedded_and_local_configs(tmp_path):
    from rlhf.models.lora import LoraSection, adapter_parameter_count
    from rlhf.models.tiny import materialize

    local = materialize("embedded:tiny-llama")
    from_dir = model_shape(local)
    embedded = model_shape("embedded:tiny-llama")  # from rlhf.models.tiny.SIZES, no dir needed
    assert embedded.causal_lm_params() == from_dir.causal_lm_params()
    assert {**embedded.__dict__, "name": ""} == {**from_dir.__dict__, "name": ""}
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(local)
    assert sum(p.numel() for p in model.parameters()) == from_dir.causal_lm_params()
    lora = LoraSection(r=4, target_modules=["q_proj", "v_proj", "down_proj"])
    assert from_dir.lora_params(4, lora.target_modules) == adapter_parameter_count(model, lora)
    (tmp_path / "m").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        model_shape(str(tmp_path / "m"))
    with pytest.raises(UserError, match="not a known hub id"):
        model_shape("someone/unknown-model")


@pytest.mark.parametrize("gpus_per_node,nodes", [(1, 1), (2, 1), (8, 1), (8, 2)])
@pytest.mark.parametrize("offload", [False, True])
def test_zero2_matches_deepspeed_estimator(gpus_per_node, nodes, offload):
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    shape = model_shape("meta-llama/Meta-Llama-3-8B")
    P = shape.causal_lm_params()
    ours = mem.trained_states(P, P, shape.largest_layer_params(), "bf16", 2, offload, False, gpus_per_node, nodes)
    cpu, gpu = estimate_zero2_model_states_mem_needs(P, gpus_per_node, nodes, cpu_offload=offload)
    assert ours.gpu == gpu
    assert ours.host == cpu


@pytest.mark.parametrize("gpus_per_node,nodes", [(1, 1), (4, 1), (8, 1), (8, 2)])
@pytest.mark.parametrize("offload_opt,offload_params", [(False, False), (True, False), (True, True)])
def test_zero3_matches_deepspeed_estimator(gpus_per_node, nodes, offload_opt, offload_params):
    """zero_init=False: our workers load the whole model on the host before deepspeed.initialize."""
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    shape = model_shape("meta-llama/Llama-2-70b-hf")
    P, LL = shape.causal_lm_params(), shape.largest_layer_params()
    ours = mem.trained_states(P, P, LL, "bf16", 3, offload_opt, offload_params, gpus_per_node, nodes)
    cpu, gpu, _ = estimate_zero3_model_states_mem_needs(P, LL, gpus_per_node, nodes, cpu_offload=offload_opt,
                                                        cpu_offload_params=offload_params, zero_init=False)
    assert ours.gpu == gpu
    assert ours.host == cpu


def test_lora_trains_only_adapters():
    shape = model_shape("meta-llama/Llama-2-7b-hf")
    P, A = shape.causal_lm_params(), shape.lora_params(16, ["q_proj", "v_proj"])
    full = mem.trained_states(P, P, shape.largest_layer_params(), "bf16", 0, False, False, 1, 1)
    lora = mem.trained_states(P, A, shape.largest_layer_params(), "bf16", 0, False, False, 1, 1)
    assert lora.weights == full.weights == 2 * P
    assert (lora.gradients, lora.optimizer_states) == (6 * A, 12 * A)
    assert A == 32 * 16 * (4096 + 4096) * 2


def test_activation_formula_against_saved_tensors():
    """Korthikanti-style count vs the bytes autograd keeps for a bf16 LLaMA with SDPA attention (CPU), within 15%."""
    from transformers import LlamaConfig, LlamaForCausalLM

    conf = dict(hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=512)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**conf, attn_implementation="sdpa")).to(torch.bfloat16)
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    b, s = 2, 128
    ids = torch.randint(0, 512, (b, s))
    kept: dict[int, int] = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            kept[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids)
    # Logits at the peak also hold the fp32 gradient, which is not a saved tensor: compare without them.
    shape = shape_from_config("probe", conf)
    estimate = mem.training_activation_bytes(shape, b, s, False, logit_tokens=0)
    logits_kept = b * s * conf["vocab_size"] * 4  # the fp32 log-softmax output
    assert estimate == pytest.approx(sum(kept.values()) - logits_kept, rel=0.15)
    # With checkpointing, each layer keeps only its input: far less, and the formula says so.
    assert mem.training_activation_bytes(shape, b, s, True, 0) < estimate / 2


def test_kv_cache_formula_against_a_real_cache():
    from transformers import LlamaConfig, LlamaForCausalLM

    conf = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=300)
    model = LlamaForCausalLM(LlamaConfig(**conf)).to(torch.bfloat16).eval()
    with torch.no_grad():
        cache = model(input_ids=torch.zeros(3, 17, dtype=torch.long), use_cache=True).past_key_values
    layers = getattr(cache, "layers", None)
    tensors = [t for layer in layers for t in (layer.keys, layer.values)] if layers is not None else \
        [t for kv in cache for t in kv]
    real = sum(t.numel() * t.element_size() for t in tensors)
    assert mem.kv_cache_bytes(shape_from_config("kv", conf), 3, 17) == real


def stage_cfg(stage: str, path: str, overrides: list[str]):
    from rlhf.config import load_config
    from stages import load_stage

    return load_config(load_stage(stage).Config, path, overrides)


def test_sft_plan_components_add_up_and_verdicts():
    cfg = stage_cfg("sft", "configs/sft/tiny.yaml", ["model.path=meta-llama/Meta-Llama-3-8B", "deepspeed.zero_stage=0",
                                                       "resources.num_workers=8", "data.max_length=2048"])
    plan = estimate_stage("sft", cfg, Hardware(8, 1, 80 * GiB))
    role = plan.roles[0]
    assert role.states == 20 * 8_030_261_248  # DDP: 2 + 18 bytes per parameter on every GPU
    assert plan.verdict == "does not fit" and plan.suggestions
    assert any("zero_stage=3" in s for s in plan.suggestions)
    # The first suggestion, applied, fits.
    keys = plan.suggestions[0].split(" (")[0].split()
    fixed = estimate_stage("sft", stage_cfg("sft", "configs/sft/tiny.yaml", [
        "model.path=meta-llama/Meta-Llama-3-8B", "deepspeed.zero_stage=0", "resources.num_workers=8",
        "data.max_length=2048", *keys]), Hardware(8, 1, 80 * GiB))
    assert fixed.verdict == "fits" and fixed.headroom >= 0.10
    d = plan.to_dict()
    assert json.loads(json.dumps(d))["roles"][0]["weights"] == role.weights


@pytest.mark.parametrize("name", ["rlhf-real", "alpaca-real", "koala-real", "vicuna-real", "dpo-real", "rlhf-real-2node"])
def test_shipped_real_pipelines_fit_with_headroom(name):
    from rlhf.pipeline.shipped import find_pipeline
    from rlhf.pipeline.spec import load_pipeline
    from rlhf.plan.targets import plan_pipeline

    nodes = 2 if name.endswith("2node") else 1
    plans, _ = plan_pipeline(load_pipeline(find_pipeline(name)), Hardware(8, nodes, 80 * GiB))
    assert plans
    for plan in plans:
        assert plan.verdict == "fits", (plan.name, plan.problems, plan.headroom)
        assert plan.headroom >= 0.10


def test_cli_plan(capsys):
    assert cli(["plan", "rlhf-real"]) == 0
    out = capsys.readouterr().out
    assert "FITS" in out and "actor" in out and "KV" in out
    assert cli(["plan", "configs/sft/tiny.yaml", "--json", "model.path=meta-llama/Llama-2-70b-hf",
                "resources.num_workers=8"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["plans"][0]["verdict"] == "does not fit"
    assert data["plans"][0]["roles"][0]["params"] == 68_976_648_192
    assert cli(["plan", "configs/sft/tiny.yaml", "model.path=nobody/nothing"]) == 2
    assert "not a known hub id" in capsys.readouterr().err


def test_preflight_refuses_a_plan_that_does_not_fit(monkeypatch, tmp_path, capsys):
    """The stage's own run() checks first: one line naming the fix and the skip key; nothing is written."""
    import stages.sft as sft
    from rlhf.plan import check

    monkeypatch.setattr(check, "driver_gpus", lambda: (8, 80 * GiB))  # as on an 8 x 80 GiB node
    big = stage_cfg("sft", "configs/sft/tiny.yaml", ["model.path=meta-llama/Llama-2-70b-hf", "resources.num_workers=8",
                                                       "resources.use_gpu=true"])
    with pytest.raises(UserError) as err:
        sft.run(big, tmp_path / "out")
    msg = str(err.value)
    assert "\n" not in msg and "does not fit" in msg and "resources.memory_check=false" in msg
    assert "set deepspeed." in msg or "set model." in msg
    assert not (tmp_path / "out").exists()
    # An expert's override: the check steps aside (the stage itself is not run here).
    check.memory_check("sft", big.model_copy(update={"resources": big.resources.model_copy(
        update={"memory_check": False})}))
    small = stage_cfg("sft", "configs/sft/tiny.yaml", ["resources.use_gpu=true"])
    check.memory_check("sft", small)
    assert "memory plan: peak" in capsys.readouterr().out


def test_preflight_is_silent_on_cpu(monkeypatch, capsys):
    from rlhf.plan import check

    monkeypatch.setattr(check, "driver_gpus", lambda: (0, 0))
    big = stage_cfg("sft", "configs/sft/tiny.yaml", ["model.path=meta-llama/Llama-2-70b-hf"])  # use_gpu: auto
    check.memory_check("sft", big)
    assert capsys.readouterr().out == ""


def test_liger_kernels_keep_less():
    shape = model_shape("embedded:llama-1b")
    hf = stage_cfg("sft", "configs/sft/tiny.yaml", ["model.path=embedded:llama-1b", "data.max_length=2048"])
    liger = stage_cfg("sft", "configs/sft/tiny.yaml", ["model.path=embedded:llama-1b", "data.max_length=2048",
                                                       "model.kernels=liger"])
    a, b = (estimate_stage("sft", c, suggest=False).roles[0].activations for c in (hf, liger))
    h, kv, i = shape.hidden_size, shape.kv_size, shape.intermediate_size
    per_seq_hf = 2048 * (shape.num_hidden_layers * (20 * h + 4 * kv + 8 * i) + 8 * h) + 2048 * shape.vocab_size * 10
    per_seq_liger = 2048 * (shape.num_hidden_layers * (12 * h + 4 * kv + 6 * i) + 8 * h)
    mb = hf.deepspeed.micro_batch_size
    assert (a, b) == (mb * per_seq_hf, mb * per_seq_liger)


def test_colocate_all_placement_and_plan():
    from rlhf.ppo.config import PPOResourcesSection
    from rlhf.ppo.placement import plan as placement

    res = PPOResourcesSection(actor_workers=2, critic_workers=2, ref_workers=2, reward_workers=2, colocate_all=True)
    bundles, slots = placement(res, use_gpu=True)
    assert len(bundles) == 2 and all(b["GPU"] == 1.0 for b in bundles)
    for role in ("actor", "critic", "ref", "reward"):
        assert [(s.bundle, s.gpus) for s in slots[role]] == [(0, 0.25), (1, 0.25)]
    with pytest.raises(ValueError, match="colocate_all needs"):
        PPOResourcesSection(actor_workers=2, colocate_all=True)

    base = ["actor.path=meta-llama/Meta-Llama-3-8B", "reward.function=null", "reward.kwargs={}",
            "reward.model=meta-llama/Meta-Llama-3-8B", "deepspeed.zero_stage=3", "prompts.max_prompt_length=512",
            "rollout.max_new_tokens=512", "rollout.prompts_per_iteration=512", "algorithm.mini_batch_size=64",
            "actor.gradient_checkpointing=true", "critic.gradient_checkpointing=true", "resources.colocate_all=true",
            *(f"resources.{k}=8" for k in ("actor_workers", "critic_workers", "ref_workers", "reward_workers"))]
    hw = Hardware(8, 1, 80 * GiB)
    awake = estimate_stage("ppo", stage_cfg("ppo", "configs/ppo/tiny.yaml", base), hw, suggest=False)
    sleep = estimate_stage("ppo", stage_cfg("ppo", "configs/ppo/tiny.yaml",
                                            base + ["resources.offload_while_generating=true"]), hw, suggest=False)
    assert awake.gpus_needed == sleep.gpus_needed == 8
    [g_awake], [g_sleep] = awake.groups, sleep.groups
    assert g_awake.roles == ["actor", "critic", "ref", "reward"]
    roles = {r.role: r for r in awake.roles}
    asleep = sum(roles[r].gradients + roles[r].optimizer_states for r in ("actor", "critic"))
    gen = sum(r.states + mem.RESERVED_BYTES + r.transients.get("generate", 0) for r in awake.roles)
    assert g_awake.peak >= gen
    assert sleep.to_dict()["groups"][0]["peak"] == max(gen - asleep, *(
        sum(r.states + mem.RESERVED_BYTES + r.transients.get(p, 0) for r in awake.roles) for p in ("score", "train")))


def test_dpo_plan_counts_a_live_reference():
    over = ["model.path=meta-llama/Meta-Llama-3-8B", "resources.num_workers=8", "deepspeed.zero_stage=3"]
    pre = estimate_stage("dpo", stage_cfg("dpo", "configs/dpo/tiny.yaml", over), suggest=False)
    live = estimate_stage("dpo", stage_cfg("dpo", "configs/dpo/tiny.yaml", over + ["reference.mode=live"]),
                          suggest=False)
    free = estimate_stage("dpo", stage_cfg("dpo", "configs/dpo/tiny.yaml", over + ["reference.mode=live",
                                                                                   "loss.kind=simpo"]), suggest=False)
    assert [r.role for r in pre.roles] == [r.role for r in free.roles] == ["model"]
    ref = live.roles[1]
    assert ref.role == "reference" and ref.weights == 2 * 8_030_261_248 // 8 + 4 * 128256 * 4096
    assert live.gpu_peak > pre.gpu_peak


def test_critic_free_ppo_plan_places_no_critic():
    from rlhf.config import load_config
    from rlhf.plan.estimate import estimate_stage
    from stages import ppo

    gae = estimate_stage("ppo", load_config(ppo.Config, "configs/ppo/tiny.yaml", []), suggest=False)
    grpo = estimate_stage("ppo", load_config(ppo.Config, "configs/ppo/tiny.yaml",
                                             ["algorithm.estimator=grpo", "rollout.samples_per_prompt=4"]),
                          suggest=False)
    assert [r.role for r in gae.roles] == ["actor", "critic", "ref", "reward"] and gae.gpus_needed == 4
    assert [r.role for r in grpo.roles] == ["actor", "ref", "reward"] and grpo.gpus_needed == 3
    assert all("critic" not in g.roles for g in grpo.groups)
