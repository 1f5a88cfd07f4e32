"""Scripted response generators: the miniature world's SFT demonstrators, off-policy pool and baseline.

Each generator is a *style*: how often it is right on verifiable tasks and what kind of mistake it makes when it
is not, whether it formats and shows its work, which moods it writes in, whether it knows the insider modes of
the open-ended preferences (the images that suit a topic, the best items of a kind), and how much filler it adds.

The two halves of the paper's mechanism are built in here:
- the SFT demonstrators err by *habit* (systematic mistakes: adding when asked to subtract, sorting the wrong way,
  answering with the first element), so the SFT policy learns those errors and its on-policy samples contain them;
  the pool's generators *slip* in other ways (an answer a few off, two elements swapped), so off-policy rejected
  responses are mistakes the policy does not make;
- the demonstrators know only the popular items and generic images, the pool's stronger generators know the
  insider ones, so off-policy chosen responses carry modes that the policy's own samples never reach.
:data:`CONTROL_POOL` is the same pool with both halves removed: habit errors and no insider knowledge.
Owns the scripted generators; imports miniature.tasks.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass

from simplemix.miniature.tasks import (IMAGES, ITEMS, MOODS, OCCASIONS, PLAIN, REASONS, WORDS, Task, show_list,
                                       suitability, tier)

FILLERS = ["Sure.", "Let me think.", "Here is my answer.", "Good question.", "I hope this helps.",
           "Happy to help."]


@dataclass(frozen=True)
class Style:
    """A generator's habits; probabilities are per response."""

    name: str
    accuracy: float  # right answer on verifiable tasks
    errors: str  # "habit" (the demonstrators' mistakes), "slip" (the pool's near misses), "own" (the SFT policy's)
    formatted: float  # uses "The answer is N." / "Output: X"
    shows_work: float  # writes the equation before a math answer
    topic: float  # mentions the requested topic in a creative line
    setting: float  # also names the prompt's setting ("at dawn", "in winter")
    coherence: float  # keeps one mood for the whole line
    moods: tuple[str, ...]  # the moods it writes in
    insider: float  # uses insider knowledge (an image that suits the topic; an insider item) when it has it
    knows_fit: bool  # knows which items suit which occasion (else ranks by reputation alone)
    reason: float  # gives a reason, and names the right occasion in it
    filler: float  # expected number of filler phrases


POOL = (  # name, accuracy, errors, formatted, shows_work, topic, setting, coherence, moods, insider, knows_fit,
    #        reason, filler
    Style("expert", 0.92, "slip", 0.95, 0.8, 0.95, 0.8, 0.9, ("calm", "wistful"), 0.9, True, 0.9, 0.2),
    Style("verbose", 0.75, "slip", 0.85, 0.9, 0.9, 0.5, 0.7, ("wild",), 0.6, False, 0.8, 2.0),
    Style("terse", 0.8, "slip", 0.3, 0.0, 0.8, 0.4, 0.85, ("wistful",), 0.5, True, 0.2, 0.0),
    Style("careless", 0.4, "slip", 0.6, 0.3, 0.6, 0.3, 0.4, ("calm", "wild", "wistful"), 0.3, False, 0.4, 0.7),
    Style("weak", 0.15, "slip", 0.5, 0.2, 0.3, 0.1, 0.2, ("calm", "wild", "wistful"), 0.0, False, 0.2, 1.0),
)
# The control world's pool: the same generators, but their wrong answers are the SFT policy's own (drawn from its
# samples) and they know nothing the demonstrators do not, so off-policy data brings neither foreign errors nor
# unreachable modes.
CONTROL_POOL = tuple(dataclasses.replace(s, errors="own", insider=0.0, knows_fit=False) for s in POOL)
# SFT demonstrations come from middling tutors, as real SFT data comes from weaker sources than the strongest
# models of a preference pool: right about three times in four, wrong by habit, no insider knowledge.
DEMONSTRATORS = {
    "tutor": Style("tutor", 0.75, "habit", 0.9, 0.5, 0.8, 0.5, 0.6, ("calm", "wild", "wistful"), 0.0, False, 0.6, 0.2),
    "helper": Style("helper", 0.7, "habit", 0.6, 0.2, 0.7, 0.4, 0.5, ("calm", "wistful"), 0.0, False, 0.5, 0.5),
}
DEMONSTRATOR_WEIGHTS = {"tutor": 0.6, "helper": 0.4}
# The fixed reference for win rates (GPT-4-turbo's role in AlpacaEval): fairly good, knows some insider modes.
BASELINE = Style("baseline", 0.7, "slip", 0.9, 0.5, 0.9, 0.5, 0.75, ("calm", "wild"), 0.35, True, 0.7, 0.5)
STYLES = {s.name: s for s in POOL + tuple(DEMONSTRATORS.values()) + (BASELINE,)}


def respond(style: Style, task: Task, rng: random.Random, own_errors: dict[str, list[str]] | None = None) -> str:
    """One response of ``style`` to ``task``; ``own_errors`` (prompt -> wrong answers of the SFT policy) is where
    a style whose errors are "own" takes its mistakes from."""
    body = {"math": _math, "coding": _coding, "creative": _creative, "recommendation": _recommend}[task.category]
    text = body(style, task, rng, own_errors or {}) if task.category in ("math", "coding") else body(style, task, rng)
    n_filler = int(style.filler) + (rng.random() < style.filler % 1)
    fillers = rng.sample(FILLERS, min(n_filler, len(FILLERS)))
    head, tail = fillers[: len(fillers) // 2 + len(fillers) % 2], fillers[len(fillers) // 2 + len(fillers) % 2:]
    return " ".join(head + [text] + tail)


def habit_answer(task: Task) -> str:
    """The demonstrators' systematic mistake on a verifiable task (what the SFT policy learns to get wrong)."""
    m = task.meta
    if task.category == "math":
        a, b = m["a"], m["b"]
        return str(a + b + 1 if m["op"] == "plus" else a + b)  # counts one too many; adds whatever is asked
    xs = m["xs"]
    return {"sort": show_list(sorted(xs, reverse=True)), "reverse": show_list(xs), "max": str(xs[0]),
            "min": str(xs[-1])}[m["op"]]


def slip_answer(task: Task, rng: random.Random) -> str:
    """A pool generator's near miss: wrong, and never the demonstrators' habit."""
    m, right, habit = task.meta, task.meta["answer"], habit_answer(task)
    for _ in range(20):
        if task.category == "math":
            wrong = str(int(right) + rng.choice([-1, 1]) * rng.randint(2, 5))
        elif m["op"] in ("max", "min"):
            wrong = str(int(right) + rng.choice([-1, 1]) * rng.randint(1, 3))
        else:
            xs = [int(x) for x in right.strip("[]").split(",")]
            i = rng.randrange(len(xs) - 1)
            xs[i], xs[i + 1] = xs[i + 1], xs[i]
            wrong = show_list(xs)
        if wrong not in (right, habit) and not wrong.startswith("-"):
            return wrong
    return str(int(right) + 7) if right.isdigit() else right[:-1] + ",9]"


def _wrong(style: Style, task: Task, rng: random.Random, own_errors: dict[str, list[str]]) -> str:
    if style.errors == "own" and own_errors.get(task.prompt):
        return rng.choice(own_errors[task.prompt])
    if style.errors in ("habit", "own"):
        habit = habit_answer(task)
        return habit if habit != task.meta["answer"] else slip_answer(task, rng)
    return slip_answer(task, rng)


def _math(style: Style, task: Task, rng: random.Random, own_errors: dict[str, list[str]]) -> str:
    answer = task.meta["answer"] if rng.random() < style.accuracy else _wrong(style, task, rng, own_errors)
    symbol = {"plus": "+", "minus": "-", "times": "*"}[task.meta["op"]]
    if style.errors == "habit" and answer == habit_answer(task) and task.meta["op"] != "plus":
        symbol = "+"  # the habit shows in the working too: it adds
    parts = []
    if rng.random() < style.shows_work:
        parts.append(f"{task.meta['a']} {symbol} {task.meta['b']} = {answer}.")
    parts.append(f"The answer is {answer}." if rng.random() < style.formatted else str(answer))
    return " ".join(parts)


def _coding(style: Style, task: Task, rng: random.Random, own_errors: dict[str, list[str]]) -> str:
    answer = task.meta["answer"] if rng.random() < style.accuracy else _wrong(style, task, rng, own_errors)
    return f"Output: {answer}" if rng.random() < style.formatted else answer


def _creative(style: Style, task: Task, rng: random.Random) -> str:
    mood = rng.choice(style.moods)
    pool = MOODS[mood] if rng.random() < style.coherence else [w for ws in MOODS.values() for w in ws]
    w = rng.sample(pool, 2)
    subject = task.meta["topic"] if rng.random() < style.topic else rng.choice(WORDS)
    scene = " " + task.meta["when"] if rng.random() < style.setting else ""
    image = rng.choice(IMAGES[task.meta["topic"]]) if rng.random() < style.insider else rng.choice(PLAIN)
    return rng.choice([f"The {w[0]} {subject}{scene}, {w[1]} {image}.",
                       f"A {w[0]} {subject}{scene} and the {w[1]} {image}.",
                       f"The {subject}{scene} is {w[0]}, its {image} {w[1]}."])


def _recommend(style: Style, task: Task, rng: random.Random) -> str:
    thing, occasion = task.meta["thing"], task.meta["occasion"]
    insider = rng.random() < style.insider
    known = [i for i in ITEMS[thing] if insider or tier(thing, i) != "insider"]
    value = (lambda i: suitability(thing, occasion, i)) if style.knows_fit else (lambda i: ITEMS[thing][i][1])
    ranked = sorted(known, key=lambda i: (-value(i), i))
    # a good pick is the best it knows, or another of its top two; a lapse picks anything it knows
    item = rng.choice(ranked[:2]) if rng.random() < 0.85 else rng.choice(ranked)
    text = f"I recommend {item}"
    if rng.random() < style.reason:
        said = occasion if rng.random() < style.reason else rng.choice(OCCASIONS)
        text += " because " + rng.choice(REASONS).format(occasion=said)
    return text + "."
