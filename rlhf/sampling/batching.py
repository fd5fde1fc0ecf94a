"""Prompts bounded by the model's context, and batches sized by tokens.

A prompt longer than ``context - max_new_tokens`` keeps its tail (where the template puts the turn the model
answers) and its BOS; it is counted as truncated. Prompts are sorted by length and cut into batches whose
``rows x (padded width + max_new_tokens)`` stays within a token budget, so one long prompt no longer pads a whole
batch to its length.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from rlhf.errors import UserError


def model_context(model: torch.nn.Module) -> int | None:
    """Positions the model was built for (``max_position_embeddings``), or None when the config has none."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text, "max_position_embeddings", None)


def bound_prompts(prompts: list[list[int]], max_new_tokens: int, context: int | None,
                  bos_id: int | None) -> tuple[list[list[int]], int]:
    """(prompts cut to ``context - max_new_tokens`` tokens keeping BOS and the tail, how many were cut)."""
    if context is None:
        return prompts, 0
    room = context - max_new_tokens
    if room < 1:
        raise UserError(f"max_new_tokens {max_new_tokens} leaves no room for a prompt in the model's context "
                        f"of {context} positions")
    out, cut = [], 0
    for p in prompts:
        if len(p) > room:
            cut += 1
            head = [p[0]] if bos_id is not None and p and p[0] == bos_id and room > 1 else []
            p = head + p[len(p) - (room - len(head)):]
        out.append(p)
    return out, cut


@dataclass
class Batch:
    index: list[int]  # positions in the caller's prompt list, longest prompt first
    rows: int  # rows the engine runs (>= len(index): a static engine pads to a bucket)
    width: int  # padded prompt width the engine runs (>= the longest prompt)

    def tokens(self, max_new_tokens: int) -> int:
        return self.rows * (self.width + max_new_tokens)


def plan_batches(lengths: list[int], max_new_tokens: int, max_batch_tokens: int, max_rows: int,
                 shape: Callable[[int, int], tuple[int, int]] = lambda rows, width: (rows, width)) -> list[Batch]:
    """Batches in order of decreasing prompt length, each within ``max_batch_tokens`` (or a single row).

    ``shape(rows, width)`` -> (rows, width) the engine will actually run for that batch (its padding buckets), so
    the budget bounds what is allocated, not what was asked for.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[Batch] = []
    current: list[int] = []
    for i in order:
        trial = current + [i]
        rows, width = shape(len(trial), max(1, lengths[trial[0]]))
        if current and (len(trial) > max_rows or rows * (width + max_new_tokens) > max_batch_tokens):
            rows, width = shape(len(current), max(1, lengths[current[0]]))
            batches.append(Batch(current, rows, width))
            trial = [i]
        current = trial
    if current:
        rows, width = shape(len(current), max(1, lengths[current[0]]))
        batches.append(Batch(current, rows, width))
    return batches


def left_pad(prompts: list[list[int]], pad_id: int, width: int | None = None,
             rows: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged prompts -> (input_ids [rows, width], attention_mask [rows, width]), padded on the left so generation
    appends cleanly. Extra rows (beyond ``len(prompts)``) repeat the first prompt: a row with no real token would
    attend to nothing."""
    width = max([len(p) for p in prompts] + [width or 0])
    rows = max(rows or 0, len(prompts))
    ids = torch.full((rows, width), pad_id, dtype=torch.long)
    mask = torch.zeros((rows, width), dtype=torch.long)
    for i in range(rows):
        p = prompts[i] if i < len(prompts) else prompts[0]
        if p:
            ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[i, width - len(p):] = 1
    return ids, mask


def cut_at_eos(tokens: torch.Tensor, eos_id: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Generated tokens [B, R] -> (tokens with everything after the first EOS set to pad, mask [B, R]).

    The mask is 1 up to and including the first EOS, 0 after it: tokens after EOS are excluded everywhere.
    """
    is_eos = tokens == eos_id
    after = (is_eos.long().cumsum(dim=1) - is_eos.long()) > 0  # strictly after the first EOS
    mask = (~after).long()
    return tokens.masked_fill(after, pad_id), mask
