"""Label masking, prompt prefixes and truncation of rlhf.data.templates; packing of rlhf.data.packing."""

from __future__ import annotations

import pytest

from rlhf.data.packing import pack
from rlhf.data.templates import encode_conversation, encode_prompt, encode_prompt_response, render_text
from rlhf.errors import UserError
from rlhf.models.tokenizer import EMBEDDED_TOKENIZER, load_tokenizer

TWO_TURNS = [
    {"role": "user", "content": "Add 2 and 3."},
    {"role": "assistant", "content": "2 plus 3 is 5."},
    {"role": "user", "content": "Is 5 even?"},
    {"role": "assistant", "content": "No, 5 is odd."},
]
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives "
                 "helpful, detailed, and polite answers to the user's questions.")


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(EMBEDDED_TOKENIZER)


def spans(tokenizer, encoded: dict[str, list[int]]) -> list[tuple[bool, str]]:
    """Runs of (trained?, decoded text); trained tokens must carry their own id as label."""
    runs: list[tuple[bool, list[int]]] = []
    for token, label in zip(encoded["input_ids"], encoded["labels"]):
        trained = label != -100
        if trained:
            assert label == token
        if runs and runs[-1][0] == trained:
            runs[-1][1].append(token)
        else:
            runs.append((trained, [token]))
    return [(trained, tokenizer.decode(ids)) for trained, ids in runs]


def test_vicuna_masks_everything_but_the_answers_and_their_eos(tokenizer) -> None:
    encoded = encode_conversation(TWO_TURNS, "vicuna", tokenizer, 512)
    assert encoded["input_ids"][0] == tokenizer.bos_token_id
    assert spans(tokenizer, encoded) == [
        (False, f"<s>{VICUNA_SYSTEM} USER: Add 2 and 3. ASSISTANT:"),
        (True, " 2 plus 3 is 5.</s>"),
        (False, "USER: Is 5 even? ASSISTANT:"),
        (True, " No, 5 is odd.</s>"),
    ]


def test_vicuna_system_message_replaces_the_default(tokenizer) -> None:
    messages = [{"role": "system", "content": "Be brief."}] + TWO_TURNS[:2]
    assert spans(tokenizer, encode_conversation(messages, "vicuna", tokenizer, 512))[0] == (
        False, "<s>Be brief. USER: Add 2 and 3. ASSISTANT:")
    assert render_text(messages, "koala") == "Be brief. USER: Add 2 and 3. GPT: 2 plus 3 is 5.</s>"


def test_alpaca_with_input_and_a_second_turn(tokenizer) -> None:
    messages = [{"role": "user", "content": "Reverse the word.\n\nabc", "instruction": "Reverse the word.",
                 "input": "abc"}, {"role": "assistant", "content": "cba"},
                {"role": "user", "content": "Now uppercase it."}, {"role": "assistant", "content": "CBA"}]
    assert spans(tokenizer, encode_conversation(messages, "alpaca", tokenizer, 512)) == [
        (False, "<s>Below is an instruction that describes a task, paired with an input that provides further "
                "context. Write a response that appropriately completes the request.\n\n### Instruction:\n"
                "Reverse the word.\n\n### Input:\nabc\n\n### Response:"),
        (True, " cba</s>"),
        (False, "\n\n### Instruction:\nNow uppercase it.\n\n### Response:"),
        (True, " CBA</s>"),
    ]


def test_alpaca_without_input(tokenizer) -> None:
    assert spans(tokenizer, encode_conversation(TWO_TURNS[:2], "alpaca", tokenizer, 512))[0] == (
        False, "<s>Below is an instruction that describes a task. Write a response that appropriately completes "
               "the request.\n\n### Instruction:\nAdd 2 and 3.\n\n### Response:")


def test_chat_template_prefix_diff_masks_the_template_newline(tokenizer) -> None:
    messages = [{"role": "system", "content": "Be brief."}] + TWO_TURNS
    assert spans(tokenizer, encode_conversation(messages, "chat", tokenizer, 512)) == [
        (False, "<s>Be brief.\nUSER: Add 2 and 3.\nASSISTANT:"),
        (True, " 2 plus 3 is 5.</s>"),
        (False, "\nUSER: Is 5 even?\nASSISTANT:"),
        (True, " No, 5 is odd.</s>"),
        (False, "\n"),
    ]


@pytest.mark.parametrize("template", ["alpaca", "vicuna", "koala", "chat"])
def test_prompt_is_a_prefix_of_the_conversation(tokenizer, template: str) -> None:
    full = encode_conversation(TWO_TURNS, template, tokenizer, 512)["input_ids"]
    for end in (1, 3):
        prompt = encode_prompt(TWO_TURNS[:end], template, tokenizer)
        assert full[: len(prompt)] == prompt
        assert full[len(prompt)] != tokenizer.eos_token_id  # the answer starts right after
    answer = encode_prompt_response(TWO_TURNS[:3], "No, 5 is odd.", template, tokenizer, 512)
    assert answer == full[: len(answer)] and answer[-1] == tokenizer.eos_token_id


def test_prompt_must_end_with_user(tokenizer) -> None:
    with pytest.raises(UserError, match="must end with a user turn"):
        encode_prompt(TWO_TURNS[:2], "vicuna", tokenizer)


def test_truncation_keeps_the_start(tokenizer) -> None:
    full = encode_conversation(TWO_TURNS, "vicuna", tokenizer, 512)
    cut = encode_conversation(TWO_TURNS, "vicuna", tokenizer, 7)
    assert cut == {"input_ids": full["input_ids"][:7], "labels": full["labels"][:7]}
    with pytest.raises(UserError, match="max_length must be a positive integer"):
        encode_conversation(TWO_TURNS, "vicuna", tokenizer, 0)


def test_prompt_response_truncation_keeps_bos_and_the_end(tokenizer) -> None:
    prompt = encode_prompt(TWO_TURNS[:1], "vicuna", tokenizer)
    full = encode_prompt_response(TWO_TURNS[:1], "2 plus 3 is 5.", "vicuna", tokenizer, 512)
    answer = full[len(prompt):]
    cut = encode_prompt_response(TWO_TURNS[:1], "2 plus 3 is 5.", "vicuna", tokenizer, len(answer) + 4)
    assert cut == prompt[:1] + prompt[-3:] + answer
    tiny = encode_prompt_response(TWO_TURNS[:1], "2 plus 3 is 5.", "vicuna", tokenizer, 3)
    assert tiny == [tokenizer.bos_token_id, answer[0], tokenizer.eos_token_id]


def test_unknown_template(tokenizer) -> None:
    with pytest.raises(UserError, match="unknown template 'llama9'"):
        encode_conversation(TWO_TURNS, "llama9", tokenizer, 10)


def test_pack_greedy_blocks_and_separates_examples() -> None:
    a = {"input_ids": [1, 2, 3], "labels": [-100, 2, 3]}
    b = {"input_ids": [4, 5], "labels": [4, 5]}
    c = {"input_ids": [6, 7, 8, 9], "labels": [6, 7, 8, 9]}
    too_long = {"input_ids": [1, 2, 3, 4, 5, 6, 7], "labels": [1, 2, 3, 4, 5, 6, 7]}
    assert pack([a, b, c, too_long], max_length=5) == [
        {"input_ids": [1, 2, 3, 4, 5], "labels": [-100, 2, 3, -100, 5], "position_ids": [0, 1, 2, 0, 1]},
        {"input_ids": [6, 7, 8, 9], "labels": [-100, 7, 8, 9], "position_ids": [0, 1, 2, 3]},
        {"input_ids": [1, 2, 3, 4, 5], "labels": [-100, 2, 3, 4, 5], "position_ids": [0, 1, 2, 3, 4]},
    ]
    assert a["labels"] == [-100, 2, 3] and b["labels"] == [4, 5]  # inputs untouched
    with pytest.raises(UserError):
        pack([a], max_length=0)


def test_packed_batch_gives_each_example_its_unpacked_loss(tokenizer):
    """Examples packed into blocks (with padding) through SFT's own collate: per-example summed token loss and
    logits equal those of each example run alone, so examples neither attend to each other nor see shifted
    positions."""
    import torch

    from rlhf.models.loading import load_causal_lm, resolve_model_path
    from stages.sft import SFTTask

    model = load_causal_lm(resolve_model_path("embedded:tiny-llama")).eval()
    convs = [[{"role": "user", "content": q}, {"role": "assistant", "content": a}]
             for q, a in (("Add 2 and 3.", "5"), ("Name a color.", "Blue, like the sky."), ("Is 4 even?", "Yes."),
                          ("Sort 3 1 2.", "1 2 3"))]
    examples = [encode_conversation(c, "alpaca", tokenizer, 64) for c in convs]
    task = SFTTask("unused", "unused", "unused", tokenizer.pad_token_id)

    def token_losses(batch) -> list[list[float]]:
        """Per row, the loss of each target token (in order); labels are shifted as the model's own loss does."""
        with torch.no_grad():
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        rows = []
        for lg, lab in zip(logits, batch["labels"]):
            lab = lab[1:]
            ce = torch.nn.functional.cross_entropy(lg[:-1], lab.clamp(min=0), reduction="none")
            rows.append(ce[lab != -100].tolist())
        return rows

    alone = [losses for e in examples for losses in token_losses(task.collate([e]))]
    blocks = pack(examples, max_length=max(len(e["input_ids"]) for e in examples) * 5 // 2)
    # Fewer blocks than examples (so some hold several), of different lengths (so the batch is padded).
    assert 1 < len(blocks) < len(examples) and len({len(b["input_ids"]) for b in blocks}) > 1
    packed = [x for row in token_losses(task.collate(blocks)) for x in row]
    # The packed first token of each example is not a target (and unpacked it is never one: the shift).
    assert packed == pytest.approx([x for losses in alone for x in losses], abs=1e-4)
    # And the same targets, in the same count: nothing was lost or added at the block boundaries.
    assert len(packed) == sum(len(x) for x in alone)
    # The check can fail: the old packing (one causal mask over the whole block) gives different losses.
    leaky = [{k: v for k, v in b.items() if k != "position_ids"} for b in blocks]
    assert [x for row in token_losses(task.collate(leaky)) for x in row] != pytest.approx(packed, abs=1e-4)


def test_sft_counts_examples_cut_before_any_response(tmp_path, tokenizer):
    """A conversation cut to max_length before its first assistant token is dropped, and counted by reason."""
    import json

    from rlhf.config import validate
    from stages import sft

    rows = [{"instruction": "Say hi.", "input": "", "output": "Hi."},
            {"instruction": "Repeat: " + "word " * 200, "input": "", "output": "word"},
            {"instruction": "Say yes.", "input": "", "output": "Yes."}]
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = validate(sft.Config, {"data": {"path": str(path), "format": "alpaca", "max_length": 64,
                                         "eval_fraction": 0.0}}, "test")
    train, evals, dropped = sft.encode_rows(cfg, tokenizer)
    assert (len(train), len(evals), dropped) == (2, 0, {"no_response_within_max_length": 1})
    cfg.data.max_length = 4  # nothing left: the one-line error says what was dropped
    with pytest.raises(UserError, match=r"no training examples .*dropped: \{'no_response_within_max_length': 3\}"):
        sft.encode_rows(cfg, tokenizer)
