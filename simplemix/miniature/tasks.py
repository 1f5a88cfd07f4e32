"""The miniature world's prompts: four categories that mirror the paper's highlighted ones.

Two are verifiable with one right answer (``math``: arithmetic word problems; ``coding``: small
string and list manipulations), two are open-ended with many good answers (``creative``: a short
line about a topic; ``recommendation``: an item to suggest, with a reason). Every prompt carries the
hidden facts the oracle needs (``answer``, ``topic``, ``thing``, ``occasion``) in ``meta``.
Owns the prompt families and splits; imports nothing else of simplemix.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

CATEGORIES = ("math", "coding", "creative", "recommendation")
VERIFIABLE = ("math", "coding")
# The paper's names for the categories these mirror (WildChat taxonomy, as used for Figure 2).
PAPER_CATEGORY = {"math": "math", "coding": "coding", "creative": "creative writing",
                  "recommendation": "recommendation"}

NAMES = ["Ana", "Ben", "Cai", "Dev", "Eli", "Fay", "Gus", "Ivy", "Jo", "Kim", "Leo", "Mia", "Ned", "Oli"]
OBJECTS = ["apples", "coins", "books", "shells", "cards", "stamps", "marbles", "pens"]
WORDS = ["cat", "lamp", "river", "stone", "cloud", "bread", "mint", "kite", "honey", "paper", "tiger",
         "maple", "frost", "glass", "ember", "orbit", "lemon", "cedar", "pearl", "storm", "violet", "copper"]
TOPICS = ["sea", "moon", "forest", "city", "rain", "fire", "snow", "wind", "garden", "night"]
# Open-ended styles: the oracle rewards a line that keeps to one mood, whichever it is.
MOODS = {
    "calm": ["quiet", "soft", "gentle", "still", "slow", "silver", "hush", "warm"],
    "wild": ["roaring", "fierce", "bright", "restless", "burning", "sharp", "loud", "racing"],
    "wistful": ["fading", "distant", "lonely", "grey", "old", "lost", "pale", "longing"],
}
FILLER = ["there", "is", "a", "the", "and", "over", "under", "in", "of", "with", "beside", "near"]
THINGS = ["book", "film", "song", "game", "meal", "place"]
OCCASIONS = ["rainy day", "long trip", "quiet evening", "party", "first date", "lazy morning"]
# Hidden item quality per thing: several items are equally good, so many answers win.
ITEMS = {
    "book": {"The Quiet Harbor": 1.0, "Paper Kites": 1.0, "Stone River": 0.95, "Grey Lanterns": 0.4,
             "Ten Small Doors": 0.3, "The Long Field": 0.1},
    "film": {"North of Noon": 1.0, "Glass Orchard": 0.95, "Cedar Lake": 1.0, "Blue Static": 0.35,
             "Iron Bridge": 0.2, "Late Train": 0.1},
    "song": {"Maple Light": 1.0, "Silver Road": 1.0, "Ember Waltz": 0.9, "Loud Rooms": 0.3,
             "Cold Coffee": 0.25, "Rust": 0.1},
    "game": {"Orbit Run": 1.0, "Pearl Divers": 0.95, "Honey Market": 1.0, "Tin Soldiers": 0.3,
             "Mud Race": 0.2, "Grid": 0.1},
    "meal": {"lemon pasta": 1.0, "mint soup": 0.95, "tomato stew": 1.0, "cold toast": 0.3,
             "plain rice": 0.2, "dry crackers": 0.1},
    "place": {"the old lighthouse": 1.0, "the cedar woods": 1.0, "the river market": 0.95,
              "the parking lot": 0.2, "the bus station": 0.3, "the empty mall": 0.1},
}
# Which occasions each item suits (hidden): a top item recommended for the wrong occasion is only
# fair, so a good recommendation depends on the whole prompt, not on the kind of thing alone.
FIT = {thing: {item: frozenset(random.Random(f"{thing}/{item}").sample(OCCASIONS, 3)) for item in items}
       for thing, items in ITEMS.items()}


def suitability(thing: str, occasion: str, item: str) -> float:
    """The hidden value of recommending ``item``: its quality, discounted when it does not suit the occasion."""
    return ITEMS[thing][item] * (1.0 if occasion in FIT[thing][item] else 0.6)


REASONS = ["it is perfect for a {occasion}", "it fits a {occasion} well", "it makes a {occasion} better"]


@dataclass(frozen=True)
class Task:
    """One prompt of the world: its category, text and the hidden facts the oracle scores against."""

    category: str
    prompt: str
    meta: dict = field(hash=False, compare=False)

    def messages(self) -> list[dict]:
        return [{"role": "user", "content": self.prompt}]

    def to_dict(self) -> dict:
        return {"category": self.category, "prompt": self.prompt, "meta": self.meta}


def _math(rng: random.Random) -> Task:
    name, obj = rng.choice(NAMES), rng.choice(OBJECTS)
    kind = rng.choice(["plus", "minus", "times", "story_plus", "story_minus"])
    if kind in ("times",):
        a, b = rng.randint(2, 5), rng.randint(2, 5)
    else:
        a, b = rng.randint(2, 12), rng.randint(1, 9)
        if "minus" in kind and b > a:
            a, b = b, a
    answer = a * b if kind == "times" else (a - b if "minus" in kind else a + b)
    text = {
        "plus": f"What is {a} plus {b}?",
        "minus": f"What is {a} minus {b}?",
        "times": f"What is {a} times {b}?",
        "story_plus": f"{name} has {a} {obj} and gets {b} more. How many {obj} does {name} have now?",
        "story_minus": f"{name} has {a} {obj} and gives away {b}. How many {obj} are left?",
    }[kind]
    op = {"plus": "+", "minus": "-", "times": "*"}[kind.split("_")[-1]]
    return Task("math", text, {"answer": str(answer), "a": a, "b": b, "op": op})


def _coding(rng: random.Random) -> Task:
    kind = rng.choice(["reverse", "upper", "sort", "length"])
    if kind == "sort":
        xs = [rng.randint(0, 9) for _ in range(rng.randint(3, 5))]
        arg, answer = str(xs).replace(" ", ""), str(sorted(xs)).replace(" ", "")
        text = f"Sort the list {arg} in increasing order."
    else:
        word = rng.choice(WORDS)
        arg = word
        answer = {"reverse": word[::-1], "upper": word.upper(), "length": str(len(word))}[kind]
        text = {"reverse": f"Reverse the word '{word}'.", "upper": f"Write the word '{word}' in capitals.",
                "length": f"How many letters are in the word '{word}'?"}[kind]
    return Task("coding", text, {"answer": answer, "op": kind, "arg": arg})


def _creative(rng: random.Random) -> Task:
    topic = rng.choice(TOPICS)
    when = rng.choice(["at dawn", "at night", "in winter", "in summer", "today", "after the storm"])
    text = rng.choice(["Write a short line about the {t} {w}.", "Give me one line of poetry about the {t} {w}.",
                       "Describe the {t} {w} in a single line."]).format(t=topic, w=when)
    return Task("creative", text, {"topic": topic, "when": when, "setting": when.split()[-1]})


def _recommendation(rng: random.Random) -> Task:
    thing, occasion = rng.choice(THINGS), rng.choice(OCCASIONS)
    text = rng.choice(["Recommend a {th} for a {oc}.", "What {th} would you suggest for a {oc}?",
                       "I need a {th} for a {oc}. Any ideas?"]).format(th=thing, oc=occasion)
    return Task("recommendation", text, {"thing": thing, "occasion": occasion})


MAKERS = {"math": _math, "coding": _coding, "creative": _creative, "recommendation": _recommendation}


def make_splits(sizes: dict[str, int], seed: int) -> dict[str, list[Task]]:
    """Prompts per split (``sizes[split]`` per category) in a seeded order.

    Verifiable prompts never repeat, within or across splits, so no evaluation answer can be
    memorised. Open-ended prompts come from a small space and may repeat, as similar requests do
    across real datasets; what makes a good answer to them is never a single string.
    """
    rng = random.Random(seed)
    seen: set[str] = set()
    splits: dict[str, list[Task]] = {}
    for split, per_category in sizes.items():
        tasks = []
        for category in CATEGORIES:
            made, attempts = 0, 0
            while made < per_category:
                attempts += 1
                if attempts > 200 * per_category:
                    raise ValueError(f"cannot draw {per_category} distinct '{category}' prompts for split "
                                     f"'{split}'; the space is too small for the requested sizes")
                task = MAKERS[category](rng)
                if category in VERIFIABLE:
                    if task.prompt in seen:
                        continue
                    seen.add(task.prompt)
                tasks.append(task)
                made += 1
        rng.shuffle(tasks)
        splits[split] = tasks
    return splits
