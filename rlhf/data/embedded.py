"""The project's own small datasets, generated from templates written here (nothing copied from anywhere).

``python -m rlhf.data.embedded`` writes, deterministically from SEED:
- data/instructions.jsonl: ~400 Alpaca-format records (instruction, input, output) about numbers, words,
  lists and short how-tos, with varied phrasing; every answer is computed, so it is correct;
- data/conversations.json: ~100 ShareGPT-format multi-turn conversations, some with a ``system`` field;
then builds data/tokenizer from them. Small enough that a tiny model's SFT loss visibly falls.
"""

from __future__ import annotations

import json
import os
import random
from typing import Callable

from rlhf.data.io import write_jsonl
from rlhf.paths import DATA_DIR

SEED = 20240501
N_INSTRUCTIONS = 400
N_CONVERSATIONS = 100
INSTRUCTIONS_PATH = DATA_DIR / "instructions.jsonl"
CONVERSATIONS_PATH = DATA_DIR / "conversations.json"

WORDS = ("apple", "river", "garden", "window", "pencil", "bridge", "candle", "forest", "rabbit", "silver",
         "planet", "button", "castle", "ladder", "orange", "pepper", "rocket", "spoon", "tiger", "wagon",
         "yellow", "basket", "cloud", "dragon", "engine", "feather", "guitar", "harbor", "island", "jacket",
         "kettle", "lemon", "mirror", "needle", "ocean", "pillow", "quiet", "saddle", "thunder", "violin")
OPPOSITES = {"hot": "cold", "big": "small", "fast": "slow", "early": "late", "happy": "sad", "light": "dark",
             "open": "closed", "full": "empty", "high": "low", "strong": "weak", "young": "old", "wet": "dry",
             "loud": "quiet", "hard": "soft", "rich": "poor", "near": "far", "thick": "thin", "up": "down"}
PLURALS = {"cat": "cats", "box": "boxes", "baby": "babies", "bus": "buses", "leaf": "leaves", "child": "children",
           "mouse": "mice", "tooth": "teeth", "city": "cities", "dish": "dishes", "knife": "knives",
           "foot": "feet", "story": "stories", "church": "churches", "wolf": "wolves", "man": "men"}
CATEGORIES = {"animal": ("horse", "eagle", "salmon", "lion", "frog", "owl", "goat"),
              "fruit": ("banana", "cherry", "mango", "plum", "grape", "pear", "peach"),
              "color": ("blue", "green", "purple", "scarlet", "brown", "violet", "teal")}
# task -> (steps, how long it takes)
HOWTOS = {
    "boil an egg": (["Put the egg in a small pot and cover it with cold water.", "Bring the water to a boil.",
                     "Let it simmer for nine minutes.", "Move the egg to cold water, then peel it."], "about 15 minutes"),
    "make a cup of tea": (["Boil fresh water.", "Put a tea bag in a cup.", "Pour the hot water over it.",
                           "Wait three to five minutes, then remove the bag."], "about 5 minutes"),
    "plant a seed": (["Fill a small pot with soil.", "Press the seed about one finger deep.",
                      "Cover it and water gently.", "Keep the pot in a sunny place and the soil moist."], "a few minutes"),
    "tie a shoelace": (["Cross the two laces and pull one under the other.", "Make a loop with one lace.",
                        "Wrap the other lace around the loop.", "Push it through the gap and pull both loops tight."],
                       "under a minute"),
    "wash your hands": (["Wet your hands with clean water.", "Rub them with soap for twenty seconds.",
                         "Rinse off all the soap.", "Dry them with a clean towel."], "about 30 seconds"),
    "make a paper airplane": (["Fold a sheet of paper in half lengthwise and unfold it.",
                               "Fold the top corners to the center line.", "Fold the new edges to the center again.",
                               "Fold the plane in half and fold down both wings."], "about 3 minutes"),
    "study for a test": (["Make a list of the topics.", "Study one topic at a time in short sessions.",
                          "Test yourself with practice questions.", "Sleep well the night before."], "a few days"),
    "save money": (["Write down what you spend each week.", "Pick one cost you can cut.",
                    "Move a fixed amount to savings on payday.", "Check your progress every month."], "a few months"),
    "clean a window": (["Mix water with a little dish soap.", "Wipe the glass with a soft cloth.",
                        "Dry it with a squeegee from top to bottom.", "Polish any streaks with a dry cloth."],
                       "about 10 minutes"),
    "start running": (["Get comfortable shoes.", "Begin with one minute of running and one of walking.",
                       "Repeat that for twenty minutes, three times a week.", "Run a little longer each week."],
                      "a few weeks"),
    "write a thank-you note": (["Greet the person by name.", "Say what you are thankful for.",
                                "Add one sentence about why it mattered.", "Close warmly and sign your name."],
                               "about 10 minutes"),
    "cook rice": (["Rinse one cup of rice.", "Add it to a pot with two cups of water.",
                   "Bring it to a boil, then cover and simmer for fifteen minutes.",
                   "Let it rest for five minutes and fluff it with a fork."], "about 25 minutes"),
}
SYSTEMS = ("You are a helpful assistant.", "You are a patient tutor who answers briefly.",
           "You are a friendly assistant. Keep answers short and correct.")

Record = tuple[str, str, str]  # instruction, input, output


def _pick(rng: random.Random, options: tuple[str, ...] | list[str], **values: object) -> str:
    return rng.choice(options).format(**values)


def _parity(rng: random.Random) -> Record:
    n = rng.randint(1, 999)
    kind = "even" if n % 2 == 0 else "odd"
    q = _pick(rng, ("Is {n} even or odd?", "Tell me whether {n} is an even or an odd number.",
                    "Decide if the number {n} is even or odd."), n=n)
    return q, "", _pick(rng, ("{n} is {kind}.", "The number {n} is {kind}, since {n} divided by 2 leaves a remainder "
                                               "of {r}."), n=n, kind=kind, r=n % 2)


def _arithmetic(rng: random.Random) -> Record:
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    if rng.random() < 0.5:
        if rng.random() < 0.5:
            return "Add the two numbers.", f"{a}, {b}", f"{a} + {b} = {a + b}"
        q = _pick(rng, ("What is {a} plus {b}?", "Add {a} and {b}.", "What do you get when you add {a} to {b}?"),
                  a=a, b=b)
        return q, "", f"{a} plus {b} is {a + b}."
    a, b = a % 13 + 2, b % 13 + 2
    if rng.random() < 0.5:
        return "Multiply the two numbers.", f"{a} and {b}", f"{a} x {b} = {a * b}"
    q = _pick(rng, ("What is {a} times {b}?", "Multiply {a} by {b}.", "What is the product of {a} and {b}?"), a=a, b=b)
    return q, "", f"{a} times {b} is {a * b}."


def _number_fact(rng: random.Random) -> Record:
    n = rng.randint(2, 9999)
    kind = rng.randrange(4)
    if kind == 0:
        m = rng.randint(2, 9999)
        q = _pick(rng, ("Which is larger, {n} or {m}?", "Which number is bigger: {n} or {m}?"), n=n, m=m)
        if n == m:
            return q, "", f"They are equal: both are {n}."
        return q, "", f"{max(n, m)} is larger than {min(n, m)}."
    if kind == 1:
        n = n % 40 + 1
        q = _pick(rng, ("What is the square of {n}?", "What is {n} squared?", "Compute {n} times itself."), n=n)
        return q, "", f"The square of {n} is {n * n}."
    if kind == 2:
        q = _pick(rng, ("What number comes after {n}?", "What is the next whole number after {n}?"), n=n)
        return q, "", f"The number after {n} is {n + 1}."
    q = _pick(rng, ("How many digits does {n} have?", "Count the digits in the number {n}."), n=n)
    return q, "", f"{n} has {len(str(n))} digits."


def _word_fact(rng: random.Random) -> Record:
    word = rng.choice(WORDS)
    kind = rng.randrange(6)
    if kind == 0:
        return (_pick(rng, ("Reverse the letters of the word.", "Write this word backwards.")), word, word[::-1])
    if kind == 1:
        q = _pick(rng, ("How many letters are in the word '{w}'?", "Count the letters in '{w}'."), w=word)
        return q, "", f"The word '{word}' has {len(word)} letters."
    if kind == 2:
        return _pick(rng, ("Write the word in capital letters.", "Convert the word to uppercase.")), word, word.upper()
    if kind == 3:
        w, o = rng.choice(sorted(OPPOSITES.items()))
        q = _pick(rng, ("What is the opposite of '{w}'?", "Give an antonym for the word '{w}'."), w=w)
        return q, "", f"The opposite of '{w}' is '{o}'."
    if kind == 4:
        w, p = rng.choice(sorted(PLURALS.items()))
        return (_pick(rng, ("Give the plural form of the noun.", "Write the plural of this word.")), w, p)
    category = rng.choice(sorted(CATEGORIES))
    item = rng.choice(CATEGORIES[category])
    q = _pick(rng, ("Is {x} an animal, a fruit, or a color?", "Classify '{x}' as an animal, a fruit or a color."),
              x=item)
    return q, "", f"{item.capitalize()} is a{'n' if category[0] in 'aeiou' else ''} {category}."


def _list_fact(rng: random.Random) -> Record:
    numbers = rng.sample(range(1, 100), rng.randint(3, 7))
    shown = ", ".join(map(str, numbers))
    kind = rng.randrange(5)
    if kind == 0:
        return (_pick(rng, ("Sort these numbers from smallest to largest.", "Put the numbers in ascending order.")),
                shown, ", ".join(map(str, sorted(numbers))))
    if kind == 1:
        return _pick(rng, ("Find the largest number in the list.", "Which number in the list is the biggest?")), \
            shown, f"The largest number is {max(numbers)}."
    if kind == 2:
        return _pick(rng, ("Find the smallest number in the list.", "Which number in the list is the smallest?")), \
            shown, f"The smallest number is {min(numbers)}."
    if kind == 3:
        return _pick(rng, ("Add up all the numbers.", "What is the sum of these numbers?")), \
            shown, f"The sum is {sum(numbers)}."
    words = rng.sample(WORDS, rng.randint(3, 6))
    return (_pick(rng, ("Sort these words alphabetically.", "Put the words in alphabetical order.")),
            ", ".join(words), ", ".join(sorted(words)))


def _howto(rng: random.Random) -> Record:
    task = rng.choice(sorted(HOWTOS))
    steps, _ = HOWTOS[task]
    q = _pick(rng, ("How do I {t}?", "Explain how to {t}.", "Give me simple steps to {t}.",
                    "What is the easiest way to {t}?"), t=task)
    return q, "", _steps_text(task, steps)


def _steps_text(task: str, steps: list[str]) -> str:
    return f"To {task}:\n" + "\n".join(f"{i}. {step}" for i, step in enumerate(steps, start=1))


GENERATORS: tuple[Callable[[random.Random], Record], ...] = (
    _parity, _arithmetic, _arithmetic, _number_fact, _number_fact, _word_fact, _word_fact, _list_fact, _list_fact,
    _howto,
)


def make_instructions(rng: random.Random, count: int = N_INSTRUCTIONS) -> list[dict[str, str]]:
    """``count`` distinct Alpaca records; duplicates (same instruction and input) are drawn again."""
    records: list[dict[str, str]] = []
    seen: set[tuple[str, str]] = set()
    while len(records) < count:
        instruction, extra, output = rng.choice(GENERATORS)(rng)
        if (instruction, extra) in seen:
            continue
        seen.add((instruction, extra))
        records.append({"instruction": instruction, "input": extra, "output": output})
    return records


def _number_chat(rng: random.Random) -> list[tuple[str, str]]:
    a, b = rng.randint(2, 20), rng.randint(2, 20)
    product = a * b
    return [(f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."),
            (_pick(rng, ("And if I multiply them instead?", "What about {a} times {b}?"), a=a, b=b),
             f"{a} times {b} is {product}."),
            ("Is that result even?", f"{'Yes' if product % 2 == 0 else 'No'}, {product} is "
                                     f"{'even' if product % 2 == 0 else 'odd'}.")]


def _word_chat(rng: random.Random) -> list[tuple[str, str]]:
    word = rng.choice(WORDS)
    turns = [(_pick(rng, ("How do you spell '{w}' backwards?", "Can you reverse the word '{w}'?"), w=word),
              f"Backwards, '{word}' is '{word[::-1]}'."),
             ("How many letters does it have?", f"'{word}' has {len(word)} letters.")]
    if rng.random() < 0.5:
        turns.append(("What is its first letter?", f"The first letter of '{word}' is '{word[0]}'."))
    return turns


def _list_chat(rng: random.Random) -> list[tuple[str, str]]:
    numbers = rng.sample(range(1, 50), rng.randint(4, 6))
    shown = ", ".join(map(str, numbers))
    return [(f"Here are some numbers: {shown}. Which one is the largest?", f"The largest is {max(numbers)}."),
            ("Now sort them from smallest to largest.", ", ".join(map(str, sorted(numbers)))),
            ("What is their total?", f"Their total is {sum(numbers)}.")]


def _howto_chat(rng: random.Random) -> list[tuple[str, str]]:
    task = rng.choice(sorted(HOWTOS))
    steps, duration = HOWTOS[task]
    turns = [(_pick(rng, ("How do I {t}?", "Can you tell me how to {t}?"), t=task), _steps_text(task, steps)),
             ("How long does that take?", f"It usually takes {duration}.")]
    if rng.random() < 0.5:
        turns.append((_pick(rng, ("Thanks!", "Thank you, that helps.")), "You're welcome! Good luck."))
    return turns


def make_conversations(rng: random.Random, count: int = N_CONVERSATIONS) -> list[dict[str, object]]:
    """``count`` ShareGPT conversations of 2-3 exchanges; about a third carry a system prompt."""
    makers = (_number_chat, _word_chat, _list_chat, _howto_chat)
    conversations: list[dict[str, object]] = []
    for i in range(count):
        turns = makers[i % len(makers)](rng)
        record: dict[str, object] = {"id": f"embedded_{i:03d}"}
        if rng.random() < 0.35:
            record["system"] = rng.choice(SYSTEMS)
        record["conversations"] = [m for q, a in turns for m in ({"from": "human", "value": q},
                                                                  {"from": "gpt", "value": a})]
        conversations.append(record)
    return conversations


def write_datasets() -> None:
    """Write data/instructions.jsonl and data/conversations.json (same bytes on every run)."""
    rng = random.Random(SEED)
    write_jsonl(INSTRUCTIONS_PATH, make_instructions(rng))
    conversations = make_conversations(rng)
    tmp = CONVERSATIONS_PATH.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(conversations, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, CONVERSATIONS_PATH)


def main() -> None:
    from rlhf.models.tokenizer import EMBEDDED_TOKENIZER_DIR, build_embedded_tokenizer

    write_datasets()
    build_embedded_tokenizer(EMBEDDED_TOKENIZER_DIR)
    print(f"wrote {INSTRUCTIONS_PATH}, {CONVERSATIONS_PATH} and {EMBEDDED_TOKENIZER_DIR}")


if __name__ == "__main__":
    main()
