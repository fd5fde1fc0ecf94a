"""The collect stage without Ray or servers: config checks, the self-instruct loop, ShareGPT, mix, labels, judges.

Each mode's shipped tiny config that needs no Ray runs here, and its records are loaded by the SFT stage's own
encoder (``stages.sft.encode_rows``) or the RM's preference loader (``rlhf.data.preferences.load_pairs``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import rlhf.paths
from rlhf.collect.judges import JudgeSection, OpenAIJudge, ProgrammaticJudge, parse_verdict, reference_judge
from rlhf.collect.self_instruct import SelfInstructSection, generate_instructions
from rlhf.config import load_config, validate
from rlhf.data.io import read_rows
from rlhf.data.preferences import load_pairs
from rlhf.errors import UserError
from rlhf.manifest import read_manifest
from rlhf.models.tokenizer import EMBEDDED_TOKENIZER, load_tokenizer
from stages import collect, sft

CONFIGS = rlhf.paths.CONFIGS_DIR / "collect"
SHARED = Path(rlhf.paths.REPO_ROOT).parent / "shared" / "data"


def run_config(name: str, out: Path, overrides: list[str] = ()) -> dict:
    cfg = load_config(collect.Config, CONFIGS / name, list(overrides))
    return collect.run(cfg, out)


def sft_examples(data_path: Path, fmt: str, template: str) -> list[dict]:
    """The examples the SFT stage would train on, built by its own encoder."""
    cfg = validate(sft.Config, {"data": {"path": str(data_path), "format": fmt, "template": template,
                                         "max_length": 256, "eval_fraction": 0.0}}, "test")
    train, _, _ = sft.encode_rows(cfg, load_tokenizer(EMBEDDED_TOKENIZER))
    return train


class ScriptedTeacher:
    """Hand-written teacher replies (test input for the loop, like a hand-written conversation)."""

    def __init__(self, replies: list[str | None]) -> None:
        self.replies = replies
        self.prompts: list[str] = []

    def complete(self, prompts):
        self.prompts += prompts
        return [self.replies[(len(self.prompts) - len(prompts) + i) % len(self.replies)] for i in range(len(prompts))]

    def stats(self):
        return {"calls": len(self.prompts)}

    def close(self):
        pass


def write_seed(path: Path, instructions: list[str]) -> Path:
    with path.open("w") as f:
        for i, text in enumerate(instructions):
            task = {"id": f"s{i}", "name": f"s{i}", "instruction": text,
                    "instances": [{"input": "", "output": "ok"}], "is_classification": False}
            f.write(json.dumps(task) + "\n")
    return path


# -- config ------------------------------------------------------------------------------------------------------


def test_mode_needs_its_section_and_only_it():
    with pytest.raises(UserError, match="mode 'sharegpt' needs a 'sharegpt:' section"):
        validate(collect.Config, {"mode": "sharegpt"}, "c.yaml")
    data = {"mode": "sharegpt", "sharegpt": {"path": "x.json"}, "mix": {"sources": [{"path": "y.json"}]}}
    with pytest.raises(UserError, match="does not use the 'mix:' section"):
        validate(collect.Config, data, "c.yaml")
    with pytest.raises(UserError, match="unknown key 'self_instruct.teacher.modle'; did you mean"):
        validate(collect.Config, {"mode": "self_instruct", "self_instruct": {"teacher": {"modle": "x"}}}, "c.yaml")
    with pytest.raises(UserError, match="teacher kind 'openai' needs 'model' and 'base_url'"):
        validate(collect.Config, {"mode": "self_instruct", "self_instruct": {"teacher": {"kind": "openai"}}}, "c")
    with pytest.raises(UserError, match="judge kind 'rm' needs 'path'"):
        validate(collect.Config, {"mode": "preferences", "preferences": {"judge": {"kind": "rm"}}}, "c")
    with pytest.raises(UserError, match="set 'prompts' and 'policy'"):
        validate(collect.Config, {"mode": "preferences", "preferences": {
            "judge": {"kind": "programmatic", "callable": "m:f"}}}, "c")


# -- self-instruct -----------------------------------------------------------------------------------------------


def test_tiny_self_instruct_config_exercises_the_filters_and_sft_loads_it(tmp_path):
    manifest = run_config("tiny-self-instruct.yaml", tmp_path)
    assert manifest["status"] == "complete" and read_manifest(tmp_path)["status"] == "complete"
    metrics = manifest["metrics"]
    records = json.loads((tmp_path / "data.json").read_text())
    assert metrics["records"] == len(records) == 16 and metrics["target_reached"]
    assert all(set(r) == {"instruction", "input", "output"} for r in records)
    drops = metrics["drops"]
    for rule in ("duplicate", "similar", "banned_keyword", "banned_prefix", "too_short", "unparseable_item"):
        assert drops.get(rule, 0) > 0, (rule, drops)
    dropped = [json.loads(line) for line in (tmp_path / "dropped.jsonl").read_text().splitlines()]
    assert sum(1 for d in dropped if d["reason"] == "similar") == drops["similar"]
    assert len(sft_examples(tmp_path / "data.json", "alpaca", "alpaca")) == 16


def test_rouge_filter_in_the_loop_drops_near_duplicates_and_keeps_distinct(tmp_path):
    seed = write_seed(tmp_path / "seed.jsonl", ["Sort the digits from smallest to largest."])
    reply = (" Sort these digits from the smallest to the largest.\n2. Input:\n3 1 2\n2. Output:\n1 2 3\n"
             "###\n3. Instruction: Name a yellow fruit that grows on trees.\n3. Input:\n<noinput>\n3. Output:\nA lemon.\n"
             "###\n4. Instruction: Name a yellow fruit growing on trees.\n4. Input:\n<noinput>\n4. Output:\nBanana.\n"
             "###\n5. Instruction: Translate the greeting into French.\n5. Input:\nGood morning\n5. Output:\nBonjour\n")
    section = SelfInstructSection(seed_tasks=str(seed), num_instructions=5, prompt_seed_tasks=1,
                                  prompt_generated_tasks=0, prompts_per_round=1, max_rounds=1)
    result = generate_instructions(section, ScriptedTeacher([reply]))
    assert [r["instruction"] for r in result.records] == [
        "Name a yellow fruit that grows on trees.", "Translate the greeting into French."]
    assert result.records[1] == {"instruction": "Translate the greeting into French.", "input": "Good morning",
                                 "output": "Bonjour"}
    assert dict(result.drops) == {"similar": 2}


def test_unparseable_and_failed_replies_are_counted_drops(tmp_path):
    seed = write_seed(tmp_path / "seed.jsonl", ["Name three colors of the rainbow."])
    section = SelfInstructSection(seed_tasks=str(seed), num_instructions=3, prompt_seed_tasks=1,
                                  prompts_per_round=2, max_rounds=3)
    teacher = ScriptedTeacher(["I cannot think of any tasks.", None])
    result = generate_instructions(section, teacher)
    assert result.records == [] and result.rounds == 3
    assert dict(result.drops) == {"unparseable_reply": 3, "no_reply": 3}
    # The prompt is Alpaca's: the seed task numbered 1, then the open slot 2.
    assert teacher.prompts[0].endswith("1. Instruction: Name three colors of the rainbow.\n1. Input:\n<noinput>\n"
                                       "1. Output:\nok\n###\n2. Instruction:")


def test_separate_instance_step_asks_the_teacher_for_input_and_output(tmp_path):
    manifest = run_config("tiny-self-instruct.yaml", tmp_path, ["self_instruct.instances=separate",
                                                               "self_instruct.num_instructions=6"])
    records = json.loads((tmp_path / "data.json").read_text())
    assert manifest["metrics"]["records"] == len(records) == 6
    # The simulated teacher writes the true answer of a task-world instance, e.g. reversing "a b c" -> "c b a".
    reverse = [r for r in records if r["instruction"] == "Reverse the order of the letters."]
    assert all(r["output"] == " ".join(reversed(r["input"].split())) for r in reverse)


def test_malformed_seed_line_fails_the_run_naming_the_line(tmp_path):
    seed = write_seed(tmp_path / "seed.jsonl", ["Name three colors of the rainbow."])
    seed.write_text(seed.read_text() + "{not json\n")
    with pytest.raises(UserError, match=r"seed\.jsonl:2: not valid JSON"):
        run_config("tiny-self-instruct.yaml", tmp_path / "out", [f"self_instruct.seed_tasks={seed}"])
    manifest = read_manifest(tmp_path / "out")
    assert manifest["status"] == "failed" and "seed.jsonl:2" in manifest["error"]
    assert not (tmp_path / "out" / "data.json").exists()


def test_interrupted_run_is_never_complete(tmp_path, monkeypatch):
    out = tmp_path / "out"
    run_config("tiny-self-instruct.yaml", out)
    assert read_manifest(out)["status"] == "complete"

    class Interrupted:
        def complete(self, prompts):
            raise KeyboardInterrupt

        def stats(self):
            return {}

        def close(self):
            pass

    monkeypatch.setattr(collect, "build_teacher", lambda section: Interrupted())
    with pytest.raises(KeyboardInterrupt):
        run_config("tiny-self-instruct.yaml", out)
    assert read_manifest(out)["status"] == "failed"


# -- ShareGPT ----------------------------------------------------------------------------------------------------


def conv(cid: str, *turns: tuple[str, str]) -> dict:
    return {"id": cid, "conversations": [{"from": f, "value": v} for f, v in turns]}


Q, A = "How do I boil an egg properly?", "Put it in boiling water for about eight minutes."
RULE_CASES = {
    "malformed": [{"id": "m", "conversations": [{"from": "robot", "value": "beep"}]}],
    "too_short": [conv("s", ("human", "hi"), ("gpt", "yo"))],
    "empty": [conv("e", ("human", Q), ("gpt", ""))],
    "roles_not_alternating": [conv("r", ("human", Q), ("human", Q), ("gpt", A))],
    "language": [conv("l", ("human", "Wie koche ich ein Ei richtig?"), ("gpt", "Etwa acht Minuten in kochendem Wasser."))],
    "duplicate_id": [conv("d", ("human", Q), ("gpt", A)), conv("d", ("human", "Why is the sky blue?"), ("gpt", A))],
    "duplicate_first_exchange": [conv("f1", ("human", Q), ("gpt", A)), conv("f2", ("human", Q), ("gpt", A))],
    "trimmed_leading_assistant": [conv("t", ("gpt", "Hello! How can I help?"), ("human", Q), ("gpt", A))],
    "trimmed_trailing_user": [conv("u", ("human", Q), ("gpt", A), ("human", "Thanks!"))],
    "split": [conv("p", *[t for i in range(6) for t in (("human", f"{Q} Case {i}. " * 8), ("gpt", A * 8))])],
}


@pytest.mark.parametrize("rule", sorted(RULE_CASES))
def test_sharegpt_rule_is_counted_in_the_manifest(rule, tmp_path):
    path = tmp_path / "convs.json"
    path.write_text(json.dumps(RULE_CASES[rule]))
    manifest = run_config("tiny-sharegpt.yaml", tmp_path / "out", [f"sharegpt.path={path}"])
    rules = manifest["metrics"]["rules"]
    assert rules.get(rule) == 1, rules
    kept = json.loads((tmp_path / "out" / "data.json").read_text())
    assert manifest["metrics"]["records"] == len(kept)
    if rule == "split":
        assert len(kept) > 1 and [c["id"] for c in kept][:2] == ["p_0", "p_1"]


def test_tiny_sharegpt_config_and_sft_loads_it(tmp_path):
    manifest = run_config("tiny-sharegpt.yaml", tmp_path)
    assert manifest["metrics"]["records"] > 0
    assert len(sft_examples(tmp_path / "data.json", "sharegpt", "vicuna")) == manifest["metrics"]["records"]


def test_shared_sharegpt_sample_cleans(tmp_path):
    path = SHARED / "vicuna" / "sharegpt_sample" / "dummy_conversation_with_system.json"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    manifest = run_config("tiny-sharegpt.yaml", tmp_path, [f"sharegpt.path={path}", "sharegpt.lang=null"])
    assert manifest["metrics"]["conversations_in"] == 500 and manifest["metrics"]["records"] > 0


# -- mix ---------------------------------------------------------------------------------------------------------


def test_tiny_mix_config_marks_answers_and_sft_loads_it(tmp_path):
    manifest = run_config("tiny-mix.yaml", tmp_path, ["mix.negative_marker=a bad answer"])
    rows = [json.loads(line) for line in (tmp_path / "data.jsonl").read_text().splitlines()]
    assert manifest["metrics"]["per_feedback"] == {
        k: sum(r["feedback"] == k for r in rows) for k in ("positive", "negative", "none") if any(r["feedback"] == k for r in rows)}
    for row in rows:
        answer = row["messages"][-1]["content"]
        marker = "a bad answer: " if row["feedback"] == "negative" else "a helpful answer: "
        assert answer.startswith(marker), row
    examples = sft_examples(tmp_path / "data.jsonl", "messages", "koala")
    assert len(examples) == len(rows)


# -- preferences without sampling (people's labels) and judges ---------------------------------------------------


def test_labels_file_gives_pairs_the_rm_loader_reads(tmp_path):
    labels = tmp_path / "labels.jsonl"
    rows = [
        {"instruction": "Add the numbers.", "input": "2, 3", "output_1": "5", "output_2": "6", "preference": 1},
        {"instruction": "Name a color.", "input": "", "output_1": "Dog", "output_2": "Blue", "preference": 2},
        {"instruction": "Say hi.", "input": "", "output_1": "hi", "output_2": "hello", "preference": 0},
        {"prompt": "Say bye.", "output_1": "bye", "output_2": "ciao", "preference": None},
    ]
    labels.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = validate(collect.Config, {"mode": "preferences", "preferences": {
        "judge": {"kind": "labels", "path": str(labels)}}}, "test")
    manifest = collect.run(cfg, tmp_path / "out")
    assert manifest["metrics"]["drops"] == {"tie": 1, "unlabeled": 1} and manifest["metrics"]["records"] == 2
    pairs, drops = load_pairs(read_rows(str(tmp_path / "out" / "preferences.jsonl")))
    assert drops == {}
    assert [(p.prompt[-1]["content"], p.chosen, p.rejected) for p in pairs] == [
        ("Add the numbers.\n\n2, 3", "5", "6"), ("Name a color.", "Blue", "Dog")]
    labels.write_text(json.dumps({**rows[0], "preference": "first"}) + "\n")
    with pytest.raises(UserError, match=r"labels\.jsonl:1: field 'preference' must be 1, 2, 0"):
        collect.run(cfg, tmp_path / "out2")


def world_rows() -> list[dict]:
    from rlhf.world.tasks import prompt_row

    return [prompt_row({"family": "reverse", "args": {"items": ["a", "b", "c"]}}),
            prompt_row({"family": "count", "args": {"items": ["x", "y"]}})]


def test_world_annotator_as_programmatic_judge_with_noise():
    rows = world_rows()
    responses = [["b a c", "c b a", "c b a!"], ["3", "3"]]
    judge = ProgrammaticJudge(JudgeSection(kind="programmatic", callable="rlhf.world.annotators:simulated_judge",
                                           kwargs={"noise": 0.0}))
    pairs = judge.judge(rows, [[]] * 2, responses)
    assert pairs[0][0] == "c b a" and pairs[0][1] in ("b a c", "c b a!") and pairs[1] is None
    assert dict(judge.drops) == {"tie": 1}
    # noise=1.0 is handed to the annotator (it takes `noise`), which then flips every label, once.
    flipping = ProgrammaticJudge(JudgeSection(kind="programmatic", callable="rlhf.world.annotators:simulated_judge",
                                              noise=1.0))
    assert flipping.kwargs == {"noise": 1.0} and flipping.noise == 0.0
    assert flipping.judge(rows[:1], [[]], responses[:1])[0][1] == "c b a"
    # A callable without a `noise` parameter gets its pairs swapped by the judge.
    swapping = ProgrammaticJudge(JudgeSection(kind="programmatic", callable="rlhf.collect.judges:reference_judge",
                                              noise=1.0))
    assert swapping.judge([{"output": "c b a"}], [[]], responses[:1]) == [("b a c", "c b a")]
    assert swapping.stats() == {"flipped": 1}
    with pytest.raises(UserError, match="give the noise rate once"):
        ProgrammaticJudge(JudgeSection(kind="programmatic", callable="rlhf.world.annotators:simulated_judge",
                                       kwargs={"noise": 0.1}, noise=0.2))
    with pytest.raises(UserError, match="judge callable 'rlhf.world.annotators:nope'"):
        ProgrammaticJudge(JudgeSection(kind="programmatic", callable="rlhf.world.annotators:nope"))


def test_reference_judge_prefers_the_closest_answer():
    rows = [{"output": "The sum is 127."}, {"output": "x"}, {}]
    assert reference_judge(rows, [["The sum is 12.", "sum 127", "zzz"], ["a", "a"], ["a", "b"]]) == [
        ("The sum is 12.", "zzz"), None, None]


def test_pairwise_verdicts_need_both_orders_to_agree():
    judge = OpenAIJudge.__new__(OpenAIJudge)
    assert parse_verdict("reasoning... [[B]]") == "B" and parse_verdict("no verdict") is None
    assert judge._verdict("[[A]]", "[[B]]", "a", "b") == ("a", "b")  # a first, then a second: a wins both
    assert judge._verdict("[[B]]", "[[A]]", "a", "b") == ("b", "a")
    assert judge._verdict("[[A]]", "[[A]]", "a", "b") == "inconsistent"  # position bias: always the first
    assert judge._verdict("[[C]]", "[[C]]", "a", "b") == "tie"
    assert judge._verdict("[[A]]", "hmm", "a", "b") == "judge_unparseable"
    assert judge._verdict(None, "[[A]]", "a", "b") == "no_reply"
