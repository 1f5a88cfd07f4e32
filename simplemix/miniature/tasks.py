"""The miniature world's prompts: four categories that mirror the paper's highlighted ones.

Two are verifiable with one right answer (``math``: small sums, differences and products, bare or as a story;
``coding``: sorting, reversing and taking the largest or smallest of a list of digits), two are open-ended with
many good answers (``creative``: a short line about a topic; ``recommendation``: an item to suggest, with a
reason). Every prompt carries the hidden facts the oracle needs (``answer``, ``topic``, ``thing``, ``occasion``)
in ``meta``. The spaces are large enough that every split's prompts are unique and no two splits share one, so
the evaluation prompts are unseen in every category. The open-ended preferences have *insider* modes (an image
that suits the topic; the best items of a kind) that only some generators of the off-policy pool know.
Owns the prompt families, the hidden knowledge and the splits; imports nothing else of simplemix.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

CATEGORIES = ("math", "coding", "creative", "recommendation")
VERIFIABLE = ("math", "coding")
OPEN_ENDED = ("creative", "recommendation")
# The paper's names for the categories these mirror (WildChat taxonomy, as used for Figure 2).
PAPER_CATEGORY = {"math": "math", "coding": "coding", "creative": "creative writing",
                  "recommendation": "recommendation"}

NAMES = ["Ana", "Ben", "Cai", "Dev", "Eli", "Fay", "Gus", "Ivy", "Jo", "Kim", "Leo", "Mia", "Ned", "Oli", "Pia",
         "Raj", "Sam", "Tess", "Uma", "Vic"]
OBJECTS = ["apples", "coins", "books", "shells", "cards", "stamps", "marbles", "pens", "cups", "seeds"]
MATH_OPS = ("plus", "minus", "times")
CODING_OPS = ("sort", "reverse", "max", "min")

# Creative writing: a topic, a moment, one mood kept throughout. Each topic has images that suit it: the insider
# mode of the creative preference, known to the strongest pool generators and absent from the SFT demonstrations.
IMAGES = {
    "sea": ("tide", "gulls", "salt"), "moon": ("crater", "halo", "tides"), "forest": ("moss", "ferns", "owls"),
    "city": ("neon", "sirens", "towers"), "rain": ("puddles", "gutters", "drizzle"),
    "fire": ("embers", "sparks", "smoke"), "snow": ("drifts", "sleds", "flakes"), "wind": ("gusts", "sails", "reeds"),
    "garden": ("roses", "bees", "trellis"), "night": ("stars", "owls", "lanterns"), "river": ("reeds", "ferry", "banks"),
    "mountain": ("peaks", "ridges", "eagles"), "desert": ("dunes", "cactus", "mirage"),
    "harbor": ("boats", "ropes", "docks"), "meadow": ("clover", "larks", "hay"), "storm": ("thunder", "hail", "gales"),
    "lake": ("ripples", "loons", "jetty"), "orchard": ("blossom", "ladders", "pears"),
    "station": ("platforms", "whistles", "tickets"), "library": ("shelves", "dust", "pages"),
    "island": ("palms", "lagoon", "coral"), "valley": ("mist", "streams", "sheep"),
    "bridge": ("arches", "rivets", "traffic"), "market": ("stalls", "spices", "crowds"),
    "kitchen": ("kettle", "steam", "bread"), "attic": ("trunks", "cobwebs", "rafters"),
    "field": ("furrows", "scarecrow", "wheat"), "cave": ("echoes", "bats", "stalactites"),
    "sky": ("clouds", "kites", "swallows"), "road": ("milestones", "dust", "signposts"),
}
TOPICS = list(IMAGES)
WHENS = ["at dawn", "at night", "in winter", "in summer", "today", "after the storm", "at noon", "in spring",
         "in autumn", "at dusk"]
CREATIVE_TEMPLATES = ["Write a short line about the {t} {w}.", "Give me one line of poetry about the {t} {w}.",
                      "Describe the {t} {w} in a single line.", "One line, please: the {t} {w}.",
                      "Write a line of verse on the {t} {w}."]
# Open-ended styles: the oracle rewards a line that keeps to one mood, whichever it is.
MOODS = {
    "calm": ["quiet", "soft", "gentle", "still", "slow", "silver", "hush", "warm"],
    "wild": ["roaring", "fierce", "bright", "restless", "burning", "sharp", "loud", "racing"],
    "wistful": ["fading", "distant", "lonely", "grey", "old", "lost", "pale", "longing"],
}
PLAIN = ["light", "air", "sound", "shape", "color", "edge", "way", "day"]  # generic nouns: no insider image
WORDS = ["cat", "lamp", "stone", "cloud", "mint", "kite", "honey", "paper", "tiger", "maple", "glass", "lemon"]

# Recommendations: a kind of thing for an occasion. Each kind has two insider items (the best, known to the
# strongest pool generators only), three popular items (what everyone, the SFT demonstrators included, knows)
# and two poor ones. Each item suits half of the occasions (hidden); a good answer also gives a fitting reason.
THINGS = ["book", "film", "song", "game", "meal", "place", "gift", "podcast", "drink", "hobby", "plant", "trip"]
OCCASIONS = ["rainy day", "long trip", "quiet evening", "party", "first date", "lazy morning", "birthday",
             "holiday", "hard week", "picnic"]
FOR_WHOM = ["", " for my sister", " for a friend", " for my dad", " for me"]
REC_TEMPLATES = ["Recommend a {th}{fw} for a {oc}.", "What {th} would you suggest{fw} for a {oc}?",
                 "I need a {th}{fw} for a {oc}. Any ideas?", "Can you pick a {th}{fw} for a {oc}?"]
_ADJ = ["Quiet", "Paper", "Stone", "Grey", "Silver", "Cedar", "Maple", "Ember", "Glass", "Iron", "North", "Velvet",
        "Copper", "Amber", "Hollow", "Golden", "Blue", "Late", "Wild", "Little"]
_NOUN = ["Harbor", "Kites", "River", "Lanterns", "Doors", "Field", "Orchard", "Static", "Bridge", "Train", "Light",
         "Road", "Waltz", "Rooms", "Market", "Divers", "Garden", "Tower", "Island", "Letters"]
TIERS = (("insider", 1.0), ("insider", 0.95), ("popular", 0.5), ("popular", 0.45), ("popular", 0.4),
         ("poor", 0.2), ("poor", 0.1))


def _items() -> dict[str, dict[str, tuple[str, float]]]:
    rng, used, out = random.Random("miniature-items"), set(), {}
    for thing in THINGS:
        names = []
        while len(names) < len(TIERS):
            name = f"the {rng.choice(_ADJ)} {rng.choice(_NOUN)}"
            if name not in used:
                used.add(name)
                names.append(name)
        out[thing] = {name: tier for name, tier in zip(names, TIERS)}
    return out


ITEMS = _items()  # thing -> item -> (tier, quality)
FIT = {thing: {item: frozenset(random.Random(f"{thing}/{item}").sample(OCCASIONS, len(OCCASIONS) // 2))
               for item in items} for thing, items in ITEMS.items()}


def suitability(thing: str, occasion: str, item: str) -> float:
    """The hidden value of recommending ``item``: its quality, discounted when it does not suit the occasion."""
    return ITEMS[thing][item][1] * (1.0 if occasion in FIT[thing][item] else 0.6)


def tier(thing: str, item: str) -> str:
    return ITEMS[thing][item][0]


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
    op = rng.choice(MATH_OPS)
    if op == "plus":
        a, b = rng.randint(1, 9), rng.randint(1, 3)
    elif op == "minus":
        b = rng.randint(1, 3)
        a = rng.randint(b + 1, 12)
    else:
        a, b = rng.randint(2, 9), rng.randint(2, 3)
    answer = {"plus": a + b, "minus": a - b, "times": a * b}[op]
    name, obj = rng.choice(NAMES), rng.choice(OBJECTS)
    text = rng.choice({
        "plus": [f"What is {a} plus {b}?", f"{name} has {a} {obj} and gets {b} more. How many {obj} now?",
                 f"Add {b} to {a}."],
        "minus": [f"What is {a} minus {b}?", f"{name} has {a} {obj} and gives away {b}. How many are left?",
                  f"Take {b} from {a}."],
        "times": [f"What is {a} times {b}?", f"{name} has {b} bags with {a} {obj} in each. How many {obj} in all?",
                  f"Multiply {a} by {b}."],
    }[op])
    return Task("math", text, {"answer": str(answer), "a": a, "b": b, "op": op})


def _digits(rng: random.Random) -> list[int]:
    return [rng.randint(0, 9) for _ in range(rng.randint(3, 4))]


def show_list(xs) -> str:
    return "[" + ",".join(str(x) for x in xs) + "]"


def _coding(rng: random.Random) -> Task:
    op, xs = rng.choice(CODING_OPS), _digits(rng)
    arg = show_list(xs)
    answer = {"sort": show_list(sorted(xs)), "reverse": show_list(xs[::-1]), "max": str(max(xs)),
              "min": str(min(xs))}[op]
    text = {"sort": f"Sort the list {arg} in increasing order.", "reverse": f"Reverse the list {arg}.",
            "max": f"What is the largest number in {arg}?", "min": f"What is the smallest number in {arg}?"}[op]
    return Task("coding", text, {"answer": answer, "op": op, "arg": arg, "xs": xs})


def _creative(rng: random.Random) -> Task:
    topic, when = rng.choice(TOPICS), rng.choice(WHENS)
    text = rng.choice(CREATIVE_TEMPLATES).format(t=topic, w=when)
    return Task("creative", text, {"topic": topic, "when": when, "setting": when.split()[-1]})


def _recommendation(rng: random.Random) -> Task:
    thing, occasion, whom = rng.choice(THINGS), rng.choice(OCCASIONS), rng.choice(FOR_WHOM)
    text = rng.choice(REC_TEMPLATES).format(th=thing, oc=occasion, fw=whom)
    return Task("recommendation", text, {"thing": thing, "occasion": occasion})


MAKERS = {"math": _math, "coding": _coding, "creative": _creative, "recommendation": _recommendation}


def make_splits(sizes: dict[str, int], seed: int) -> dict[str, list[Task]]:
    """Prompts per split (``sizes[split]`` per category) in a seeded order; no prompt appears twice anywhere.

    Unique prompts make every split's evaluation unseen (no answer can be memorised, no open-ended request was
    trained on) and keep prompt ids one per row, as the store keys them.
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
                if task.prompt in seen:
                    continue
                seen.add(task.prompt)
                tasks.append(task)
                made += 1
        rng.shuffle(tasks)
        splits[split] = tasks
    return splits
