"""rlhf.models.tokenizer: the embedded byte-level BPE and loading other tokenizers."""

from __future__ import annotations

from pathlib import Path

import pytest

import rlhf.paths
from rlhf.errors import UserError
from rlhf.models.tokenizer import EMBEDDED_TOKENIZER, EMBEDDED_TOKENIZER_DIR, build_embedded_tokenizer, load_tokenizer

LLAMA2C_TOKENIZER = Path(rlhf.paths.REPO_ROOT).parent / "shared" / "data" / "models" / "llama2c_tokenizer"


@pytest.fixture(scope="module")
def embedded():
    return load_tokenizer(EMBEDDED_TOKENIZER)


def test_embedded_special_tokens(embedded) -> None:
    assert [embedded.unk_token, embedded.bos_token, embedded.eos_token, embedded.pad_token] == \
        ["<unk>", "<s>", "</s>", "<pad>"]
    assert [embedded.unk_token_id, embedded.bos_token_id, embedded.eos_token_id, embedded.pad_token_id] == [0, 1, 2, 3]
    assert 1000 < len(embedded) <= 4096


@pytest.mark.parametrize("text", ["How do I boil an egg?", "  Tabs\tand\nnewlines, ünïcödé & emoji 🙂 zyxq"])
def test_embedded_round_trips_text_and_adds_bos(embedded, text: str) -> None:
    ids = embedded(text)["input_ids"]
    assert ids[0] == embedded.bos_token_id and embedded.bos_token_id not in ids[1:]
    assert embedded.decode(ids, skip_special_tokens=True) == text
    assert embedded.encode(text, add_special_tokens=False) == ids[1:]


def test_embedded_learned_words_from_its_data(embedded) -> None:
    assert len(embedded.tokenize(" instruction")) == 1  # a frequent word of data/ is one token


def test_embedded_has_a_chat_template(embedded) -> None:
    text = embedded.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                        add_generation_prompt=True)
    assert text == "<s>USER: Hi\nASSISTANT:"


def test_build_is_deterministic(tmp_path: Path) -> None:
    build_embedded_tokenizer(tmp_path)
    assert (tmp_path / "tokenizer.json").read_bytes() == (EMBEDDED_TOKENIZER_DIR / "tokenizer.json").read_bytes()


def test_llama2c_sentencepiece_model_loads() -> None:
    if not LLAMA2C_TOKENIZER.is_dir():
        pytest.skip("shared data (llama2c tokenizer) is absent")
    tokenizer = load_tokenizer(str(LLAMA2C_TOKENIZER))
    assert tokenizer.encode("Hello world!", add_special_tokens=False) == [15043, 3186, 29991]
    assert tokenizer("Hello world!")["input_ids"] == [1, 15043, 3186, 29991]  # LLaMA adds bos
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (1, 2)
    assert tokenizer.pad_token == "<unk>"  # no pad in LLaMA's model: unk stands in
    assert len(tokenizer) == 32000


def test_missing_path_and_empty_dir_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"nothere: no such tokenizer directory"):
        load_tokenizer(str(tmp_path / "nothere"))
    with pytest.raises(UserError, match=r"no tokenizer\.json, tokenizer_config\.json or tokenizer\.model"):
        load_tokenizer(str(tmp_path))
