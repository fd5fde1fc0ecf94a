"""Pipeline files: schema, references, overrides, skip decisions; every shipped pipeline validates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from rlhf.errors import UserError
from rlhf.manifest import hash_path
from rlhf.pipeline.runner import PipelineRunner, changed_keys, output_path
from rlhf.pipeline.shipped import DEFAULT_PIPELINE, find_pipeline, shipped_pipelines
from rlhf.pipeline.spec import deep_merge, load_pipeline, refs_in, resolve_refs, validate_stage, validate_stages

SHIPPED = shipped_pipelines()


def write(tmp_path: Path, stages: list[dict], name: str = "p") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text("# test pipeline\n" + yaml.safe_dump({"name": name, "stages": stages}))
    return path


def sft_stage(name: str, model: str = "embedded:tiny-llama", **config) -> dict:
    return {"name": name, "stage": "sft",
            "config": {"model": {"path": model}, "data": {"path": "data/instructions.jsonl"}, **config}}


def test_refs_found_and_resolved_inside_strings():
    value = {"a": "${sft.model}", "b": ["x", {"c": "${rm.out}/scores ${sft.model}"}], "d": 3}
    assert refs_in(value) == [("sft", "model"), ("rm", "out")]
    resolved = resolve_refs(value, lambda n, k: f"/abs/{n}/{k}")
    assert resolved == {"a": "/abs/sft/model", "b": ["x", {"c": "/abs/rm/out/scores /abs/sft/model"}], "d": 3}
    assert value["a"] == "${sft.model}"  # the input is not changed


def test_deep_merge_nested_over_base():
    base = {"data": {"path": "a", "limit": 3}, "train": {"max_steps": 5}}
    assert deep_merge(base, {"data": {"limit": 9}, "x": 1}) == {
        "data": {"path": "a", "limit": 9}, "train": {"max_steps": 5}, "x": 1}
    assert base["data"]["limit"] == 3


def test_reference_to_missing_stage_names_it(tmp_path):
    path = write(tmp_path, [sft_stage("sft"), sft_stage("second", model="${sfft.model}")])
    with pytest.raises(UserError, match=r"stage 'second'.*\$\{sfft\.model\}.*'sfft', which does not exist"):
        load_pipeline(path)


def test_reference_to_later_stage_names_it(tmp_path):
    path = write(tmp_path, [sft_stage("first", model="${second.model}"), sft_stage("second")])
    with pytest.raises(UserError, match=r"stage 'first'.*'second', which comes later"):
        load_pipeline(path)


def test_reference_to_itself_is_an_error(tmp_path):
    with pytest.raises(UserError, match=r"refers to the stage itself"):
        load_pipeline(write(tmp_path, [sft_stage("sft", model="${sft.model}")]))


def test_duplicate_names_and_unknown_stage_type(tmp_path):
    with pytest.raises(UserError, match="two stages are named 'sft'"):
        load_pipeline(write(tmp_path, [sft_stage("sft"), sft_stage("sft")]))
    with pytest.raises(UserError, match=r"stages\.0\.stage.*unknown stage type 'sfx'"):
        load_pipeline(write(tmp_path, [{"name": "a", "stage": "sfx"}]))
    bad_top = tmp_path / "bad.yaml"
    bad_top.write_text("name: bad\nstagess: []\n")
    with pytest.raises(UserError, match=r"bad\.yaml: unknown key 'stagess'; did you mean 'stages'"):
        load_pipeline(bad_top)


def test_stage_overrides_land_in_that_stage_only(tmp_path):
    path = write(tmp_path, [sft_stage("a"), sft_stage("b", model="${a.model}")])
    pipe = load_pipeline(path, ["b.optim.lr=0.5", "b.train.max_steps=3"])
    assert pipe.stage("b").config["optim"] == {"lr": 0.5}
    assert pipe.stage("b").config["train"] == {"max_steps": 3}
    assert "optim" not in pipe.stage("a").config
    # A value the key's type names is kept as typed (a str field, not YAML's int).
    assert load_pipeline(path, ["a.data.template=chat", "a.data.path=1"]).stage("a").config["data"]["path"] == "1"
    with pytest.raises(UserError, match="no stage named 'c'"):
        load_pipeline(path, ["c.optim.lr=1"])
    with pytest.raises(UserError, match="expected STAGE.key.sub=value"):
        load_pipeline(path, ["lr=1"])


def test_bad_stage_key_names_pipeline_stage_and_key(tmp_path):
    pipe = load_pipeline(write(tmp_path, [sft_stage("a", optim={"lrr": 1.0})]))
    with pytest.raises(UserError, match=r"p\.yaml: stage 'a': unknown key 'optim\.lrr'; did you mean 'optim\.lr'"):
        validate_stages(pipe)


def test_base_file_is_merged_under_config(tmp_path):
    stage = {"name": "s", "stage": "sft", "base": "configs/sft/tiny.yaml", "config": {"train": {"max_steps": 2}}}
    pipe = load_pipeline(write(tmp_path, [stage]))
    cfg = validate_stage(pipe, pipe.stage("s"))
    assert cfg.train.max_steps == 2 and cfg.train.log_every == 5 and cfg.data.template == "alpaca"
    with pytest.raises(UserError, match="config file not found: nope.yaml"):
        load_pipeline(write(tmp_path, [{**stage, "base": "nope.yaml"}]))


def test_find_pipeline_by_name_path_and_default():
    assert find_pipeline(None) == SHIPPED[DEFAULT_PIPELINE]
    assert find_pipeline("smoke") == SHIPPED["smoke"]
    assert find_pipeline(str(SHIPPED["smoke"])) == SHIPPED["smoke"]
    with pytest.raises(UserError, match="unknown pipeline 'nope'; shipped: .*alpaca"):
        find_pipeline("nope")


def test_the_four_pipelines_ship_tiny_and_real():
    for name in ("rlhf", "alpaca", "vicuna", "koala"):
        assert name in SHIPPED and f"{name}-real" in SHIPPED, name


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_pipeline_validates(name):
    """Structure and references always; each stage's config with its stage's Config once that module exists."""
    path = SHIPPED[name]
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# ") and lines[1].startswith("# Run: "), f"{path}: header lines"
    pipe = load_pipeline(path)
    assert pipe.name == name
    for stage in pipe.spec.stages:
        validate_stage(pipe, stage)


# -- skip decisions, on hand-written manifests (no stage runs) ---------------------------------------------------


def fake_complete(stage_dir: Path, cfg: dict, outputs: dict[str, str], inputs: dict | None = None) -> None:
    stage_dir.mkdir(parents=True, exist_ok=True)
    for rel in outputs.values():
        (stage_dir / rel).mkdir(parents=True, exist_ok=True)
        (stage_dir / rel / "weights.bin").write_text("w")
    manifest = {"stage": "sft", "status": "complete", "config": cfg, "inputs": inputs or {},
                "outputs": {k: {"path": v, "hash": "x"} for k, v in outputs.items()}}
    (stage_dir / "manifest.json").write_text(json.dumps(manifest))


def test_output_path_resolves_manifest_outputs(tmp_path):
    fake_complete(tmp_path / "sft", {}, {"model": "model"})
    assert output_path(tmp_path / "sft", "sft", "model") == str((tmp_path / "sft" / "model").resolve())
    assert output_path(tmp_path / "sft", "sft", "out") == str((tmp_path / "sft").resolve())
    with pytest.raises(UserError, match=r"\$\{sft\.critic\}: stage 'sft' has no output 'critic' \(its outputs: model"):
        output_path(tmp_path / "sft", "sft", "critic")
    with pytest.raises(UserError, match="no complete manifest"):
        output_path(tmp_path / "rm", "rm", "model")


def test_rerun_reason_follows_config_refs_and_inputs(tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text('{"instruction": "a", "output": "b"}\n')
    path = write(tmp_path, [sft_stage("a"), sft_stage("b", model="${a.model}")])
    out = tmp_path / "run"
    runner = PipelineRunner(load_pipeline(path), out, log=lambda _: None)
    fake_complete(out / "a", {}, {"model": "model"})
    stage_b = runner.pipeline.stage("b")
    cfg, refs = runner.resolve(stage_b)
    assert refs == {"a.model": {"path": str((out / "a" / "model").resolve()),
                                "hash": hash_path(out / "a" / "model")}}
    assert cfg.model.path == refs["a.model"]["path"]
    assert runner.rerun_reason(stage_b, cfg, refs) == ("not run yet", False)

    inputs = {"data": {"path": str(data), "hash": hash_path(data)}}
    fake_complete(out / "b", cfg.model_dump(mode="json"), {"model": "model"}, inputs)
    runner._record(stage_b, refs)
    assert runner.rerun_reason(stage_b, cfg, refs) == (None, False)

    changed = cfg.model_copy(update={"optim": cfg.optim.model_copy(update={"lr": 0.5})})
    assert runner.rerun_reason(stage_b, changed, refs)[0] == "config changed: optim.lr"

    (out / "a" / "model" / "weights.bin").write_text("new")
    runner2 = PipelineRunner(runner.pipeline, out, log=lambda _: None)
    cfg2, refs2 = runner2.resolve(stage_b)
    assert runner2.rerun_reason(stage_b, cfg2, refs2)[0] == "input changed: ${a.model}"

    runner2._record(stage_b, refs2)
    data.write_text('{"instruction": "a", "output": "c"}\n')
    assert runner2.rerun_reason(stage_b, cfg2, refs2)[0] == f"input 'data' changed: {data}"

    manifest = json.loads((out / "b" / "manifest.json").read_text())
    manifest.update(status="failed", inputs={})
    (out / "b" / "manifest.json").write_text(json.dumps(manifest))
    assert runner2.rerun_reason(stage_b, cfg2, refs2) == ("previous run failed; resuming", True)


def test_changed_keys_lists_dotted_differences():
    assert changed_keys({"a": {"b": 1, "c": 2}}, {"a": {"b": 1, "c": 3}, "d": 0}) == ["a.c", "d"]


def test_override_of_a_yaml_anchor_shared_config_changes_one_stage(tmp_path):
    path = tmp_path / "anchors.yaml"
    path.write_text("name: anchors\nstages:\n"
                    "  - {name: a, stage: sft, config: &shared {data: {path: x.jsonl}}}\n"
                    "  - {name: b, stage: sft, config: *shared}\n")
    pipe = load_pipeline(path, ["b.data.path=y.jsonl"])
    assert pipe.stage("a").config == {"data": {"path": "x.jsonl"}}
    assert pipe.stage("b").config == {"data": {"path": "y.jsonl"}}


def test_pipeline_with_base_takes_its_stages_and_sets_overrides(tmp_path):
    base = write(tmp_path, [sft_stage("a"), sft_stage("b", model="${a.model}", optim={"lr": 0.1})], name="base")
    variant = tmp_path / "variant.yaml"
    variant.write_text(f"# a variant\nbase: {base}\noverrides: [b.optim.lr=0.5, a.train.max_steps=3]\n")
    pipe = load_pipeline(variant, ["a.train.max_steps=4"])  # the caller's overrides come last
    assert pipe.name == "variant" and pipe.names() == ["a", "b"]
    assert pipe.stage("b").config["optim"] == {"lr": 0.5} and pipe.stage("a").config["train"] == {"max_steps": 4}
    assert pipe.stage("b").config["model"] == {"path": "${a.model}"}
    variant.write_text(f"# both\nbase: {base}\nstages: []\n")
    with pytest.raises(UserError, match="either `base`"):
        load_pipeline(variant)
    loop = tmp_path / "loop.yaml"
    loop.write_text(f"# a loop\nbase: {loop}\n")
    with pytest.raises(UserError, match="in a loop"):
        load_pipeline(loop)
    shipped_ci = load_pipeline(SHIPPED["rlhf-ci"])  # the shipped CI pipeline is the default one, shortened
    assert shipped_ci.names() == load_pipeline(SHIPPED["rlhf"]).names()
    assert shipped_ci.stage("ppo").config["loop"]["iterations"] == 30
