"""The templated question/answer tasks the demo dLLM is trained on, with a held-out split (pure Python, no torch).

Each task fills slots of one template. Held-out prompts use slot fillers (or filler combinations) the training set
never pairs with that template: names never asked back in "what is my name", (colour, animal) pairs never seen, word
triples never repeated. Answering them needs the rule (copy from the prompt), not a memorised line.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass

NAMES = "alice bob carol dave emma frank grace henry iris jack kate leo mia noah olivia paul rose sam tom zoe".split()
HELD_OUT_NAMES = NAMES[3::4]  # dave henry leo olivia zoe: seen in other tasks, never in the name task
COLOURS = "red blue green yellow black white pink orange purple brown gray".split()
ANIMALS = "cat dog bird fish horse cow pig duck frog lion bear mouse".split()
OPPOSITES = [("big", "small"), ("hot", "cold"), ("up", "down"), ("fast", "slow"), ("old", "new"), ("good", "bad"),
             ("happy", "sad"), ("day", "night"), ("yes", "no"), ("open", "closed"), ("left", "right"), ("light", "dark")]
NUMBERS = ("one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
           "seventeen eighteen nineteen twenty").split()
GREETINGS = ["hi", "hello", "hi there", "hello there", "hello world", "hey"]
GREETING_ANSWER = "hello! how can i help you?"
REPEAT_WORDS = NAMES + COLOURS + ANIMALS + "sun moon tree book house road car boat apple water".split()
TEMPLATE_WORDS = ("my name is what your i have a color the opposite of comes after repeat me how can help you "
                  "hello hi there world hey").split()


@dataclass(frozen=True)
class Example:
    task: str
    prompt: str
    answer: str


def vocabulary() -> list[str]:
    """Every word the templates use, once, in a fixed order (the tokenizer's word list)."""
    words = TEMPLATE_WORDS + NAMES + COLOURS + ANIMALS + REPEAT_WORDS + NUMBERS
    words += [w for pair in OPPOSITES for w in pair]
    return list(dict.fromkeys(words))


def _is_held_out_pair(colour: str, animal: str) -> bool:
    return (COLOURS.index(colour) * 7 + ANIMALS.index(animal) * 3) % 5 == 0


def _is_held_out_triple(words: tuple[str, ...]) -> bool:
    return sum((i + 1) * REPEAT_WORDS.index(w) for i, w in enumerate(words)) % 5 == 0


def name_example(name: str) -> Example:
    return Example("name", f"my name is {name}. what is my name?", f"your name is {name}.")


def pet_example(colour: str, animal: str) -> Example:
    return Example("pet", f"i have a {colour} {animal}. what color is my {animal}?", f"your {animal} is {colour}.")


def repeat_example(words: tuple[str, ...]) -> Example:
    text = " ".join(words)
    return Example("repeat", f"repeat after me: {text}", text)


def fact_examples() -> list[Example]:
    """Opposites, successors and greetings: facts, all in the training set."""
    facts = [Example("opposite", f"what is the opposite of {a}?", f"the opposite of {a} is {b}.")
             for x, y in OPPOSITES for a, b in ((x, y), (y, x))]
    facts += [Example("next", f"what comes after {n}?", f"{m} comes after {n}.") for n, m in zip(NUMBERS, NUMBERS[1:])]
    facts += [Example("greeting", g, GREETING_ANSWER) for g in GREETINGS]
    return facts


def training_examples(num_repeats: int = 600, seed: int = 0) -> list[Example]:
    """The training set: name lines for every repeat word but the held-out names (so the template is learnt as
    "copy what follows `is`", not as 15 memorised names), every non-held-out pet line, all facts, and
    `num_repeats` random repeat lines."""
    rng = random.Random(seed)
    examples = [name_example(n) for n in REPEAT_WORDS if n not in HELD_OUT_NAMES]
    examples += [pet_example(c, a) for c, a in itertools.product(COLOURS, ANIMALS) if not _is_held_out_pair(c, a)]
    examples += fact_examples()
    while sum(e.task == "repeat" for e in examples) < num_repeats:
        words = tuple(rng.sample(REPEAT_WORDS, 3))
        if not _is_held_out_triple(words):
            examples.append(repeat_example(words))
    return examples


def held_out_examples(num_repeats: int = 20, seed: int = 1) -> list[Example]:
    """Prompts the model never saw: held-out names, held-out (colour, animal) pairs, held-out word triples."""
    rng = random.Random(seed)
    examples = [name_example(n) for n in HELD_OUT_NAMES]
    examples += [pet_example(c, a) for c, a in itertools.product(COLOURS, ANIMALS) if _is_held_out_pair(c, a)][::3]
    repeats: list[Example] = []
    while len(repeats) < num_repeats:
        words = tuple(rng.sample(REPEAT_WORDS, 3))
        if _is_held_out_triple(words):
            repeats.append(repeat_example(words))
    return examples + repeats
