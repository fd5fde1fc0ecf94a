"""Prompt templates: render a conversation to token ids with labels on exactly the assistant's tokens.

Templates:
- ``alpaca``: the Stanford Alpaca prompt, with and without input (tatsu-lab/stanford_alpaca, train.py PROMPT_DICT).
- ``vicuna``: FastChat ``vicuna_v1.1`` (lm-sys/FastChat conversation.py, ADD_COLON_TWO, sep " ", sep2 "</s>").
- ``koala``: FastChat ``koala_v1`` ("BEGINNING OF CONVERSATION: USER: ... GPT: ...</s>").
- ``chat``: the tokenizer's own ``chat_template``; the assistant spans come from the prefix-diff method
  (render ``messages[:i]`` with the generation prompt, render ``messages[:i+1]``, the difference is turn i).

A template turns a conversation into *pieces* of text, each tokenized on its own and concatenated
(bos first), so the boundary between masked and trained tokens is exact and the ids of a prompt are
always a prefix of the ids of the same prompt with its answer. An assistant answer is tokenized as
``" " + content`` (unless it already starts with whitespace), which SentencePiece (LLaMA) and
byte-level BPE both read as one word boundary, so a decoded generation re-encodes to the same ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlhf.data.formats import Message, check_conversation
from rlhf.errors import UserError

IGNORE_INDEX = -100  # the label PyTorch's cross-entropy skips
TEMPLATE_NAMES = ("alpaca", "vicuna", "koala", "chat")

ALPACA_PREAMBLE_INPUT = ("Below is an instruction that describes a task, paired with an input that provides "
                         "further context. Write a response that appropriately completes the request.")
ALPACA_PREAMBLE = "Below is an instruction that describes a task. Write a response that appropriately completes the request."
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
KOALA_SYSTEM = "BEGINNING OF CONVERSATION:"


@dataclass(frozen=True)
class Piece:
    """A span tokenized on its own: text, or the tokenizer's bos/eos token (``special``); trained -> labels kept."""

    text: str = ""
    trained: bool = False
    special: str | None = None  # "bos" | "eos"


def encode_conversation(messages: list[Message], template: str, tokenizer: Any, max_length: int) -> dict[str, list[int]]:
    """Token ids and labels of a whole conversation, cut to ``max_length`` tokens (keeping the start).

    labels[t] == input_ids[t] on every assistant turn's tokens and the eos closing each assistant turn;
    IGNORE_INDEX on bos, system, user and template tokens. Shapes: both lists have the same length <= max_length.
    """
    _check_max_length(max_length)
    ids, labels = _encode_pieces(_pieces(messages, template, tokenizer), tokenizer)
    return {"input_ids": ids[:max_length], "labels": labels[:max_length]}


def encode_prompt(messages: list[Message], template: str, tokenizer: Any) -> list[int]:
    """The ids generation starts from: the conversation up to where the assistant's answer begins.

    ``messages`` must end with a user turn. Equal to the first ids encode_conversation gives for the
    same turns followed by an assistant answer.
    """
    _require_last_user(messages)
    ids, _ = _encode_pieces(_pieces(messages, template, tokenizer), tokenizer)
    return ids


def encode_prompt_response(messages: list[Message], response: str, template: str, tokenizer: Any,
                           max_length: int) -> list[int]:
    """Prompt ids + response ids + the closing eos, shaped exactly like the policy's SFT/PPO text.

    Truncation (when longer than ``max_length``) keeps what a reward model needs, the end: the prompt
    loses tokens from its left (bos kept); if the response alone still does not fit, it is cut at its
    end and its final token (the eos) is kept last.
    """
    return encode_prompt_response_split(messages, response, template, tokenizer, max_length)[0]


def encode_prompt_response_split(messages: list[Message], response: str, template: str, tokenizer: Any,
                                 max_length: int) -> tuple[list[int], int]:
    """``(encode_prompt_response's ids, how many of them, at the end, are the response's)``: the mask DPO's
    sequence log-probs sum over (the response and its eos; never a prompt token)."""
    _check_max_length(max_length)
    _require_last_user(messages)
    prompt = encode_prompt(messages, template, tokenizer)
    pieces = _pieces(messages + [{"role": "assistant", "content": response}], template, tokenizer)
    while pieces and not pieces[-1].trained:  # a chat template's text after the eos is not the response's
        pieces.pop()
    full, _ = _encode_pieces(pieces, tokenizer)
    answer = full[len(prompt):]
    if len(full) <= max_length:
        return full, len(answer)
    head = prompt[:1] if prompt and prompt[0] == tokenizer.bos_token_id else []
    body = prompt[len(head):]
    room = max_length - len(head) - len(answer)
    if room >= 0:
        return head + (body[len(body) - room:] if room else []) + answer, len(answer)
    room = max_length - len(head) - 1
    if room < 0:
        return answer[-max_length:], max_length
    return head + answer[:room] + answer[-1:], room + 1


def render_text(messages: list[Message], template: str, tokenizer: Any = None) -> str:
    """The conversation as text for humans and logs (``chat`` needs the tokenizer whose template it is).

    Whitespace at piece boundaries may differ slightly from ``tokenizer.decode`` of the ids.
    """
    if template == "chat":
        if tokenizer is None:
            raise UserError("template 'chat' renders with a tokenizer's chat_template; pass the tokenizer")
        return "".join(p.text for p in _chat_pieces(messages, tokenizer))
    names = {"bos": "", "eos": "</s>"}
    return "".join(names[p.special] if p.special else p.text for p in _pieces(messages, template, tokenizer))


def _check_max_length(max_length: int) -> None:
    if not isinstance(max_length, int) or max_length <= 0:
        raise UserError(f"max_length must be a positive integer, got {max_length!r}")


def _require_last_user(messages: list[Message]) -> None:
    if not messages or messages[-1].get("role") != "user":
        raise UserError("a prompt must end with a user turn (the turn the model answers)")


def _pieces(messages: list[Message], template: str, tokenizer: Any) -> list[Piece]:
    check_conversation(messages, "conversation")
    if template == "alpaca":
        return _alpaca_pieces(messages)
    if template == "vicuna":
        return _colon_two_pieces(messages, VICUNA_SYSTEM, "USER", "ASSISTANT")
    if template == "koala":
        return _colon_two_pieces(messages, KOALA_SYSTEM, "USER", "GPT")
    if template == "chat":
        return _chat_pieces(messages, tokenizer)
    raise UserError(f"unknown template {template!r}; expected one of {', '.join(TEMPLATE_NAMES)}")


def _answer(content: str) -> list[Piece]:
    text = content if content[:1].isspace() else " " + content
    return [Piece(text, trained=True), Piece(trained=True, special="eos")]


def _split_system(messages: list[Message], default: str) -> tuple[str, list[Message]]:
    if messages and messages[0]["role"] == "system":
        return messages[0]["content"], messages[1:]
    return default, messages


def _colon_two_pieces(messages: list[Message], default_system: str, user: str, assistant: str) -> list[Piece]:
    """FastChat ADD_COLON_TWO: ``SYSTEM USER: u ASSISTANT: a</s>USER: u2 ASSISTANT: a2</s>``."""
    system, turns = _split_system(messages, default_system)
    pieces = [Piece(special="bos")]
    prefix = system + " " if system else ""
    for message in turns:
        if message["role"] == "user":
            pieces.append(Piece(f"{prefix}{user}: {message['content']} {assistant}:"))
            prefix = ""
        else:
            pieces.extend(_answer(message["content"]))
    return pieces


def _alpaca_pieces(messages: list[Message]) -> list[Piece]:
    """Stanford Alpaca's prompt; later turns (Alpaca itself is single-turn) repeat the instruction block."""
    system, turns = _split_system(messages, "")
    pieces = [Piece(special="bos")]
    for i, message in enumerate(turns):
        if message["role"] == "assistant":
            pieces.extend(_answer(message["content"]))
            continue
        instruction = message.get("instruction", message["content"])
        extra = message.get("input", "")
        block = f"### Instruction:\n{instruction}\n\n"
        if extra:
            block += f"### Input:\n{extra}\n\n"
        block += "### Response:"
        if i == 0:
            preamble = system or (ALPACA_PREAMBLE_INPUT if extra else ALPACA_PREAMBLE)
            pieces.append(Piece(f"{preamble}\n\n{block}"))
        else:
            pieces.append(Piece(f"\n\n{block}"))
    return pieces


def _chat_pieces(messages: list[Message], tokenizer: Any) -> list[Piece]:
    """Prefix-diff over the tokenizer's chat_template: turn i's text is render(:i+1) minus render(:i, gen prompt).

    Text after the last eos inside an assistant's span (e.g. a newline the template adds) stays masked.
    """
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise UserError("template 'chat' needs a tokenizer with a chat_template; use alpaca, vicuna or koala")
    check_conversation(messages, "conversation")
    pieces: list[Piece] = []
    done = 0  # characters of the rendered conversation already covered by pieces
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt_text = _render_chat(tokenizer, messages[:i], generation_prompt=True)
        full_text = _render_chat(tokenizer, messages[: i + 1], generation_prompt=False)
        if not full_text.startswith(prompt_text) or len(prompt_text) < done:
            raise UserError("the tokenizer's chat_template does not render each turn as an extension of the "
                            "previous ones; use template alpaca, vicuna or koala")
        pieces.append(Piece(prompt_text[done:]))
        answer = full_text[len(prompt_text):]
        eos = tokenizer.eos_token or ""
        cut = answer.rfind(eos) + len(eos) if eos and eos in answer else len(answer)
        pieces.append(Piece(answer[:cut], trained=True))
        pieces.append(Piece(answer[cut:]))
        done = len(full_text)
    if messages and messages[-1]["role"] != "assistant":
        tail = _render_chat(tokenizer, messages, generation_prompt=True)
        pieces.append(Piece(tail[done:]))
    return [p for p in pieces if p.text]


def _render_chat(tokenizer: Any, messages: list[Message], generation_prompt: bool) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    except Exception as e:  # jinja raises its own types for templates that reject a conversation shape
        raise UserError(f"the tokenizer's chat_template failed on a {len(messages)}-message conversation: {e}") from None


def _encode_pieces(pieces: list[Piece], tokenizer: Any) -> tuple[list[int], list[int]]:
    ids: list[int] = []
    labels: list[int] = []
    for piece in pieces:
        if piece.special == "bos":
            piece_ids = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
        elif piece.special == "eos":
            piece_ids = [tokenizer.eos_token_id]
        else:
            piece_ids = tokenizer.encode(piece.text, add_special_tokens=False)
        ids.extend(piece_ids)
        labels.extend(piece_ids if piece.trained else [IGNORE_INDEX] * len(piece_ids))
    return ids, labels
