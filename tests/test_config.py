"""Typed configs: overrides, unknown keys with suggestions, type errors, and every shipped YAML validates."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from rlhf.config import apply_overrides, describe_fields, load_config, parse_override, validate
from rlhf.errors import UserError
from rlhf.paths import CONFIGS_DIR


def sft_config():
    from stages.sft import Config

    return Config


def test_parse_override_types():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("a=1.0e-3") == (["a"], 1e-3)
    assert parse_override("x.y=true") == (["x", "y"], True)
    assert parse_override("x=[1, 2]") == (["x"], [1, 2])
    assert parse_override("x=hello world") == (["x"], "hello world")
    with pytest.raises(UserError, match="expected key.sub=value"):
        parse_override("novalue")


def test_override_value_the_key_type_names_is_taken_as_written():
    """YAML reads `off` as False and `3` as an int; a Literal or str field gets the text the user typed."""
    from stages.eval import Config as EvalConfig

    base = ["policy=embedded:tiny-llama", "prompts=data/prompts.jsonl"]
    assert load_config(EvalConfig, None, [*base, "oracle=off"]).oracle == "off"
    assert load_config(EvalConfig, None, [*base, "policy_name=3"]).policy_name == "3"
    assert load_config(EvalConfig, None, [*base, "limit=3"]).limit == 3  # YAML's reading when the field takes it
    assert load_config(EvalConfig, None, [*base, "kl.temperature=2"]).kl.temperature == 2.0
    with pytest.raises(UserError, match=r"key 'oracle'.*\(got 'maybe'\)"):
        load_config(EvalConfig, None, [*base, "oracle=maybe"])
    with pytest.raises(UserError, match=r"key 'batch_size'.*\(got 'many'\)"):
        load_config(EvalConfig, None, [*base, "batch_size=many"])


def test_apply_overrides_creates_sections():
    data = apply_overrides({"a": {"b": 1}}, ["a.c=2", "d.e.f=x"])
    assert data == {"a": {"b": 1, "c": 2}, "d": {"e": {"f": "x"}}}


def test_unknown_key_names_closest(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  path: data/instructions.jsonl\noptim:\n  lrr: 0.1\n")
    with pytest.raises(UserError) as err:
        load_config(sft_config(), cfg)
    assert "unknown key 'optim.lrr'" in str(err.value) and "did you mean 'optim.lr'" in str(err.value)
    assert str(cfg) in str(err.value)


def test_unknown_top_level_key_from_override():
    with pytest.raises(UserError, match="unknown key 'trian'; did you mean 'train'"):
        validate(sft_config(), apply_overrides({"data": {"path": "x"}}, ["trian.max_steps=3"]), "cli")


def test_wrong_type_names_key():
    with pytest.raises(UserError, match=r"key 'train.max_steps'.*got 'many'"):
        validate(sft_config(), {"data": {"path": "x"}, "train": {"max_steps": "many"}}, "cli")


def test_max_length_must_be_positive():
    with pytest.raises(UserError, match="data.max_length.*greater than 0"):
        validate(sft_config(), {"data": {"path": "x", "max_length": 0}}, "cli")


def test_offload_rules():
    with pytest.raises(UserError, match="offload_params needs zero_stage = 3"):
        validate(sft_config(), {"data": {"path": "x"}, "deepspeed": {"zero_stage": 2, "offload_params": True}}, "cli")


def test_in_process_is_one_rank_in_the_driver(tmp_path):
    import torch

    from rlhf.engine.launch import run_in_process

    cfg = validate(sft_config(), {"data": {"path": "x"}, "resources": {"num_workers": 1, "in_process": True}}, "cli")
    assert cfg.resources.in_process
    if not torch.cuda.is_available():  # the driver's own devices: no GPU to grant, so use_gpu=true is refused
        gpu = cfg.resources.model_copy(update={"use_gpu": True})
        with pytest.raises(UserError, match="sees no GPU"):
            run_in_process(print, None, gpu, tmp_path, "sft")
    with pytest.raises(UserError, match="num_workers=2 needs Ray Train"):
        validate(sft_config(), {"data": {"path": "x"}, "resources": {"num_workers": 2, "in_process": True}}, "cli")
    with pytest.raises(UserError, match="cannot join resources.address"):
        validate(sft_config(), {"data": {"path": "x"}, "resources": {"num_workers": 1, "in_process": True,
                                                                     "address": "auto"}}, "cli")


def test_every_field_is_documented():
    for key, _, desc in describe_fields(sft_config()):
        assert desc, f"field {key} has no description"


def stage_yaml_files() -> list[Path]:
    from stages import STAGES

    return sorted(p for p in CONFIGS_DIR.rglob("*.yaml") if p.parent.name in STAGES)


@pytest.mark.parametrize("path", stage_yaml_files(), ids=lambda p: str(p.relative_to(CONFIGS_DIR)))
def test_shipped_stage_config_validates(path: Path):
    from stages import STAGES, load_stage

    stage = path.parent.name
    if importlib.util.find_spec(STAGES[stage]) is None:
        pytest.fail(f"{path} is shipped but stage '{stage}' does not exist")
    load_config(load_stage(stage).Config, path)


def test_every_shipped_yaml_has_a_run_header():
    for path in CONFIGS_DIR.rglob("*.yaml"):
        header = " ".join(line for line in path.read_text().splitlines()[:4] if line.startswith("#"))
        assert "rlhf " in header, f"{path}: the header comment must give the command that runs it"


def test_precision_modes_map_to_deepspeed_sections():
    from rlhf.engine.deepspeed_config import deepspeed_config
    from rlhf.sections import DeepSpeedSection

    def sections(precision: str, on_gpu: bool = False) -> set[str]:
        cfg = deepspeed_config(DeepSpeedSection(precision=precision), None, 2, on_gpu)
        return {k for k in ("bf16", "fp16", "torch_autocast") if k in cfg}

    assert sections("auto") == set() and sections("fp32") == set()
    assert sections("auto", on_gpu=True) == {"bf16"} and sections("fp16") == {"fp16"}
    amp = deepspeed_config(DeepSpeedSection(precision="amp_bf16"), None, 2, False)
    assert amp["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"} and "bf16" not in amp
