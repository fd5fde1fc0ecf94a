"""A simulated self-instruct teacher: offline, deterministic, and imperfect in the ways real teachers are.

It answers the prompts of :func:`rlhf.collect.instructions.encode_prompt` the way a language model continues
them: numbered ``Instruction / Input / Output`` items after the open slot. Its tasks are composed from the task
world's families (:mod:`rlhf.world.tasks`: reverse, sort, first, last, count, upper, repeat), each worded in
several ways, with a real instance (an input drawn by the family and its correct output), so the kept data is
usable SFT data. Like a real teacher it also writes what the filters exist for, each with a fixed probability
(:data:`FLAW_WEIGHTS`): a copy of an in-context instruction (``duplicate``), a reworded one (``similar``), a task
needing pictures or files (``banned_keyword``), "Write a program ..." (``banned_prefix``), a two-word
instruction (``too_short``), an item with no Output field (unparseable item), and now and then a reply with no
numbered items at all (unparseable reply). Rephrasings of one family that ROUGE-L finds too close are dropped
by the filter like any other near-duplicate.

For Self-Instruct's separate instance step (a prompt ending in ``N. Input:`` after an instruction), it writes an
input and output for instructions it knows, and an unparseable apology for those it does not.
"""

from __future__ import annotations

import hashlib
import random
import re

from rlhf.world.tasks import FAMILIES

# Ways of asking for each family's task; the family's own instruction comes first.
PHRASINGS: dict[str, tuple[str, ...]] = {
    "reverse": ("Reverse the order of the letters.", "Write these letters backwards, last one first.",
                "Give the letters below in the opposite order."),
    "sort": ("Sort the digits from smallest to largest.", "Put the following digits in ascending order.",
             "Arrange these numbers so that each is bigger than the one before."),
    "first": ("Write the first letter of the list.", "Which letter comes first in this sequence?",
              "Tell me the letter at the start of the given list."),
    "last": ("Write the last letter of the list.", "Which letter ends this sequence?",
             "Name the final item of the letters below."),
    "count": ("Count the letters in the list.", "How many letters are in the given sequence?",
              "Say how many items the following list holds."),
    "upper": ("Write the letters in upper case.", "Capitalize each of these letters.",
              "Convert the given lowercase letters to capitals."),
    "repeat": ("Repeat the word the given number of times.", "Say the word as many times as the number asks.",
               "Output the given word again and again, as often as the number says."),
}
BANNED_TASKS = ("Draw a picture of the letters.", "Plot a graph of these digits.",
                "Open the file and read the first letter.", "Find the city on a map.")
PROGRAM_TASKS = ("Write a program that sorts the digits.", "Write a program to reverse the letters.")
SHORT_TASKS = ("Sort digits.", "Reverse letters.", "Count.")
UNPARSEABLE_REPLIES = ("I am sorry, but I cannot come up with more tasks right now.",
                       "Here are some ideas: sorting, counting and reversing.")
# Probability of each kind of item; the rest of the mass is a good task.
FLAW_WEIGHTS: dict[str, float] = {
    "duplicate": 0.08, "similar": 0.08, "banned_keyword": 0.07, "banned_prefix": 0.05, "too_short": 0.07,
    "no_output": 0.06,
}
UNPARSEABLE_REPLY_RATE = 0.15
SIMILAR_PREFIXES = ("Please ", "Now ", "Quickly ")
_OPEN_SLOT = re.compile(r"(\d+)\. Instruction:$")
_OPEN_INPUT = re.compile(r"(\d+)\. Instruction: (.*)\n\1\. Input:$")
_IN_CONTEXT = re.compile(r"^\d+\. Instruction: (.*)$", re.MULTILINE)


def _family_of_phrasing() -> dict[str, str]:
    return {p: name for name, phrasings in PHRASINGS.items() for p in phrasings}


class SimulatedTeacher:
    """Writes ``tasks_per_reply`` numbered tasks per prompt (see the module docstring)."""

    def __init__(self, seed: int = 0, tasks_per_reply: int = 3) -> None:
        self.seed = seed
        self.tasks_per_reply = tasks_per_reply
        self.calls = 0
        self.items_written: dict[str, int] = {}
        self._families = _family_of_phrasing()

    def _rng(self, prompt: str) -> random.Random:
        """Depends on the seed, the prompt and the call count, so one prompt asked twice gets new tasks."""
        digest = hashlib.sha256(f"{self.seed}\0{self.calls}\0{prompt}".encode()).digest()
        return random.Random(int.from_bytes(digest[:8], "big"))

    def _instance(self, family: str, rng: random.Random) -> tuple[str, str]:
        spec = FAMILIES[family]
        args = spec.sample_args(rng)
        return spec.render_input(args), " ".join(spec.answer_items(args))

    def _item(self, kind: str, in_context: list[str], rng: random.Random) -> tuple[str, str, str | None]:
        """(instruction, input, output or None for an item missing its Output field)."""
        family = rng.choice(sorted(PHRASINGS))
        task_input, output = self._instance(family, rng)
        if kind in ("duplicate", "similar") and in_context:
            copied = rng.choice(in_context)
            instruction = copied if kind == "duplicate" else rng.choice(SIMILAR_PREFIXES) + copied[0].lower() + copied[1:]
            return instruction, "", "The same as before."
        if kind == "banned_keyword":
            return rng.choice(BANNED_TASKS), task_input, output
        if kind == "banned_prefix":
            return rng.choice(PROGRAM_TASKS), "", "def solve(items): return items"
        if kind == "too_short":
            return rng.choice(SHORT_TASKS), task_input, output
        instruction = rng.choice(PHRASINGS[family])
        return instruction, task_input, None if kind == "no_output" else output

    def _tasks_reply(self, number: int, prompt: str, rng: random.Random) -> str:
        if rng.random() < UNPARSEABLE_REPLY_RATE:
            self.items_written["unparseable_reply"] = self.items_written.get("unparseable_reply", 0) + 1
            return " " + rng.choice(UNPARSEABLE_REPLIES)
        in_context = _IN_CONTEXT.findall(prompt)
        kinds, weights = zip(*FLAW_WEIGHTS.items())
        parts = []
        for offset in range(self.tasks_per_reply):
            roll = rng.random()
            kind = "good" if roll >= sum(weights) else rng.choices(kinds, weights)[0]
            self.items_written[kind] = self.items_written.get(kind, 0) + 1
            instruction, task_input, output = self._item(kind, in_context, rng)
            n = number + offset
            head = f" {instruction}\n" if offset == 0 else f"###\n{n}. Instruction: {instruction}\n"
            item = f"{head}{n}. Input:\n{task_input or '<noinput>'}\n"
            if output is not None:
                item += f"{n}. Output:\n{output}\n"
            parts.append(item)
        return "".join(parts)

    def _instance_reply(self, number: int, instruction: str, rng: random.Random) -> str:
        family = self._families.get(instruction.strip())
        if family is None:
            return " I do not know how to make an example for this task."
        task_input, output = self._instance(family, rng)
        return f"\n{task_input}\n{number}. Output:\n{output}\n"

    def complete(self, prompts: list[str]) -> list[str | None]:
        replies = []
        for prompt in prompts:
            self.calls += 1
            rng = self._rng(prompt)
            stripped = prompt.rstrip()
            if (match := _OPEN_INPUT.search(stripped)) is not None:
                replies.append(self._instance_reply(int(match.group(1)), match.group(2), rng))
            elif (match := _OPEN_SLOT.search(stripped)) is not None:
                replies.append(self._tasks_reply(int(match.group(1)), prompt, rng))
            else:
                replies.append(" " + rng.choice(UNPARSEABLE_REPLIES))
        return replies

    def stats(self) -> dict:
        return {"calls": self.calls, "items_written": dict(sorted(self.items_written.items()))}

    def close(self) -> None:
        pass
