"""Is the paper's mechanism in the miniature world's data? Measured per category and pair source, before training.

The mechanism: on-policy pairs contrast the policy's *own* errors (their rejected responses are likely under the
SFT policy), which matters where answers are right or wrong; off-policy pairs bring preferred content the
policy's own samples rarely reach (their chosen responses show modes the SFT best-of-N never shows), which
matters where preference is open-ended. :func:`mechanism` measures both, with the oracle's verdicts, the SFT
policy's log-probs and the modes of the on-policy samples; :func:`sft_accuracy` measures what the SFT policy's
samples get right. Owns the diagnostics; imports miniature.oracle and miniature.tasks (and, lazily, onpolicy,
sampling and curation).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from simplemix.miniature.oracle import judge, mode
from simplemix.miniature.tasks import CATEGORIES, VERIFIABLE

if TYPE_CHECKING:
    import pandas as pd

    from simplemix.miniature.world import MiniatureWorld
    from simplemix.world import Cell

COLUMNS = {"pairs": "pairs", "right_over_wrong": "correct chosen, incorrect rejected",
           "margin": "mean oracle margin", "len_chosen": "chosen length (chars)",
           "len_rejected": "rejected length (chars)", "logp_chosen": "SFT log-prob/token, chosen",
           "logp_rejected": "SFT log-prob/token, rejected", "reached": "chosen mode in SFT best-of-N"}


def _samples(world: MiniatureWorld, cell: Cell) -> list[tuple]:
    """The cell's on-policy samples as (task, sample row), one per sample."""
    from simplemix.data import read_jsonl
    from simplemix.onpolicy import load_samples, on_policy_pairs

    entries = on_policy_pairs(world, cell, progress=False)
    prompts = {r["prompt_id"]: r["prompt"] for r in read_jsonl(entries["samples"].path / "samples.jsonl")}
    return [(world.task(prompts[r["prompt_id"]][-1]["content"]), r)
            for r in load_samples(entries["samples"], entries["scores"])]


def _sample_modes(world: MiniatureWorld, cell: Cell) -> dict[str, set[str]]:
    """Per training prompt (by text) the modes its on-policy samples show."""
    modes: dict[str, set[str]] = {}
    for task, r in _samples(world, cell):
        modes.setdefault(task.prompt, set()).add(mode(task, r["text"]))
    return modes


def mechanism(world: MiniatureWorld, cell: Cell, progress: bool = False) -> "pd.DataFrame":
    """One row per (category, source): how many pairs; the fraction whose chosen is correct and rejected is not;
    the mean oracle margin; chosen and rejected lengths; the SFT policy's mean per-token log-prob of chosen and of
    rejected; and the fraction of chosen responses whose mode the SFT policy's N samples for that prompt reach."""
    import pandas as pd

    from simplemix.curation import response_logps
    from simplemix.methods import sources
    from simplemix.sampling import load_policy

    modes = _sample_modes(world, cell)
    on, off = sources(world, cell, progress=progress)
    model, tokenizer = load_policy(world.sft_policy(cell))
    rows = []
    for source, ds in (("on", on), ("off", off)):
        logp_c, logp_r = response_logps(ds, model, tokenizer, batch_size=64, per_token=True,
                                        max_length=world.profile.training.max_length)
        for pair, lc, lr in zip(ds, logp_c, logp_r):
            task = world.task(pair["prompt"][-1]["content"])
            jc, jr = judge(task, pair["chosen"]), judge(task, pair["rejected"])
            rows.append({"category": task.category, "source": source, "right_over_wrong": jc.correct and not jr.correct,
                         "margin": jc.reward - jr.reward, "len_chosen": len(pair["chosen"]),
                         "len_rejected": len(pair["rejected"]), "logp_chosen": lc, "logp_rejected": lr,
                         "reached": mode(task, pair["chosen"]) in modes.get(task.prompt, set())})
    table = pd.DataFrame(rows)
    out = table.groupby(["category", "source"]).mean(numeric_only=True)
    out.insert(0, "pairs", table.groupby(["category", "source"]).size())
    order = [(c, s) for c in CATEGORIES for s in ("on", "off") if (c, s) in out.index]
    return out.loc[order]


def sft_accuracy(world: MiniatureWorld, cell: Cell) -> "pd.DataFrame":
    """Per category, over the cell's on-policy samples (the SFT policy at the profile's sampling settings): the
    sample accuracy, the fraction of prompts whose N samples hold both a right and a wrong answer (so best/worst
    contrasts them), and, on verifiable tasks, the fraction of samples that repeat the demonstrators' habit."""
    import pandas as pd

    from simplemix.miniature.generators import habit_answer
    from simplemix.miniature.oracle import extract_answer

    by_prompt: dict[str, list[tuple[bool, bool]]] = {}
    category = {}
    for task, r in _samples(world, cell):
        right = judge(task, r["text"]).correct
        habit = task.category in VERIFIABLE and extract_answer(task.category, r["text"]) == habit_answer(task) \
            and habit_answer(task) != task.meta["answer"]
        by_prompt.setdefault(r["prompt_id"], []).append((right, habit))
        category[r["prompt_id"]] = task.category
    out = []
    for c in CATEGORIES:
        groups = [v for pid, v in by_prompt.items() if category[pid] == c]
        flat = [x for g in groups for x in g]
        out.append({"category": c, "prompts": len(groups), "sample_accuracy": sum(r for r, _ in flat) / len(flat),
                    "right_and_wrong_in_N": sum(any(r for r, _ in g) and not all(r for r, _ in g) for g in groups)
                    / len(groups),
                    "habit_rate": sum(h for _, h in flat) / len(flat) if c in VERIFIABLE else float("nan")})
    return pd.DataFrame(out).set_index("category")
