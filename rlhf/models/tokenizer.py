"""Loading tokenizers (HF dirs, hub names, bare SentencePiece models) and building the project's own one.

``load_tokenizer`` always returns a tokenizer with bos, eos and pad set, so templates, collators and
generation never meet a None special token.

The embedded tokenizer is a byte-level BPE (the GPT-2 scheme, Radford et al. 2019) trained with HF
``tokenizers`` on the project's own embedded datasets, so tests and tiny runs work with no download.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import jinja2

from transformers import AutoTokenizer, LlamaTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from rlhf.errors import UserError
from rlhf.paths import DATA_DIR, resolve_path

EMBEDDED_TOKENIZER = "embedded:tokenizer"
EMBEDDED_TOKENIZER_DIR = DATA_DIR / "tokenizer"
EMBEDDED_VOCAB_SIZE = 4096
MIN_PAIR_FREQUENCY = 1
SPECIAL_TOKENS = ("<unk>", "<s>", "</s>", "<pad>")  # ids 0..3, LLaMA's order for unk/bos/eos

# USER/ASSISTANT turns like Vicuna's; eos closes each answer so the prefix-diff masking finds its end.
EMBEDDED_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n' }}"
    "{% elif message['role'] == 'user' %}{{ 'USER: ' + message['content'] + '\n' }}"
    "{% else %}{{ 'ASSISTANT: ' + message['content'] + eos_token + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """A tokenizer from an HF tokenizer dir, a dir with only a SentencePiece ``tokenizer.model`` (loaded as
    LLaMA's, adding bos like LLaMA), a hub name, or ``EMBEDDED_TOKENIZER`` (data/tokenizer, built if missing).

    pad falls back to unk, then eos; a missing bos falls back to eos (GPT-2's convention); no eos is an error.
    """
    if path == EMBEDDED_TOKENIZER:
        if not (EMBEDDED_TOKENIZER_DIR / "tokenizer.json").exists():
            build_embedded_tokenizer(EMBEDDED_TOKENIZER_DIR)
        tokenizer = AutoTokenizer.from_pretrained(str(EMBEDDED_TOKENIZER_DIR))
    else:
        tokenizer = _load_path_or_hub(path)
    return _ensure_special_tokens(tokenizer, path)


def build_embedded_tokenizer(out_dir: str | Path) -> PreTrainedTokenizerFast:
    """Train the byte-level BPE (vocab <= 4096) on data/instructions.jsonl and data/conversations.json.

    Deterministic: the same texts in the same order give the same vocab and merges. Saved as an HF
    tokenizer dir (tokenizer.json + config with the chat template) under ``out_dir``.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    # No prefix space: templates put the spaces they mean into their text, so decode(encode(x)) == x.
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=EMBEDDED_VOCAB_SIZE,
        min_frequency=MIN_PAIR_FREQUENCY,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(_embedded_texts(), trainer=trainer)
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", core.token_to_id("<s>"))]
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        chat_template=EMBEDDED_CHAT_TEMPLATE, model_max_length=2048,
    )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(str(out))
    return tokenizer


def _embedded_texts() -> Iterator[str]:
    """The embedded conversations rendered with each built-in template, so template words get tokens too.

    The datasets are read from data/, never written here: ``python -m rlhf.data.embedded`` writes them and then
    calls this builder (data -> tokenizer, one direction; the two modules do not import each other)."""
    from rlhf.data.formats import to_messages
    from rlhf.data.io import read_rows
    from rlhf.data.templates import render_text

    chat_template = jinja2.Environment().from_string(EMBEDDED_CHAT_TEMPLATE)
    sources = (DATA_DIR / "instructions.jsonl", DATA_DIR / "conversations.json")
    missing = [str(p) for p in sources if not p.is_file()]
    if missing:
        raise UserError(f"{', '.join(missing)} missing: run `python -m rlhf.data.embedded` to write the embedded "
                        "datasets and the tokenizer")
    for source in sources:
        for row in read_rows(str(source)):
            messages = to_messages(row)
            for template in ("alpaca", "vicuna", "koala"):
                yield render_text(messages, template)
            yield chat_template.render(messages=messages, bos_token="<s>", eos_token="</s>", add_generation_prompt=False)


def _load_path_or_hub(path: str) -> PreTrainedTokenizerBase:
    local = resolve_path(path)
    if local.is_file() and local.name == "tokenizer.model":
        local = local.parent
    if local.is_dir():
        try:
            if (local / "tokenizer.json").exists() or (local / "tokenizer_config.json").exists():
                return AutoTokenizer.from_pretrained(str(local))
            if (local / "tokenizer.model").exists():
                return LlamaTokenizer.from_pretrained(str(local), add_bos_token=True)
        except (OSError, ValueError) as e:
            raise UserError(f"{path}: cannot load the tokenizer: {str(e).splitlines()[0]}") from None
        raise UserError(f"{path}: no tokenizer.json, tokenizer_config.json or tokenizer.model in this directory")
    if local.exists() or path.startswith(("/", "./", "../", "~")) or path.count("/") > 1:
        raise UserError(f"{path}: no such tokenizer directory")
    try:
        return AutoTokenizer.from_pretrained(path)
    except Exception as e:  # offline / unknown repo / gated: all surface as different exception types
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"{path}: not a local directory and could not load it from the hub: {first_line}") from None


def _ensure_special_tokens(tokenizer: PreTrainedTokenizerBase, name: str) -> PreTrainedTokenizerBase:
    if tokenizer.eos_token is None:
        raise UserError(f"{name}: the tokenizer has no eos token, so answers could not be closed")
    if tokenizer.bos_token is None:
        tokenizer.bos_token = tokenizer.eos_token
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
    return tokenizer
