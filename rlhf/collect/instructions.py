"""Self-instruct style instruction generation: prompt encoding, parsing the teacher's reply, filtering.

Follows Stanford Alpaca's ``generate_instruction.py`` (tatsu-lab/stanford_alpaca), itself a simplification of
Self-Instruct (Wang et al. 2022, arXiv:2212.10560; yizhongw/self-instruct): a few seed tasks are written into a
numbered prompt, the teacher continues the numbering with new tasks, and the new instructions are kept only if they
pass cheap heuristics and are not too similar (ROUGE-L > 0.7) to any instruction already kept.
"""

from __future__ import annotations

import json
import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from rouge_score import rouge_scorer, tokenizers

from rlhf.errors import UserError

NO_INPUT = "<noinput>"

# Self-Instruct's list of words that point at things a text-only model cannot do (see, draw, open files).
DEFAULT_BANNED_KEYWORDS: tuple[str, ...] = (
    "image", "images", "graph", "graphs", "picture", "pictures", "file", "files",
    "map", "maps", "draw", "plot", "go to",
)
# Both Self-Instruct and Alpaca drop these: the teacher tends to turn any task into "write a program that ...".
DEFAULT_BANNED_PREFIXES: tuple[str, ...] = ("Write a program",)

_FIELD_PATTERN = re.compile(r"(\d+)\.\s+(Instruction|Input|Output):")


def _normalize_instruction(instruction: str) -> str:
    return re.sub(r"\s+", " ", instruction).strip()


def encode_prompt(prompt_header: str, tasks: Sequence[dict]) -> str:
    """The generation prompt: the header, then each task numbered, then the open slot for the next one.

    Alpaca's format: ``###\\n1. Instruction: ...\\n1. Input:\\n...\\n1. Output:\\n...\\n`` per task, an empty input
    written as ``<noinput>``, and the prompt ends with ``###\\n{len(tasks)+1}. Instruction:`` so that the
    teacher's reply starts with the text of the next instruction.
    """
    parts = [prompt_header + "\n"]
    for number, task in enumerate(tasks, start=1):
        instruction = _normalize_instruction(task["instruction"]).rstrip(":")
        task_input = task.get("input", "") or NO_INPUT
        parts.append(
            f"###\n{number}. Instruction: {instruction}\n"
            f"{number}. Input:\n{task_input}\n"
            f"{number}. Output:\n{task['output']}\n"
        )
    parts.append(f"###\n{len(tasks) + 1}. Instruction:")
    return "".join(parts)


def _parse_item(item: str) -> dict | None:
    """One ``N. Instruction: .. N. Input: .. N. Output: ..`` block, or None when it does not have that shape."""
    pieces = _FIELD_PATTERN.split(item)
    # split() gives [prefix, num, label, text, num, label, text, num, label, text] for a well-formed item.
    if len(pieces) != 10 or pieces[0].strip():
        return None
    numbers, labels, texts = pieces[1::3], pieces[2::3], pieces[3::3]
    if labels != ["Instruction", "Input", "Output"] or len(set(numbers)) != 1:
        return None
    instruction, task_input, output = (t.strip() for t in texts)
    if not instruction or not output:
        return None
    if task_input.lower() == NO_INPUT:
        task_input = ""
    return {"instruction": instruction, "input": task_input, "output": output}


def parse_instructions(text: str, num_prompt_tasks: int, truncated: bool = False) -> list[dict]:
    """The tasks the teacher wrote after a prompt made by :func:`encode_prompt` with ``num_prompt_tasks`` tasks.

    As Alpaca's ``post_process_gpt3_response``: the reply continues ``{num_prompt_tasks+1}. Instruction:``, items are
    separated by ``###``, and an item must hold exactly one Instruction, Input and Output field, in that order, under
    one number; anything else is skipped. ``truncated=True`` (the reply stopped at max_tokens, finish_reason
    "length") drops the last item, which is likely cut off. Unlike Alpaca, the numbers need not follow on from the
    prompt (a teacher that restarts at "1." still yields tasks), and the content filters live in
    :class:`InstructionFilter` rather than here. Returns ``[{"instruction", "input", "output"}]``.
    """
    if not text or not text.strip():
        return []
    items = f"{num_prompt_tasks + 1}. Instruction:{text}".split("###")
    if truncated:
        items = items[:-1]
    return [task for task in map(_parse_item, items) if task is not None]


def _contains_word(word: str, text: str) -> bool:
    return re.search(rf"\b{re.escape(word)}\b", text, flags=re.IGNORECASE) is not None


class InstructionFilter:
    """Decides which generated instructions to keep, remembering the kept ones for the similarity check.

    Rules, cheapest first (the name is what :meth:`check` returns and the key in :attr:`drops`):
    ``empty``; ``too_short`` / ``too_long`` (fewer than ``min_words`` or more than ``max_words`` whitespace words;
    bounds inclusive, where Alpaca kept only more than 3 words); ``banned_keyword`` (a whole word or phrase, any
    case); ``banned_prefix``; ``starts_with_punctuation``; ``non_english_start`` (first character not ASCII);
    ``duplicate`` (same text as a kept one, ignoring case and whitespace); ``similar`` (ROUGE-L F1 above
    ``rouge_threshold`` against any kept instruction, with the ``rouge-score`` tokenizer and no stemming, as Alpaca).

    Usage: ``if f.check(text) is None: f.add(text)``. ``check`` counts the drop in :attr:`drops`.
    """

    def __init__(
        self,
        existing: Iterable[str] = (),
        rouge_threshold: float = 0.7,
        banned_keywords: Iterable[str] = DEFAULT_BANNED_KEYWORDS,
        banned_prefixes: Iterable[str] = DEFAULT_BANNED_PREFIXES,
        min_words: int = 3,
        max_words: int = 150,
    ) -> None:
        self.rouge_threshold = rouge_threshold
        self.banned_keywords = tuple(banned_keywords)
        self.banned_prefixes = tuple(banned_prefixes)
        self.min_words = min_words
        self.max_words = max_words
        self.drops: Counter[str] = Counter()
        self.kept: list[str] = []
        self._tokenizer = tokenizers.DefaultTokenizer(use_stemmer=False)
        self._kept_tokens: list[list[str]] = []
        self._kept_token_counts: list[Counter[str]] = []
        self._kept_keys: set[str] = set()
        for instruction in existing:
            self.add(instruction)

    def _rule_violated(self, instruction: str) -> str | None:
        text = _normalize_instruction(instruction)
        if not text:
            return "empty"
        num_words = len(text.split())
        if num_words < self.min_words:
            return "too_short"
        if num_words > self.max_words:
            return "too_long"
        if any(_contains_word(word, text) for word in self.banned_keywords):
            return "banned_keyword"
        if text.startswith(self.banned_prefixes):
            return "banned_prefix"
        if text[0] in string.punctuation:
            return "starts_with_punctuation"
        if not text[0].isascii():
            return "non_english_start"
        if text.lower() in self._kept_keys:
            return "duplicate"
        if self.max_similarity(text) > self.rouge_threshold:
            return "similar"
        return None

    def check(self, instruction: str) -> str | None:
        """The name of the first rule that drops ``instruction`` (and count it), or None to keep it."""
        rule = self._rule_violated(instruction)
        if rule is not None:
            self.drops[rule] += 1
        return rule

    def add(self, instruction: str) -> None:
        """Remember a kept instruction: later ones are compared against it."""
        text = _normalize_instruction(instruction)
        tokens = self._tokenizer.tokenize(text)
        self.kept.append(text)
        self._kept_keys.add(text.lower())
        self._kept_tokens.append(tokens)
        self._kept_token_counts.append(Counter(tokens))

    def max_similarity(self, instruction: str) -> float:
        """The highest ROUGE-L F1 between ``instruction`` and any kept instruction (0.0 when none is kept).

        The LCS of two token lists is at most their multiset overlap, so pairs whose F1 upper bound
        ``2*overlap/(m+n)`` cannot beat the best so far skip the quadratic LCS; the result is exact.
        """
        tokens = self._tokenizer.tokenize(instruction)
        if not tokens:
            return 0.0
        counts = Counter(tokens)
        best = 0.0
        for kept_tokens, kept_counts in zip(self._kept_tokens, self._kept_token_counts):
            if not kept_tokens:
                continue
            overlap = sum((counts & kept_counts).values())
            if 2 * overlap / (len(tokens) + len(kept_tokens)) <= best:
                continue
            # _score_lcs is rouge-score's own ROUGE-L on pre-tokenized text; Alpaca calls it the same way to
            # avoid re-tokenizing every kept instruction for each candidate.
            best = max(best, rouge_scorer._score_lcs(kept_tokens, tokens).fmeasure)
        return best

    def filter_tasks(self, tasks: Iterable[dict]) -> list[dict]:
        """The tasks whose instruction passes :meth:`check`, each added as it is kept (so in-batch near-duplicates go)."""
        kept = []
        for task in tasks:
            if self.check(task["instruction"]) is None:
                self.add(task["instruction"])
                kept.append(task)
        return kept


def _seed_error(path: Path, line_number: int, problem: str) -> UserError:
    return UserError(f"{path}:{line_number}: {problem}")


def _validate_seed_task(task: object, path: Path, line_number: int) -> dict:
    if not isinstance(task, dict):
        raise _seed_error(path, line_number, "a seed task must be a JSON object")
    for key, kind in (("id", str), ("name", str), ("instruction", str), ("instances", list)):
        if not isinstance(task.get(key), kind):
            raise _seed_error(path, line_number, f"key '{key}' missing or not a {kind.__name__}")
    if not task["instruction"].strip():
        raise _seed_error(path, line_number, "key 'instruction' is empty")
    if not isinstance(task.get("is_classification", False), bool):
        raise _seed_error(path, line_number, "key 'is_classification' is not a boolean")
    if not task["instances"]:
        raise _seed_error(path, line_number, "key 'instances' is empty")
    for instance in task["instances"]:
        if not isinstance(instance, dict) or not all(
            isinstance(instance.get(k), str) for k in ("input", "output")
        ):
            raise _seed_error(path, line_number, "each of 'instances' needs string 'input' and 'output'")
    return task


def load_seed_tasks(path: str | Path) -> list[dict]:
    """Seed tasks in the Self-Instruct format, one JSON object a line:
    ``{id, name, instruction, instances: [{input, output}], is_classification}``. Blank lines are skipped.

    Raises UserError naming ``FILE:LINE`` for a line that is not such an object.
    """
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as err:
        raise UserError(f"{path}: cannot read seed tasks ({err.strerror})") from err
    tasks = []
    for line_number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            task = json.loads(line)
        except json.JSONDecodeError as err:
            raise _seed_error(path, line_number, f"not valid JSON ({err.msg})") from err
        tasks.append(_validate_seed_task(task, path, line_number))
    if not tasks:
        raise UserError(f"{path}: no seed tasks")
    return tasks


def seed_examples(tasks: Iterable[dict]) -> list[dict]:
    """Prompt examples from seed tasks: the instruction with its first instance, as Alpaca samples them."""
    return [
        {"instruction": t["instruction"], "input": t["instances"][0]["input"], "output": t["instances"][0]["output"]}
        for t in tasks
    ]
