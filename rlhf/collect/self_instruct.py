"""The self-instruct generation loop (Alpaca's ``generate_instruction_following_data``).

Stanford Alpaca (tatsu-lab/stanford_alpaca, ``generate_instruction.py``), after Self-Instruct (Wang et al. 2022,
arXiv:2212.10560): each round sends ``prompts_per_round`` prompts, each holding a few tasks sampled from the seed
tasks and from the tasks generated so far (Self-Instruct mixes 6 human and 2 machine tasks, Alpaca 3 seed
tasks); the teacher continues the numbering with new tasks; the instructions are parsed and filtered
(:class:`rlhf.collect.instructions.InstructionFilter`: length bounds, banned keywords and prefixes, duplicates,
ROUGE-L > threshold against every kept instruction, seeds included) until ``num_instructions`` are kept.

Instances: ``inline`` (Alpaca) takes the input and output the teacher wrote with the instruction; ``separate``
(Self-Instruct's second step) asks the teacher again, per kept instruction, to write the input and output.

Every generated instruction that is not kept is counted under one reason (the manifest's ``drops``):
the filter's rule names, plus ``no_reply`` (the request failed after retries or the budget ran out),
``unparseable_reply`` (no well-formed item in the reply), ``unparseable_item`` (one malformed item in an
otherwise parseable reply), ``instance_unparseable`` (separate step) and ``over_target`` (kept-quality
tasks beyond ``num_instructions`` in the last round).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from pydantic import Field, model_validator

from rlhf.collect.instructions import (
    DEFAULT_BANNED_KEYWORDS,
    DEFAULT_BANNED_PREFIXES,
    InstructionFilter,
    encode_prompt,
    load_seed_tasks,
    parse_instructions,
    seed_examples,
)
from rlhf.collect.teachers import Teacher, TeacherSection
from rlhf.config import Section
from rlhf.errors import UserError
from rlhf.paths import resolve_path

# The project's own wording of the requirements in Alpaca's prompt.txt; `prompt_header_file` swaps in another.
DEFAULT_PROMPT_HEADER = (
    "You are asked to come up with a set of diverse task instructions. They will be given to a language model, "
    "and we will judge how well it completes them.\n\n"
    "Requirements:\n"
    "1. Do not repeat the verb of another instruction, and vary the wording: mix questions and commands.\n"
    "2. Vary the kinds of tasks: open-ended writing, classification, editing, reasoning, and so on.\n"
    "3. A text-only language model must be able to do the task: no pictures, audio, files or actions in the world.\n"
    "4. Write the instructions in English, one or two sentences each.\n"
    "5. Give a realistic input of at most 100 words where the task needs one, else write \"<noinput>\".\n"
    "6. Give an appropriate output of at most 100 words.\n\n"
    "List of tasks:"
)
INSTANCE_HEADER = (
    "Each task below is an instruction with an example input (\"<noinput>\" when it needs none) and the correct "
    "output. Write the input and output of the last task.\n"
)


class SelfInstructSection(Section):
    seed_tasks: str = Field("data/seed_tasks.jsonl", description="seed tasks, Self-Instruct JSONL format")
    num_instructions: int = Field(32, ge=1, description="instructions to keep (Alpaca: 52000)")
    teacher: TeacherSection = Field(default_factory=TeacherSection, description="who writes the new tasks")
    instances: Literal["inline", "separate"] = Field(
        "inline", description="inline: input/output written with the instruction (Alpaca); separate: asked after"
    )
    prompt_header_file: str | None = Field(None, description="text file replacing the built-in prompt header")
    prompt_seed_tasks: int = Field(2, ge=0, description="seed tasks sampled into each prompt")
    prompt_generated_tasks: int = Field(1, ge=0, description="generated tasks sampled into each prompt (when any)")
    prompts_per_round: int = Field(4, ge=1, description="prompts sent together each round (Alpaca: 5)")
    max_rounds: int = Field(100, ge=1, description="stop after this many rounds even if short of the target")
    rouge_threshold: float = Field(0.7, gt=0, le=1, description="drop an instruction with ROUGE-L above this")
    banned_keywords: list[str] = Field(list(DEFAULT_BANNED_KEYWORDS), description="drop instructions with these words")
    banned_prefixes: list[str] = Field(list(DEFAULT_BANNED_PREFIXES), description="drop instructions starting so")
    min_words: int = Field(3, ge=1, description="fewest words an instruction may have")
    max_words: int = Field(150, ge=1, description="most words an instruction may have")
    seed: int = Field(0, description="seed for sampling the in-context tasks")

    @model_validator(mode="after")
    def _some_context(self):
        if self.prompt_seed_tasks + self.prompt_generated_tasks < 1:
            raise ValueError("prompt_seed_tasks + prompt_generated_tasks must be at least 1")
        return self


@dataclass
class SelfInstructResult:
    records: list[dict]
    drops: Counter[str]
    dropped: list[dict] = field(default_factory=list)
    rounds: int = 0
    generated: int = 0


def read_header(section: SelfInstructSection) -> str:
    if section.prompt_header_file is None:
        return DEFAULT_PROMPT_HEADER
    path = resolve_path(section.prompt_header_file)
    try:
        return path.read_text(encoding="utf-8").rstrip("\n")
    except OSError as err:
        raise UserError(f"{section.prompt_header_file}: cannot read the prompt header ({err.strerror})") from None


def count_items(reply: str) -> int:
    """How many '###'-separated items a reply holds (what :func:`parse_instructions` tries to parse)."""
    return sum(1 for item in reply.split("###") if item.strip())


class _Loop:
    def __init__(self, section: SelfInstructSection, teacher: Teacher, seed_tasks: list[dict]) -> None:
        self.section, self.teacher = section, teacher
        self.examples = seed_examples(seed_tasks)
        self.header = read_header(section)
        self.rng = random.Random(section.seed)
        self.filter = InstructionFilter(
            existing=[t["instruction"] for t in seed_tasks], rouge_threshold=section.rouge_threshold,
            banned_keywords=section.banned_keywords, banned_prefixes=section.banned_prefixes,
            min_words=section.min_words, max_words=section.max_words,
        )
        self.result = SelfInstructResult(records=[], drops=Counter())

    def _drop(self, reason: str, instruction: str | None = None, count: int = 1) -> None:
        self.result.drops[reason] += count
        if instruction is not None:
            self.result.dropped.append({"instruction": instruction, "reason": reason})

    def _context(self) -> list[dict]:
        s, kept = self.section, self.result.records
        tasks = self.rng.sample(self.examples, min(s.prompt_seed_tasks, len(self.examples)))
        tasks += self.rng.sample(kept, min(s.prompt_generated_tasks, len(kept)))
        self.rng.shuffle(tasks)
        return tasks

    def _parse(self, reply: str | None, num_prompt_tasks: int) -> list[dict]:
        if reply is None:
            self._drop("no_reply")
            return []
        tasks = parse_instructions(reply, num_prompt_tasks)
        if not tasks:
            self._drop("unparseable_reply")
        elif (malformed := count_items(reply) - len(tasks)) > 0:
            self._drop("unparseable_item", count=malformed)
        self.result.generated += len(tasks)
        return tasks

    def _add_instances(self, tasks: list[dict]) -> list[dict]:
        """Self-Instruct's instance step: the teacher writes input and output for each new instruction."""
        prompts, suffixes = [], []
        for task in tasks:
            context = self._context()
            number = len(context) + 1
            suffix = f" {task['instruction']}\n{number}. Input:"
            prompts.append(encode_prompt(INSTANCE_HEADER, context) + suffix)
            suffixes.append((suffix, number))
        completed = []
        for task, reply, (suffix, number) in zip(tasks, self.teacher.complete(prompts), suffixes):
            parsed = parse_instructions(suffix + reply, number - 1)[:1] if reply is not None else []
            if not parsed or parsed[0]["instruction"] != task["instruction"]:
                self._drop("no_reply" if reply is None else "instance_unparseable", task["instruction"])
                continue
            completed.append(parsed[0])
        return completed

    def run(self) -> SelfInstructResult:
        s, result = self.section, self.result
        while len(result.records) < s.num_instructions and result.rounds < s.max_rounds:
            if getattr(self.teacher, "budget_exhausted", False):
                break
            result.rounds += 1
            contexts = [self._context() for _ in range(s.prompts_per_round)]
            replies = self.teacher.complete([encode_prompt(self.header, c) for c in contexts])
            fresh = []
            for context, reply in zip(contexts, replies):
                for task in self._parse(reply, len(context)):
                    rule = self.filter.check(task["instruction"])
                    if rule is not None:
                        self._drop(rule, task["instruction"])
                        continue
                    self.filter.add(task["instruction"])
                    fresh.append(task)
            if s.instances == "separate" and fresh:
                fresh = self._add_instances(fresh)
            room = s.num_instructions - len(result.records)
            for task in fresh[room:]:
                self._drop("over_target", task["instruction"])
            result.records.extend(fresh[:room])
        return result


def generate_instructions(section: SelfInstructSection, teacher: Teacher) -> SelfInstructResult:
    """Run the loop to ``num_instructions`` kept tasks (or ``max_rounds`` / the teacher's request budget).

    Records are Alpaca rows ``{instruction, input, output}``; a malformed seed file raises UserError naming the
    line (:func:`rlhf.collect.instructions.load_seed_tasks`).
    """
    seed_tasks = load_seed_tasks(resolve_path(section.seed_tasks))
    return _Loop(section, teacher, seed_tasks).run()
