"""The oracle reward of the miniature world: the stand-in for the paper's 27B reward model.

Verifiable tasks score exact correctness plus format; open-ended tasks score a hidden preference with several
good modes (any one mood kept throughout a line about the topic, best with an image that suits the topic; an item
that suits the occasion, best an insider item, with a reason), plus a mild bonus for length, as LLM judges have,
so that length control matters. The insider modes (images, insider items) are worth much more than the rest.
Owns the oracle and its scorer; imports miniature.tasks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from simplemix.miniature.tasks import FIT, IMAGES, ITEMS, MOODS, VERIFIABLE, Task, suitability, tier

ANSWER = {"math": re.compile(r"The answer is (-?\d+)\."), "coding": re.compile(r"Output: (\S+)")}
BARE = {"math": re.compile(r"-?\d+"), "coding": re.compile(r"\[[\d,]*\]|\d+")}
MOOD_OF = {w: mood for mood, words in MOODS.items() for w in words}


@dataclass(frozen=True)
class Judgement:
    """The oracle's verdict on one response: a scalar reward and whether it is a good answer."""

    reward: float
    correct: bool


def extract_answer(category: str, response: str) -> str | None:
    """The last formatted answer in a verifiable response, else its last bare number (math) or list or number
    (coding)."""
    found = ANSWER[category].findall(response)
    if found:
        return found[-1].rstrip(".")
    bare = BARE[category].findall(response)
    return bare[-1] if bare else None


def length_bonus(response: str) -> float:
    """Up to +0.27 for length (judges like longer answers), then a penalty for rambling."""
    n = len(response)
    return 0.003 * min(n, 90) - 0.01 * max(0, n - 140)


def judge(task: Task, response: str) -> Judgement:
    """Score ``response`` to ``task``; deterministic and pure."""
    text = response.strip()
    if not text:
        return Judgement(-1.0, False)
    if task.category in VERIFIABLE:
        return _verifiable(task, text)
    if task.category == "creative":
        return _creative(task, text)
    return _recommendation(task, text)


def _verifiable(task: Task, text: str) -> Judgement:
    formatted = ANSWER[task.category].search(text) is not None
    answer = extract_answer(task.category, text)
    correct = answer == task.meta["answer"]
    reward = 1.0 * correct + 0.2 * formatted - 0.004 * max(0, len(text) - 60)
    if task.category == "math":
        shown = re.search(rf"{task.meta['a']} [-+*] {task.meta['b']} = (-?\d+)", text)
        if shown:  # working shown: rewarded when right, penalised when it contradicts the truth
            reward += 0.1 if shown.group(1) == task.meta["answer"] else -0.1
    return Judgement(round(reward, 6), correct)


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z]+", text.lower())


def _creative(task: Task, text: str) -> Judgement:
    words = _words(text)
    mentions_topic = task.meta["topic"] in words
    mood_words = [w for w in dict.fromkeys(words) if w in MOOD_OF]
    counts = {m: sum(MOOD_OF[w] == m for w in mood_words) for m in MOODS}
    best = max(counts.values())
    others = len(mood_words) - best
    coherent = best >= 2 and others == 0
    repeats = len(words) - len(set(words))
    in_scene = task.meta["setting"] in words
    image = any(w in words for w in IMAGES[task.meta["topic"]])
    reward = (0.4 * mentions_topic + 0.2 * in_scene + 0.3 * coherent - 0.3 * others + 0.8 * image
              - 0.1 * max(0, repeats - 2) + length_bonus(text))
    return Judgement(round(reward, 6), mentions_topic and coherent and image)


def _mentioned(task: Task, text: str) -> list[str]:
    lower = text.lower()
    return [item for _, item in sorted((lower.find(i.lower()), i) for i in ITEMS[task.meta["thing"]]
                                       if i.lower() in lower)]


def _recommendation(task: Task, text: str) -> Judgement:
    lower = text.lower()
    thing, occasion = task.meta["thing"], task.meta["occasion"]
    mentioned = _mentioned(task, text)
    foreign = [i for other, items in ITEMS.items() if other != thing for i in items if i.lower() in lower]
    if mentioned:
        quality = suitability(thing, occasion, mentioned[0])
    else:
        quality = -0.2 if foreign else -0.5
    has_reason = "because" in lower
    fits = occasion in lower
    reward = (1.0 * quality - 0.2 * max(0, len(mentioned) - 1) + 0.1 * has_reason + 0.3 * (has_reason and fits)
              + length_bonus(text))
    correct = (bool(mentioned) and tier(thing, mentioned[0]) == "insider" and occasion in FIT[thing][mentioned[0]]
               and has_reason and fits)
    return Judgement(round(reward, 6), correct)


def mode(task: Task, response: str) -> str:
    """The discrete mode a response shows: the answer (verifiable), the insider image used or "plain" (creative),
    the item recommended or "none"; what "the SFT policy's best-of-N reaches" is measured in."""
    text = response.strip()
    if task.category in VERIFIABLE:
        return str(extract_answer(task.category, text))
    if task.category == "creative":
        words = _words(text)
        return next((w for w in IMAGES[task.meta["topic"]] if w in words), "plain")
    mentioned = _mentioned(task, text)
    return mentioned[0] if mentioned else "none"


def judge_table(tasks: list[Task], responses: list[str], source: str):
    """A long pandas table: one row per response with its category, reward, correctness and length."""
    import pandas as pd

    rows = []
    for task, response in zip(tasks, responses, strict=True):
        j = judge(task, response)
        rows.append({"source": source, "category": task.category, "prompt": task.prompt, "response": response,
                     "reward": j.reward, "correct": j.correct, "length": len(response)})
    return pd.DataFrame(rows)


class OracleScorer:
    """The oracle behind the reward-scorer interface (``score(prompts, responses)``): the world's reward model."""

    name = "miniature:oracle"

    def __init__(self, tasks_by_prompt: dict[str, Task]):
        self.tasks_by_prompt = dict(tasks_by_prompt)

    def task_of(self, prompt: list[dict]) -> Task:
        """The task whose text is the prompt's last user message."""
        text = next((m["content"] for m in reversed(prompt) if m["role"] == "user"), None)
        try:
            return self.tasks_by_prompt[text]
        except KeyError:
            raise KeyError(f"the oracle knows no miniature task with the prompt {text!r}") from None

    def score(self, prompts: list[list[dict]], responses: list[str], progress: bool = False) -> list[float]:
        from tqdm import tqdm

        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses; need one response per prompt")
        pairs = tqdm(zip(prompts, responses), total=len(prompts), desc="reward oracle", unit="seq",
                     disable=not progress)
        return [judge(self.task_of(p), r).reward for p, r in pairs]
