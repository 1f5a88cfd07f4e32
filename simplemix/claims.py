"""The paper's claims, each as one signed quantity, and a verdict on it computed from this run's interval.

A claim says which way a difference goes (on-policy minus off-policy DPO on math and coding is positive, ...).
Its chapter measures that difference with a 95% interval and records it (:func:`measured`, into the chapter's
``claims`` in ``results.json``); :func:`verdict` reads the interval: *agrees in sign* when it excludes zero on
the paper's side, *disagrees* when it excludes zero on the other side, *inconclusive* when it contains zero. The
paper's number is computed from the transcribed tables in ``data/paper/`` where the paper prints one.
Owns the claim list and the verdict rule; imports paper.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from simplemix import paper

AGREES, DISAGREES, INCONCLUSIVE, NOT_RUN = "agrees in sign", "disagrees", "inconclusive", "not run"


def _llama_uf(name: str) -> "object":
    t = paper.table(name)
    return t[(t.base_model == "Llama-3.1-8B-Instruct") & (t.dataset == "UltraFeedback")]


def _fig2(categories: tuple[str, ...]) -> float:
    deltas = _llama_uf("figure2_category_deltas").set_index("category_id")["LC difference (pp)"]
    return float(deltas.loc[list(categories)].mean())


def _abstract(claim_id: str) -> float:
    return float(paper.table("abstract_claims").set_index("claim_id").loc[claim_id, "value"])


def _table3(column: str, a: str, b: str) -> float:
    t = _llama_uf("table3_diversity").set_index("method_label")[column]
    return float(t[a] - t[b])


@dataclass(frozen=True)
class Claim:
    """One claim of the paper: where it is, what it says, the sign it predicts for ``measure`` (+1 or -1)."""

    id: str
    chapter: str
    where: str
    text: str
    measure: str  # the quantity the chapter measures, whose sign the claim predicts
    direction: int
    paper_value: Callable[[], float] | None = None  # the paper's number of the same quantity, where printed
    paper_unit: str = "LC points"

    def paper(self) -> str:
        """The paper's number (signed, with its unit) or, where the paper prints none, the sign it shows."""
        if self.paper_value is None:
            return f"{'positive' if self.direction > 0 else 'negative'} (no printed number)"
        return f"{self.paper_value():+.2f} {self.paper_unit}"


CLAIMS: tuple[Claim, ...] = (
    Claim("on_helps_verifiable", "02_on_vs_off_policy", "Section 3.2, Figure 2",
          "On-policy DPO beats off-policy DPO on math and coding",
          "on minus off, LC win rate, math and coding prompts", +1, lambda: _fig2(("math", "coding"))),
    Claim("off_helps_open_ended", "02_on_vs_off_policy", "Section 3.2, Figure 2",
          "Off-policy DPO beats on-policy DPO on creative writing and recommendation",
          "on minus off, LC win rate, creative-writing and recommendation prompts", -1,
          lambda: _fig2(("creative", "recommendation"))),
    Claim("simplemix_vs_single_source", "03_simplemix_and_baselines", "Abstract, Table 2",
          "SimpleMix beats DPO on either source alone",
          "SimpleMix minus the mean of on- and off-policy DPO, LC win rate", +1,
          lambda: _abstract("simplemix_vs_single_source")),
    Claim("simplemix_vs_hybrid", "03_simplemix_and_baselines", "Abstract, Table 2",
          "SimpleMix beats the hybrid methods HyPO and DPO-Mix-P",
          "SimpleMix minus the mean of HyPO and DPO-Mix-P, LC win rate", +1,
          lambda: _abstract("simplemix_vs_hybrid")),
    Claim("diversity_lowers_reward", "04_diversity", "Section 5.1, Table 3, Figures 10-11",
          "Sampling at a higher temperature lowers the reward of the on-policy samples",
          "mean sample reward at the highest temperature minus at the profile's own sampling", -1,
          lambda: _table3("Avg. Reward", "τ = 3.0", "τ = 1.0"), "reward units (τ = 3 minus τ = 1)"),
    Claim("simplemix_beats_diverse", "04_diversity", "Section 5.1, Table 3",
          "SimpleMix beats on-policy DPO on diverse (high-temperature) samples",
          "SimpleMix minus on-policy DPO at the highest temperature, LC win rate", +1,
          lambda: _table3("LC (%)", "SIMPLEMIX", "τ = 3.0"), "LC points (τ = 3)"),
    Claim("even_mixture_best", "05_mixture_ratio", "Section 5.2, Figure 4",
          "The even mixture r = 0.5 is the best on-policy fraction",
          "r = 0.5 minus its closest competitor (by mean LC), LC win rate", +1),
    Claim("quality_filter_best", "06_filtering", "Section 5.3, Figure 5",
          "Of the four filters of the off-policy data, quality helps off-policy DPO most",
          "quality minus the mean of the other three criteria, LC win rate, averaged over the fractions p", +1),
    Claim("filtered_mix_beats_plain", "06_filtering", "Section 5.3, Figure 6",
          "Mixing on-policy pairs with quality-filtered off-policy pairs beats the unfiltered mixture",
          "filtered minus unfiltered mixture, LC win rate", +1),
)
BY_ID = {c.id: c for c in CLAIMS}


def verdict(direction: int, lo: float, hi: float) -> str:
    """The reading of a 95% interval [lo, hi] of a quantity the paper predicts to have sign ``direction``."""
    if direction not in (1, -1):
        raise ValueError(f"direction must be +1 or -1, got {direction!r}")
    if lo is None or hi is None or math.isnan(lo) or math.isnan(hi):
        return NOT_RUN
    if lo > hi:
        raise ValueError(f"interval [{lo}, {hi}] has lo > hi")
    if lo > 0 or hi < 0:
        return AGREES if (lo > 0) == (direction > 0) else DISAGREES
    return INCONCLUSIVE


def measured(estimate: float, lo: float, hi: float, unit: str = "LC points", **extra) -> dict:
    """What a chapter records for a claim: the estimate, its 95% interval and unit (``extra``: what else helps)."""
    if not lo <= estimate <= hi:
        raise ValueError(f"estimate {estimate} outside its interval [{lo}, {hi}]")
    return {"estimate": float(estimate), "lo": float(lo), "hi": float(hi), "unit": unit, **extra}


def _ours(m: dict | None) -> str:
    if not m:
        return NOT_RUN
    return f"{m['estimate']:+.2f} [{m['lo']:+.2f}, {m['hi']:+.2f}] {m['unit']}"


def line(claim_id: str, m: dict | None) -> str:
    """The verdict line a chapter ends with and the results page repeats (Markdown)."""
    c = BY_ID[claim_id]
    v = verdict(c.direction, m["lo"], m["hi"]) if m else NOT_RUN
    return (f"**Verdict: {v}.** *{c.text}* ({c.where}). Measured: {c.measure}. Paper: {c.paper()}; "
            f"this run: {_ours(m)} (95% interval).")


def table(results: dict) -> "object":
    """One row per claim, from a run's ``results.json``: the paper's number, ours with its interval, the verdict."""
    import pandas as pd

    rows = []
    for c in CLAIMS:
        m = results.get(c.chapter, {}).get("claims", {}).get(c.id)
        rows.append({"claim": c.text, "where": c.where, "measured": c.measure, "paper": c.paper(),
                     "this run (95% interval)": _ours(m),
                     "verdict": verdict(c.direction, m["lo"], m["hi"]) if m else NOT_RUN,
                     "chapter": c.chapter})
    return pd.DataFrame(rows)


def verdicts(chapter: str, recorded: dict | None) -> str:
    """The verdict lines of every claim of ``chapter`` (Markdown), from the claims it recorded."""
    recorded = recorded or {}
    return "\n\n".join(line(c.id, recorded.get(c.id)) for c in CLAIMS if c.chapter == chapter)

# the colour of each verdict on the results page
COLORS = {AGREES: "#1b7837", DISAGREES: "#b2182b", INCONCLUSIVE: "#666666", NOT_RUN: "#999999"}
