"""Greedy packing of encoded examples into blocks, so short SFT examples do not waste padded compute.

Each block is a concatenation of whole examples (in order) whose length stays <= max_length. A causal LM
predicts token t from the tokens before it, so the first token of a packed example would be a target
predicted from the previous example's end; its label is set to IGNORE_INDEX to keep examples apart in the
loss (attention still spans the block, as in the "packing" of HF TRL's SFTTrainer / ConstantLengthDataset).
"""

from __future__ import annotations

from rlhf.data.templates import IGNORE_INDEX
from rlhf.errors import UserError


def pack(examples: list[dict[str, list[int]]], max_length: int) -> list[dict[str, list[int]]]:
    """Blocks ``{"input_ids", "labels"}`` of length <= max_length; an example longer than that is cut to it.

    Examples keep their order; a new block starts whenever the next example does not fit.
    """
    if not isinstance(max_length, int) or max_length <= 0:
        raise UserError(f"max_length must be a positive integer, got {max_length!r}")
    blocks: list[dict[str, list[int]]] = []
    ids: list[int] = []
    labels: list[int] = []
    for example in examples:
        example_ids = list(example["input_ids"][:max_length])
        example_labels = list(example["labels"][:max_length])
        if len(example_ids) != len(example_labels):
            raise ValueError("an encoded example has input_ids and labels of different lengths")
        if not example_ids:
            continue
        if ids and len(ids) + len(example_ids) > max_length:
            blocks.append({"input_ids": ids, "labels": labels})
            ids, labels = [], []
        example_labels[0] = IGNORE_INDEX
        ids.extend(example_ids)
        labels.extend(example_labels)
    if ids:
        blocks.append({"input_ids": ids, "labels": labels})
    return blocks
