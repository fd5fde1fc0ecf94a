"""Sequence log-probs of responses: sum over the response's tokens only (the prompt is masked), equal under left
and right padding (positions come from the attention mask, not from the column index)."""

from __future__ import annotations

from typing import Literal

import torch


def pad_batch(seqs: list[list[int]], n_response: list[int], pad_id: int,
              side: Literal["right", "left"] = "right") -> dict[str, torch.Tensor]:
    """Ragged ids -> input_ids, attention_mask, response_mask, all [N, T_max]; response_mask marks each row's
    last n_response real tokens (the response and its eos)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    response = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, (s, n) in enumerate(zip(seqs, n_response)):
        start = 0 if side == "right" else width - len(s)
        ids[i, start:start + len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, start:start + len(s)] = 1
        response[i, start + len(s) - n:start + len(s)] = 1
    return {"input_ids": ids, "attention_mask": mask, "response_mask": response}


def sequence_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   response_mask: torch.Tensor) -> torch.Tensor:
    """sum_t log p(x_t | x_<t) over response tokens: [N] (float32), from one forward pass of ``model``.

    Token t is scored by the logits at t-1, so a response token is never its own context; a response starting at
    column 0 (all of a row truncated away but the response) loses only that first token's score.
    """
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   use_cache=False).logits[:, :-1].float()
    targets = input_ids[:, 1:]
    # gather - logsumexp rather than log_softmax: one [N, T, V] tensor instead of two
    token_logps = torch.gather(logits, 2, targets.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    return (token_logps * response_mask[:, 1:].to(token_logps.dtype)).sum(-1)
