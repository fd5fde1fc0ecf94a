"""Preference data for the DPO stage: pairs in every format the RM stage reads, or KTO's unpaired rows.

An example is ``{"id", "ids": [seq_0, seq_1], "resp": [n_0, n_1]}`` (+ ``"label"`` for KTO): two token sequences
(prompt + response + eos, the policy's template) and how many of each one's last tokens are the response. Paired
losses: seq_0 chosen, seq_1 rejected. KTO: seq_0 the example's completion, seq_1 its KL completion (this prompt
with the completion of the next example in a seeded random cycle; Ethayarajh et al. 2024 sec. 4.1 take
mismatched pairs from the batch). ``id`` keys the reference log-prob cache; train and eval ids never overlap.
"""

from __future__ import annotations

import random
from typing import NamedTuple

from rlhf.data.formats import Message
from rlhf.data.io import Row
from rlhf.data.preferences import Pair, _messages, _text, looks_like_hh, hh_messages
from rlhf.data.templates import encode_prompt_response_split
from rlhf.errors import UserError


class Unpaired(NamedTuple):
    prompt: list[Message]
    completion: str
    desirable: bool


def to_unpaired(row: Row) -> Unpaired:
    """TRL's unpaired preference row ``{prompt, completion, label}``: prompt a string or messages ending in a user
    turn, completion a string or one assistant message, label a boolean (true = desirable)."""
    data = row.data
    if not isinstance(data, dict) or not {"prompt", "completion", "label"} <= data.keys():
        raise UserError(f"{row.where}: an unpaired row needs 'prompt', 'completion' and 'label' "
                        f"(got {sorted(data) if isinstance(data, dict) else type(data).__name__})")
    if not isinstance(data["label"], bool):
        raise UserError(f"{row.where}: 'label' must be true (desirable) or false (undesirable), got {data['label']!r}")
    prompt = data["prompt"]
    if isinstance(prompt, str):
        messages = hh_messages(prompt.strip()[: -len("Assistant:")]) if looks_like_hh(prompt) else \
            [{"role": "user", "content": prompt}]
    else:
        messages = _messages(row, "prompt")
    if not messages or messages[-1]["role"] != "user":
        raise UserError(f"{row.where}: the prompt must end with a user turn")
    completion = _text(row, "completion").strip()
    if not completion:
        raise UserError(f"{row.where}: the completion is empty")
    return Unpaired(messages, completion, data["label"])


def unpaired_from_pairs(pairs: list[Pair]) -> list[Unpaired]:
    """Each pair -> its chosen side as desirable and its rejected side as undesirable (KTO on paired data)."""
    return [u for p in pairs for u in (Unpaired(p.prompt, p.chosen, True), Unpaired(p.prompt, p.rejected, False))]


def encode(messages: list[Message], response: str, template: str, tokenizer, max_length: int) -> tuple[list[int], int]:
    ids, n = encode_prompt_response_split(messages, response, template, tokenizer, max_length)
    return ids, n


def encode_pairs(pairs: list[Pair], template: str, tokenizer, max_length: int,
                 first_id: int = 0) -> tuple[list[dict], int]:
    """Pairs -> examples; (examples, pairs dropped because truncation made both sides the same ids)."""
    examples, same = [], 0
    for p in pairs:
        chosen = encode(p.prompt, p.chosen, template, tokenizer, max_length)
        rejected = encode(p.prompt, p.rejected, template, tokenizer, max_length)
        if chosen[0] == rejected[0]:
            same += 1
            continue
        examples.append({"id": first_id + len(examples), "ids": [chosen[0], rejected[0]],
                         "resp": [chosen[1], rejected[1]]})
    return examples, same


def encode_unpaired(rows: list[Unpaired], template: str, tokenizer, max_length: int, seed: int,
                    first_id: int = 0) -> list[dict]:
    """Unpaired rows -> KTO examples, each with its KL completion (see the module docstring)."""
    order = list(range(len(rows)))
    random.Random(seed).shuffle(order)
    partner = {order[i]: order[(i + 1) % len(order)] for i in range(len(order))}
    examples = []
    for i, u in enumerate(rows):
        own = encode(u.prompt, u.completion, template, tokenizer, max_length)
        kl = encode(u.prompt, rows[partner[i]].completion, template, tokenizer, max_length)
        examples.append({"id": first_id + i, "ids": [own[0], kl[0]], "resp": [own[1], kl[1]],
                         "label": int(u.desirable)})
    return examples
