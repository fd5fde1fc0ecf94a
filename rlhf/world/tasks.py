"""The task world: small instruction tasks with objectively checkable answers, and imperfect demonstrations.

AlpacaFarm (Dubois et al. 2023, "AlpacaFarm: A Simulation Framework for Methods that Learn from Human
Feedback", arXiv:2305.14387) replaces human annotators with programmatic ones so every RLHF stage can be
measured cheaply. This world goes one step further: each prompt has exactly one correct answer, so an
oracle (``rlhf.world.oracle``) scores any response, and simulated annotators (``rlhf.world.annotators``)
derive noisy preferences from it.

Families of the default world (``DEFAULT_FAMILIES``; each prompt is an instruction plus an input):
  first/last   ``Write the first letter of the list.`` ``q m c``   -> ``q``
  count        ``Count the letters in the list.``     ``q m c``   -> ``3``
  sort         ``Sort the digits from smallest to largest.`` ``6 2 3`` -> ``2 3 6``
  max/min      ``Write the largest digit.``           ``6 2 3``   -> ``6``
  reverse      ``Reverse the order of the letters.``  ``b x h``   -> ``h x b``
(``upper`` and ``repeat`` exist too, outside the default: see DEFAULT_FAMILIES.)

Answer format (what the oracle accepts; leading/trailing whitespace is ignored):
  * list answers: the items separated by single spaces, nothing else: ``h x b``, ``2 3 6``;
  * single answers: the bare item: ``q``, ``3``.

Demonstrations are imperfect on purpose, as human ones are: a ``defect_rate`` share of them carry one defect.
Every defect is a choice at one point of the response (the first token, or the token after the last answer
item), so the SFT policy learns a mixture that still puts mass on the clean answer, and PPO can remove the
defect by shifting that mass rather than by learning anything new:
  * ``ramble``   the answer, then a newline and a pleasantry (``2 3 6\nHope this helps!``);
  * ``preamble`` a lead-in before the answer (``The answer is: q``);
  * ``format``   list items joined by ``, `` instead of spaces (``2, 3, 6``), or a single answer with a period;
  * ``wrong``    the family's typical mistake (count: one too many; first/last: the neighbouring item;
                 max/min: the runner-up; sort: descending; reverse: the input unchanged).

Defects are habits of the demonstrators, concentrated on some families (``HABITS``): there most demos
(up to MAX_HABIT_RATE = 60%) share one defect with one fixed wording; the rest of the budget is spread
over the other families. Spread evenly, no defect would be the most likely continuation anywhere, so
greedy decoding of the SFT policy would hide them; concentrated, the habit is the SFT policy's likeliest
answer there, and 40% of its samples are clean answers for the reward model to prefer and PPO to
reinforce. Under sampling the SFT policy's accuracy is about (1 - defect_rate) x its task skill.

Items are single letters/digits separated by spaces, so a byte-level BPE with GPT-2 pre-tokenization
keeps each item one token: the model works on tokens, never inside them.
"""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from dataclasses import dataclass, field

from rlhf.errors import UserError

DEFECT_KINDS: tuple[str, ...] = ("ramble", "preamble", "format", "wrong")
# One habit per sloppy family. Habits sit on the families a tiny model learns first (which digits are
# there, how many letters: no position to track), so after a short SFT its clean answers there are
# right and PPO's gain shows. Habits are visible on the surface: with "wrong" as a habit (tried on
# `min`), a reward model trained from the tiny SFT policy judged those pairs near chance.
HABITS: dict[str, str] = {"sort": "ramble", "max": "preamble", "min": "format", "count": "ramble"}
# The most a habit family's demos are defective: above 0.5 the defect is the SFT policy's most likely
# answer, and the rest are clean answers for PPO to find and reinforce.
MAX_HABIT_RATE = 0.6
# Defect kinds for the families without a habit, which get the budget the habit families cannot hold
# (at the default defect_rate 0.4 with 7 families: about 13% of their demos).
DEFAULT_DEFECT_WEIGHTS: dict[str, float] = {"ramble": 0.3, "preamble": 0.3, "format": 0.3, "wrong": 0.1}

RAMBLES: tuple[str, ...] = ("Hope this helps!", "Let me know if you need more.", "That was easy.")
PREAMBLES: tuple[str, ...] = ("The answer is: ", "Sure! ", "Here you go: ")

# Short, common words: each is one BPE token in any English-trained byte-level vocabulary.
WORDS: tuple[str, ...] = (
    "sun", "cat", "dog", "tree", "book", "fish", "bird", "cake", "milk", "rain",
    "star", "moon", "ship", "door", "lamp", "road", "king", "ball", "song", "fire",
    "leaf", "rock", "ring", "hat", "cup", "box", "pen", "egg", "bed", "car",
    "bus", "map", "key", "sea", "sky", "day", "hand", "bell", "coat", "farm",
)  # fmt: skip

Args = dict[str, object]


@dataclass(frozen=True)
class TaskFamily:
    """One kind of task: how to draw its arguments, show them, answer them, and get them wrong.

    ``answer_items`` and ``wrong_items`` return the answer as a list of items; the well-formed answer is
    the items joined by single spaces.
    """

    name: str
    instruction: str
    sample_args: Callable[[random.Random], Args]
    render_input: Callable[[Args], str]
    answer_items: Callable[[Args], list[str]]
    wrong_items: Callable[[Args], list[str]]


def _letters(lo: int, hi: int) -> Callable[[random.Random], Args]:
    """Distinct letters, so that 'the neighbouring item' and 'reversed' always differ from the answer."""

    def sample(rng: random.Random) -> Args:
        return {"items": rng.sample(string.ascii_lowercase, rng.randint(lo, hi))}

    return sample


def _digits(lo: int, hi: int) -> Callable[[random.Random], Args]:
    def sample(rng: random.Random) -> Args:
        return {"items": [str(d) for d in rng.sample(range(10), rng.randint(lo, hi))]}

    return sample


def _word_and_times(rng: random.Random) -> Args:
    return {"word": rng.choice(WORDS), "times": rng.randint(2, 4)}


def _spaced(args: Args) -> str:
    return " ".join(args["items"])  # type: ignore[arg-type]


def _items(args: Args) -> list[str]:
    return list(args["items"])  # type: ignore[call-overload]


FAMILIES: dict[str, TaskFamily] = {
    f.name: f
    for f in (
        TaskFamily(
            "reverse", "Reverse the order of the letters.", _letters(2, 3), _spaced,
            lambda a: _items(a)[::-1], _items,
        ),
        TaskFamily(
            "sort", "Sort the digits from smallest to largest.", _digits(3, 4), _spaced,
            lambda a: sorted(_items(a)), lambda a: sorted(_items(a), reverse=True),
        ),
        TaskFamily(
            "max", "Write the largest digit.", _digits(3, 5), _spaced,
            lambda a: sorted(_items(a))[-1:], lambda a: sorted(_items(a))[-2:-1],
        ),
        TaskFamily(
            "min", "Write the smallest digit.", _digits(3, 5), _spaced,
            lambda a: sorted(_items(a))[:1], lambda a: sorted(_items(a))[1:2],
        ),
        TaskFamily(
            "first", "Write the first letter of the list.", _letters(3, 5), _spaced,
            lambda a: _items(a)[:1], lambda a: _items(a)[1:2],
        ),
        TaskFamily(
            "last", "Write the last letter of the list.", _letters(3, 5), _spaced,
            lambda a: _items(a)[-1:], lambda a: _items(a)[-2:-1],
        ),
        TaskFamily(
            "count", "Count the letters in the list.", _letters(2, 7), _spaced,
            lambda a: [str(len(_items(a)))], lambda a: [str(len(_items(a)) + 1)],
        ),
        TaskFamily(
            "upper", "Write the letters in upper case.", _letters(1, 3), _spaced,
            lambda a: [c.upper() for c in _items(a)], _items,
        ),
        TaskFamily(
            "repeat", "Repeat the word the given number of times.", _word_and_times,
            lambda a: f"{a['word']}, {a['times']}",
            lambda a: [str(a["word"])] * int(a["times"]),  # type: ignore[call-overload]
            lambda a: [str(a["word"])] * (int(a["times"]) + 1),  # type: ignore[call-overload]
        ),
    )
}  # fmt: skip

# The families of the default world, chosen by SFT learning curves of the tiny-llama shape from scratch
# (batch 16, lr 1e-3; content accuracy on held-out prompts, defects aside): count, max, min and sort
# were at 0.65-1.0 after 1,000 steps in each run; first, last and reverse need position tracking and got
# there between ~700 and 2,000 steps depending on the run; upper and repeat (still defined, for
# ``families=``) stayed below 0.6 at 1,000 steps. A family the SFT policy cannot solve only adds
# content pairs that a reward model initialised from it cannot judge either.
DEFAULT_FAMILIES: tuple[str, ...] = ("first", "last", "count", "sort", "max", "min", "reverse")


def family_of(task: dict) -> TaskFamily:
    """The family a task dict ``{"family": ..., "args": ...}`` belongs to; UserError if unknown."""
    name = task.get("family") if isinstance(task, dict) else None
    if name not in FAMILIES:
        raise UserError(f"task {task!r}: 'family' must be one of {sorted(FAMILIES)}")
    if not isinstance(task.get("args"), dict):
        raise UserError(f"task {task!r}: 'args' must be a mapping")
    return FAMILIES[name]


def expected_answer(task: dict) -> str:
    """The one well-formed correct response to a task."""
    return " ".join(family_of(task).answer_items(task["args"]))


def defective_answer(task: dict, kind: str, rng: random.Random | None = None) -> str:
    """A response with one defect of ``kind`` (see the module docstring); never equal to the answer.

    ``rng`` picks the wording of a ramble or preamble; None means the first (habitual) wording.
    """
    family = family_of(task)
    items = family.answer_items(task["args"])
    answer = " ".join(items)
    if kind == "ramble":
        return f"{answer}\n{rng.choice(RAMBLES) if rng else RAMBLES[0]}"
    if kind == "preamble":
        return f"{rng.choice(PREAMBLES) if rng else PREAMBLES[0]}{answer}"
    if kind == "format":
        return ", ".join(items) if len(items) > 1 else f"{answer}."
    if kind == "wrong":
        return " ".join(family.wrong_items(task["args"]))
    raise UserError(f"defect kind {kind!r}: must be one of {list(DEFECT_KINDS)}")


def _parse_input(family: TaskFamily, line: str) -> Args | None:
    """The args whose rendered input is exactly ``line``, or None."""
    if family.name == "repeat":
        word, _, times = line.partition(", ")
        args: Args = {"word": word, "times": int(times) if times.isdigit() else -1}
    else:
        items = line.split(" ")
        if not all(len(item) == 1 and item.isalnum() for item in items):
            return None
        args = {"items": items}
    try:
        return args if family.render_input(args) == line and family.answer_items(args) else None
    except (TypeError, ValueError, IndexError):
        return None


def task_from_text(text: str) -> dict:
    """Recover the task from a prompt's text: the family's instruction, then, on a later line, its input.

    For programmatic rewards, which get prompt texts rather than rows: PPO's ``instruction\n\ninput``,
    or any template (Alpaca's ``### Input:`` lines, a chat turn) that keeps both verbatim on their own lines.
    """
    for family in FAMILIES.values():
        start = text.find(family.instruction)
        if start < 0:
            continue
        for line in text[start + len(family.instruction):].splitlines():
            args = _parse_input(family, line.strip())
            if args is not None:
                return {"family": family.name, "args": args}
    raise UserError(f"prompt {text[:80]!r}: no task-world instruction and input in it")


def prompt_row(task: dict) -> dict:
    """An Alpaca-style prompt row, carrying the task so that the oracle can check answers."""
    family = family_of(task)
    return {"instruction": family.instruction, "input": family.render_input(task["args"]), "task": task}


@dataclass
class World:
    """Prompts and demonstrations of one seed.

    ``demos`` are Alpaca rows ``{"instruction", "input", "output"}``; ``demo_tasks[i]`` and
    ``demo_defects[i]`` (a kind from DEFECT_KINDS, or None when clean) describe ``demos[i]``.
    Held-out prompts share no (instruction, input) with train prompts or demonstrations.
    """

    train_prompts: list[dict]
    heldout_prompts: list[dict]
    demos: list[dict]
    demo_tasks: list[dict] = field(default_factory=list)
    demo_defects: list[str | None] = field(default_factory=list)


def _key(row: dict) -> tuple[str, str]:
    return row["instruction"], row["input"]


def _balanced_families(n: int, names: list[str], rng: random.Random) -> list[str]:
    """n family names, as even as n allows, in random order."""
    out = [names[i % len(names)] for i in range(n)]
    rng.shuffle(out)
    return out


def _draw_prompt(name: str, rng: random.Random, exclude: set[tuple[str, str]]) -> dict:
    """A prompt of family ``name`` whose key is not in ``exclude`` (rejection sampling, bounded)."""
    family = FAMILIES[name]
    for _ in range(10_000):
        row = prompt_row({"family": name, "args": family.sample_args(rng)})
        if _key(row) not in exclude:
            return row
    raise UserError(f"task family {name!r}: too few distinct prompts for the requested sizes")


def _draw_unique(names: list[str], rng: random.Random, exclude: set[tuple[str, str]]) -> list[dict]:
    rows = []
    for name in names:
        row = _draw_prompt(name, rng, exclude)
        exclude.add(_key(row))
        rows.append(row)
    return rows


def _fill(counts: dict[str, int], sizes: dict[str, int], families: list[str], budget: int, cap: float) -> int:
    """Add up to ``budget`` defects to ``families``, one at a time to the least defective one below
    ``cap``, so that rates stay as even as whole demos allow. Returns the budget left over."""
    while budget > 0:
        open_ = [f for f in families if counts[f] + 1 <= cap * sizes[f]]
        if not open_:
            break
        counts[min(open_, key=lambda f: (counts[f] + 1) / sizes[f])] += 1
        budget -= 1
    return budget


def _defect_counts(sizes: dict[str, int], defect_rate: float, habits: dict[str, str]) -> dict[str, int]:
    """Exactly round(defect_rate * n_demos) defective demos per family: habit families first, up to
    MAX_HABIT_RATE; then the other families; then the habit families beyond their cap."""
    counts = dict.fromkeys(sizes, 0)
    budget = round(defect_rate * sum(sizes.values()))
    habitual = [f for f in sizes if f in habits]
    others = [f for f in sizes if f not in habits]
    budget = _fill(counts, sizes, habitual, budget, MAX_HABIT_RATE)
    budget = _fill(counts, sizes, others, budget, 1.0)
    _fill(counts, sizes, habitual, budget, 1.0)
    return counts


def _defect_plan(
    demo_families: list[str], defect_rate: float, habits: dict[str, str], weights: dict[str, float],
    rng: random.Random,
) -> list[tuple[str | None, bool]]:
    """Per demo, (defect kind or None, whether it is a habit with its fixed wording)."""
    sizes = {f: demo_families.count(f) for f in dict.fromkeys(demo_families)}
    counts = _defect_counts(sizes, defect_rate, habits)
    kinds, kind_weights = list(weights), list(weights.values())
    per_family: dict[str, list[tuple[str | None, bool]]] = {}
    for f, n in sizes.items():
        if f in habits:
            flags = [(habits[f], True)] * counts[f]
        else:
            flags = [(k, False) for k in rng.choices(kinds, kind_weights, k=counts[f])]
        flags += [(None, False)] * (n - counts[f])
        rng.shuffle(flags)
        per_family[f] = flags
    return [per_family[f].pop() for f in demo_families]


def make_world(
    seed: int,
    n_train: int,
    n_heldout: int,
    defect_rate: float,
    n_demos: int = 2000,
    habits: dict[str, str] | None = None,
    defect_weights: dict[str, float] | None = None,
    families: list[str] | None = None,
) -> World:
    """Build the world of ``seed``: the same arguments always give the same world.

    Prompts and demos are balanced across ``families`` (default: DEFAULT_FAMILIES). ``habits`` maps a family to its
    habitual defect (default HABITS; ``{}`` spreads defects over all families with ``defect_weights``).
    Held-out prompts are drawn first and are disjoint from train prompts and from demonstration prompts;
    train prompts are distinct; demonstration prompts may repeat and may coincide with train prompts
    (as Alpaca's SFT and RL prompt pools do).
    """
    if not 0.0 <= defect_rate <= 1.0:
        raise UserError(f"defect_rate {defect_rate}: must be in [0, 1]")
    if min(n_train, n_heldout, n_demos) < 0:
        raise UserError("world sizes n_train, n_heldout and n_demos must be >= 0")
    names = list(families or DEFAULT_FAMILIES)
    if not names or set(names) - set(FAMILIES):
        raise UserError(f"families {names}: must be a non-empty subset of {sorted(FAMILIES)}")
    habits = {f: k for f, k in (HABITS if habits is None else habits).items() if f in names}
    weights = dict(defect_weights or DEFAULT_DEFECT_WEIGHTS)
    if set(habits.values()) - set(DEFECT_KINDS) or set(weights) - set(DEFECT_KINDS):
        raise UserError(f"habits {habits} / defect_weights {weights}: kinds must be from {list(DEFECT_KINDS)}")
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise UserError(f"defect_weights {weights}: weights must be >= 0 and not all 0")

    rng = random.Random(seed)
    heldout_keys: set[tuple[str, str]] = set()
    heldout = _draw_unique(_balanced_families(n_heldout, names, rng), rng, heldout_keys)
    train = _draw_unique(_balanced_families(n_train, names, rng), rng, set(heldout_keys))

    world = World(train_prompts=train, heldout_prompts=heldout, demos=[])
    demo_families = _balanced_families(n_demos, names, rng)
    for name, (defect, habitual) in zip(
        demo_families, _defect_plan(demo_families, defect_rate, habits, weights, rng)
    ):
        row = _draw_prompt(name, rng, heldout_keys)
        task = row["task"]
        if defect is None:
            output = expected_answer(task)
        else:
            output = defective_answer(task, defect, None if habitual else rng)
        world.demos.append({"instruction": row["instruction"], "input": row["input"], "output": output})
        world.demo_tasks.append(task)
        world.demo_defects.append(defect)
    return world
