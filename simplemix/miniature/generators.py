"""Scripted response generators: the miniature world's model pool, demonstrators and baseline.

Each generator is a *style*: how often it is right on verifiable tasks, whether it formats and
shows its work, which moods it writes in, how good its taste in items is, and how much filler it
adds. Like UltraFeedback's 17 models they differ in quality and in what they are good at.
Owns the scripted generators; imports miniature.tasks.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from simplemix.miniature.tasks import ITEMS, MOODS, OCCASIONS, REASONS, WORDS, Task, suitability

FILLERS = ["Sure.", "Let me think.", "Here is my answer.", "Good question.", "I hope this helps.",
           "Happy to help."]


@dataclass(frozen=True)
class Style:
    """A generator's habits; probabilities are per response."""

    name: str
    accuracy: float  # right answer on verifiable tasks
    formatted: float  # uses "The answer is N." / "Output: X"
    shows_work: float  # writes the equation before a math answer
    topic: float  # mentions the requested topic in a creative line
    setting: float  # also names the prompt's setting ("at dawn", "in winter")
    coherence: float  # keeps one mood for the whole line
    moods: tuple[str, ...]  # the moods it writes in
    mood_words: int  # mood words per line
    taste: float  # picks the best item it knows of (else one outside its top three)
    knows_fit: bool  # knows which items suit which occasion (else ranks by reputation alone)
    reason: float  # gives a reason, and names the right occasion in it
    filler: float  # expected number of filler phrases


POOL = (  # name, accuracy, formatted, shows_work, topic, setting, coherence, moods, mood_words, taste, knows_fit,
    #        reason, filler
    Style("expert", 0.92, 0.95, 0.8, 0.95, 0.9, 0.9, ("calm", "wistful"), 3, 0.9, True, 0.9, 0.2),
    Style("verbose", 0.75, 0.85, 0.9, 0.9, 0.3, 0.7, ("wild",), 3, 0.7, False, 0.8, 2.0),
    Style("terse", 0.8, 0.3, 0.0, 0.8, 0.4, 0.85, ("wistful",), 2, 0.7, True, 0.1, 0.0),
    Style("careless", 0.4, 0.6, 0.3, 0.6, 0.2, 0.4, ("calm", "wild", "wistful"), 2, 0.4, False, 0.4, 0.7),
    Style("weak", 0.1, 0.5, 0.2, 0.3, 0.05, 0.2, ("calm", "wild", "wistful"), 1, 0.2, False, 0.2, 1.0),
)
# SFT demonstrations come from the middling styles, as real SFT data comes from weaker sources than
# the strongest models of a preference pool: the expert's habits (naming the setting, matching
# items to occasions) are rare in them, so the SFT policy and its on-policy samples rarely show them.
DEMONSTRATORS = {"verbose": 0.5, "terse": 0.2, "careless": 0.3}
# The fixed reference for win rates (GPT-4-turbo's role in AlpacaEval).
BASELINE = Style("baseline", 0.7, 0.9, 0.5, 0.9, 0.5, 0.75, ("calm", "wild"), 2, 0.65, True, 0.7, 0.5)
STYLES = {s.name: s for s in POOL + (BASELINE,)}


def respond(style: Style, task: Task, rng: random.Random) -> str:
    """One response of ``style`` to ``task``."""
    body = {"math": _math, "coding": _coding, "creative": _creative, "recommendation": _recommend}[task.category]
    text = body(style, task, rng)
    n_filler = int(style.filler) + (rng.random() < style.filler % 1)
    fillers = rng.sample(FILLERS, min(n_filler, len(FILLERS)))
    head, tail = fillers[: len(fillers) // 2 + len(fillers) % 2], fillers[len(fillers) // 2 + len(fillers) % 2:]
    return " ".join(head + [text] + tail)


def _math(style: Style, task: Task, rng: random.Random) -> str:
    answer = int(task.meta["answer"])
    if rng.random() >= style.accuracy:
        answer += rng.choice([-1, 1]) * rng.randint(1, 10)
    parts = []
    if rng.random() < style.shows_work:
        parts.append(f"{task.meta['a']} {task.meta['op']} {task.meta['b']} = {answer}.")
    parts.append(f"The answer is {answer}." if rng.random() < style.formatted else str(answer))
    return " ".join(parts)


def _near_miss(task: Task, rng: random.Random) -> str:
    op, arg, answer = task.meta["op"], task.meta["arg"], task.meta["answer"]
    if op == "length":
        return str(int(answer) + rng.choice([-1, 1]))
    if op == "upper":
        return arg.capitalize() if rng.random() < 0.5 else arg
    if op == "reverse":
        return arg if rng.random() < 0.5 else arg[::-1][1:] + arg[-1]
    xs = answer.strip("[]").split(",")
    i = rng.randrange(len(xs) - 1)
    xs[i], xs[i + 1] = xs[i + 1], xs[i]
    wrong = "[" + ",".join(xs) + "]"
    return wrong if wrong != answer else arg


def _coding(style: Style, task: Task, rng: random.Random) -> str:
    answer = task.meta["answer"] if rng.random() < style.accuracy else _near_miss(task, rng)
    return f"Output: {answer}" if rng.random() < style.formatted else answer


def _creative(style: Style, task: Task, rng: random.Random) -> str:
    mood = rng.choice(style.moods)
    pool = MOODS[mood] if rng.random() < style.coherence else [w for ws in MOODS.values() for w in ws]
    w = rng.sample(pool, 3)
    subject = task.meta["topic"] if rng.random() < style.topic else rng.choice(WORDS)
    scene = " " + task.meta["when"] if rng.random() < style.setting else ""
    lines = {
        1: [f"The {w[0]} {subject}{scene}.", f"A {w[0]} {subject}{scene}, alone."],
        2: [f"The {w[0]} {subject}{scene} is {w[1]}.", f"A {w[0]} {subject}{scene}, {w[1]} and near."],
        3: [f"The {w[0]} {subject}{scene} is {w[1]} and {w[2]}.",
            f"A {w[0]} {subject}{scene}, {w[1]} over the {w[2]} hills."],
    }[style.mood_words]
    return rng.choice(lines)


def _recommend(style: Style, task: Task, rng: random.Random) -> str:
    thing, occasion = task.meta["thing"], task.meta["occasion"]
    items = ITEMS[thing]
    value = (lambda i: suitability(thing, occasion, i)) if style.knows_fit else items.get
    ranked = sorted(items, key=lambda i: (-value(i), i))
    item = ranked[0] if rng.random() < style.taste else rng.choice(ranked[1:])
    text = f"I recommend {item}"
    if rng.random() < style.reason:
        occasion = occasion if rng.random() < style.reason else rng.choice(OCCASIONS)
        text += " because " + rng.choice(REASONS).format(occasion=occasion)
    return text + "."
