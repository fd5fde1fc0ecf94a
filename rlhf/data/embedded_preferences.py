"""The project's own preference pairs, written from templates here (nothing copied from anywhere).

``python -m rlhf.data.embedded_preferences`` writes data/preferences.jsonl deterministically from SEED: records
``{prompt, chosen, rejected, kind}``. The prompts and the chosen answers come from the embedded instruction
generators (rlhf.data.embedded), so every chosen answer is computed and correct. The rejected answer is objectively
worse, in one of these ways (``kind``):
- ``refusal``: declines a harmless, answerable question;
- ``dismissive``: brushes the user off;
- ``echo``: repeats the instruction back instead of answering it;
- ``degenerate``: stuck repeating the first words of the right answer.
Each failure is visible in the text, so even the tiny embedded model learns to rank these pairs.
"""

from __future__ import annotations

import random

from rlhf.data.embedded import GENERATORS, Record
from rlhf.data.io import write_jsonl
from rlhf.paths import DATA_DIR

SEED = 20240502
N_PAIRS = 800
PREFERENCES_PATH = DATA_DIR / "preferences.jsonl"

REFUSALS = ("I'm sorry, but I can't help with that.", "I don't know.", "I would rather not answer that question.",
            "Sorry, that is not something I can do.", "I have no idea, sorry.", "I cannot answer questions like this.")
DISMISSALS = ("Figure it out yourself.", "Why would I tell you that?", "Look it up somewhere else.",
              "That is a boring question.", "Ask someone else.", "Not my problem.")
KINDS = ("refusal", "dismissive", "echo", "degenerate")
KIND_WEIGHTS = (0.25, 0.2, 0.25, 0.3)


def prompt_text(instruction: str, extra: str) -> str:
    return f"{instruction}\n\n{extra}" if extra else instruction


def _degenerate(rng: random.Random, answer: str) -> str:
    loop = " ".join(answer.split()[:2])
    return " ".join([loop] * rng.randint(4, 7))


def rejected_answer(rng: random.Random, kind: str, record: Record) -> str:
    """A worse answer of ``kind`` to ``record`` (instruction, input, correct output)."""
    instruction, _, answer = record
    if kind == "refusal":
        return rng.choice(REFUSALS)
    if kind == "dismissive":
        return rng.choice(DISMISSALS)
    if kind == "echo":
        return instruction
    return _degenerate(rng, answer)


def make_preferences(rng: random.Random, count: int = N_PAIRS) -> list[dict[str, str]]:
    """``count`` pairs with distinct prompts; a draw whose rejected text equals the chosen one is drawn again."""
    pairs: list[dict[str, str]] = []
    seen: set[str] = set()
    while len(pairs) < count:
        record = rng.choice(GENERATORS)(rng)
        prompt = prompt_text(record[0], record[1])
        kind = rng.choices(KINDS, KIND_WEIGHTS)[0]
        rejected = rejected_answer(rng, kind, record)
        if prompt in seen or rejected.strip() == record[2].strip():
            continue
        seen.add(prompt)
        pairs.append({"prompt": prompt, "chosen": record[2], "rejected": rejected, "kind": kind})
    return pairs


def write_preferences() -> None:
    write_jsonl(PREFERENCES_PATH, make_preferences(random.Random(SEED)))


if __name__ == "__main__":
    write_preferences()
    print(f"wrote {PREFERENCES_PATH}")
