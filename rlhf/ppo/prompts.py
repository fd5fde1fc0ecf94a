"""PPO prompts: records in any data-loader format -> token ids (the template's generation prompt) plus the text
the reward sees."""

from __future__ import annotations

from dataclasses import dataclass

from rlhf.data.formats import Message, to_prompt_messages
from rlhf.data.templates import encode_prompt
from rlhf.errors import UserError
from rlhf.ppo.config import PromptsSection
from rlhf.data.io import read_rows
from rlhf.sections import read_source


@dataclass
class Prompt:
    ids: list[int]  # the templated prompt the actor continues
    messages: list[Message]  # the conversation up to the user turn (RMs re-encode with their own template)
    text: str  # what remote services and reward functions get as "prompt"
    record: dict  # the source row, all its fields (reward functions that take ``records`` get it)


def prompt_text(messages: list[Message]) -> str:
    """The user's request for a single-turn prompt; for multi-turn, every turn as "role: content" lines."""
    turns = [m for m in messages if m["role"] != "system"]
    if len(turns) == 1:
        return turns[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in messages)


def load_prompts(section: PromptsSection, tokenizer, path: str | None = None,
                 limit: int | None = None) -> tuple[list[Prompt], int]:
    """(prompts, number skipped for exceeding max_prompt_length). A UserError when none are left.
    ``path``/``limit`` override the section's (held-out eval prompts read with the same format and template;
    a separate eval file is one split, so the section's config and split do not apply to it)."""
    if path and path != section.path:
        rows = read_rows(path)[: limit or section.limit]
    else:
        path = section.path
        rows = read_source(section)[: limit or section.limit]
    prompts, skipped = [], 0
    for row in rows:
        messages = to_prompt_messages(row, section.format)
        ids = encode_prompt(messages, section.template, tokenizer)
        if len(ids) > section.max_prompt_length:
            skipped += 1
            continue
        prompts.append(Prompt(ids, messages, prompt_text(messages), dict(row.data)))
    if not prompts:
        raise UserError(f"{path}: no prompts within prompts.max_prompt_length={section.max_prompt_length}")
    return prompts, skipped
