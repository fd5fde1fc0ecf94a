"""Greedy packing of encoded examples into blocks, so short SFT examples do not waste padded compute.

Each block is a concatenation of whole examples (in order) whose length stays <= max_length, with
``position_ids`` that restart at 0 for every example. Given position ids, no attention mask and no KV cache
(``use_cache=False``: SFT's collate says so), transformers
(>= 4.54; ``masking_utils.find_packed_sequence_indices``) makes the causal mask block-diagonal for SDPA and eager
attention, and flash-attention runs them as separate variable-length sequences: an example attends only to itself
and sees the rotary positions it would see alone. Its first token would still be a target predicted from the
previous example's last logit, so that label is IGNORE_INDEX (it is never a target unpacked either: the shift).
A packed block's loss is then exactly the sum of its examples' unpacked losses (tests/test_templates.py).
"""

from __future__ import annotations

from rlhf.data.templates import IGNORE_INDEX
from rlhf.errors import UserError


def pack(examples: list[dict[str, list[int]]], max_length: int) -> list[dict[str, list[int]]]:
    """Blocks ``{"input_ids", "labels", "position_ids"}`` of length <= max_length; an example longer than that is cut.

    Examples keep their order; a new block starts whenever the next example does not fit.
    """
    if not isinstance(max_length, int) or max_length <= 0:
        raise UserError(f"max_length must be a positive integer, got {max_length!r}")
    blocks: list[dict[str, list[int]]] = []
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for example in examples:
        example_ids = list(example["input_ids"][:max_length])
        example_labels = list(example["labels"][:max_length])
        if len(example_ids) != len(example_labels):
            raise ValueError("an encoded example has input_ids and labels of different lengths")
        if not example_ids:
            continue
        if ids and len(ids) + len(example_ids) > max_length:
            blocks.append({"input_ids": ids, "labels": labels, "position_ids": positions})
            ids, labels, positions = [], [], []
        example_labels[0] = IGNORE_INDEX
        ids.extend(example_ids)
        labels.extend(example_labels)
        positions.extend(range(len(example_ids)))
    if ids:
        blocks.append({"input_ids": ids, "labels": labels, "position_ids": positions})
    return blocks
