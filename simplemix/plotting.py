"""Figures in one style: per-category bars, distributions, and a provenance line on every figure.

Every figure a reader compares carries a footer saying what produced it (profile, models, hardware),
so a small-scale measurement is never mistaken for the paper's.
Owns the book's figure style; imports nothing else of simplemix.
"""

from __future__ import annotations

import platform
from typing import Sequence

CATEGORY_LABELS = {"math": "Math", "coding": "Coding", "creative": "Creative writing",
                   "recommendation": "Recommendation"}
# One colour per source or method, the same in every chapter.
COLORS = {
    "SFT": "#4d4d4d", "sft": "#4d4d4d", "on-policy": "#1f77b4", "off-policy": "#ff7f0e", "SimpleMix": "#2ca02c",
    "HyPO": "#9467bd", "DPO-Mix-P": "#8c564b", "baseline": "#7f7f7f", "paper": "#bbbbbb",
}
FALLBACK = ["#17becf", "#bcbd22", "#e377c2", "#d62728", "#aec7e8", "#ffbb78", "#98df8a"]


def book_style() -> None:
    """Set up a notebook for the book: one figure style, quiet library progress bars, readable tables.

    Called once at the top of each chapter; it changes global settings, so the package never calls it
    on import.
    """
    import matplotlib as mpl
    import pandas as pd

    try:  # in a Jupyter kernel, draw inline even when MPLBACKEND (e.g. Agg in CI) says otherwise
        from IPython import get_ipython

        shell = get_ipython()
        if shell is not None and type(shell).__name__ == "ZMQInteractiveShell":
            shell.run_line_magic("matplotlib", "inline")
    except ImportError:
        pass

    mpl.rcParams.update({"figure.dpi": 110, "savefig.dpi": 110, "axes.titlesize": 11, "axes.labelsize": 10,
                         "font.size": 9})
    pd.set_option("display.max_colwidth", 90)
    pd.set_option("display.width", 140)
    try:
        import datasets
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        datasets.disable_progress_bars()  # "Flattening the indices" and friends are not part of a chapter
    except ImportError:
        pass


def color_for(name: str, i: int) -> str:
    return COLORS.get(name, FALLBACK[i % len(FALLBACK)])


def hardware_label() -> str:
    """'CPU x2' or the GPU names, from what is already loaded (never imports torch itself)."""
    import os
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        return f"{len(names)} x {names[0]}"
    return f"CPU x{os.cpu_count()} ({platform.machine()})"


def provenance(fig, profile: str, models: str, note: str = "") -> None:
    """The footer that labels a figure with what produced it."""
    text = f"profile: {profile} | models: {models} | hardware: {hardware_label()}"
    fig.text(0.01, 0.005, text + (f" | {note}" if note else ""), fontsize=7, color="#555555", ha="left", va="bottom")


def _yerr(rows, value: str, error: str | None, interval: tuple[str, str] | None):
    """Symmetric errors from one column, or asymmetric ones from (low, high) interval columns."""
    import numpy as np

    if interval:
        lo, hi = interval
        return np.vstack([rows[value] - rows[lo], rows[hi] - rows[value]])
    return rows[error].to_numpy() if error else None


def bars_by_category(table, value: str, group: str, *, ax=None, error: str | None = None,
                     interval: tuple[str, str] | None = None, categories: Sequence[str] | None = None,
                     ylabel: str | None = None, category: str = "category"):
    """Grouped bars: one group of bars per category, one bar per ``group`` value (a pandas long table); error
    bars from an ``error`` column or from ``interval`` = (low, high) columns such as bootstrap 95% CIs."""
    import matplotlib.pyplot as plt
    import numpy as np

    if ax is None:
        _, ax = plt.subplots(figsize=(8, 3.6))
    categories = list(categories or dict.fromkeys(table[category]))
    groups = list(dict.fromkeys(table[group]))
    width = 0.8 / len(groups)
    x = np.arange(len(categories))
    for i, name in enumerate(groups):
        rows = table[table[group] == name].set_index(category).reindex(categories)
        yerr = _yerr(rows, value, error, interval)
        ax.bar(x + (i - (len(groups) - 1) / 2) * width, rows[value].to_numpy(), width, yerr=yerr,
               label=str(name), color=color_for(str(name), i), capsize=2 if yerr is not None else 0)
    ax.set_xticks(x, [CATEGORY_LABELS.get(c, c) for c in categories])
    ax.set_ylabel(ylabel or value)
    ax.legend(fontsize=8, ncols=min(len(groups), 6), frameon=False, loc="upper left", bbox_to_anchor=(0, 1.16))
    ax.spines[["top", "right"]].set_visible(False)
    return ax


def distributions(table, value: str, group: str, *, ax=None, bins: int = 30, xlabel: str | None = None):
    """Overlaid step histograms of ``value``, one per ``group`` value, normalised to densities."""
    import matplotlib.pyplot as plt
    import numpy as np

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.4))
    edges = np.histogram_bin_edges(table[value].to_numpy(), bins=bins)
    for i, name in enumerate(dict.fromkeys(table[group])):
        ax.hist(table.loc[table[group] == name, value], bins=edges, density=True, histtype="step", linewidth=1.6,
                label=str(name), color=color_for(str(name), i))
    ax.set_xlabel(xlabel or value)
    ax.set_ylabel("density")
    ax.legend(fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return ax


def lines_by_bin(table, value: str, group: str, *, interval: tuple[str, str] | None = None, bins: str = "bin",
                 ax=None, xlabel: str = "generation length (characters)", ylabel: str | None = None):
    """One line per ``group`` value across ordered bins (e.g. win rate by generation length, the paper's
    Figure 3), with interval error bars; points are offset a little so overlapping intervals stay readable."""
    import matplotlib.pyplot as plt
    import numpy as np

    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.4))
    order = list(dict.fromkeys(table[bins]))
    groups = list(dict.fromkeys(table[group]))
    x = np.arange(len(order))
    for i, name in enumerate(groups):
        rows = table[table[group] == name].set_index(bins).reindex(order)
        offset = (i - (len(groups) - 1) / 2) * 0.08
        ax.errorbar(x + offset, rows[value], yerr=_yerr(rows, value, None, interval), marker="o", markersize=4,
                    capsize=2, linewidth=1.4, label=str(name), color=color_for(str(name), i))
    ax.set_xticks(x, order)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel or value)
    ax.legend(fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    return ax


def delta_points(table, value: str, *, interval: tuple[str, str] | None = None, label: str = "group", ax=None,
                 xlabel: str = "on-policy minus off-policy (points)"):
    """Horizontal point-and-interval plot of differences per row (e.g. on-minus-off per category), with a zero line:
    an interval that crosses zero is no evidence of a difference."""
    import matplotlib.pyplot as plt
    import numpy as np

    rows = table.reset_index()
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 0.4 * len(rows) + 1.2))
    y = np.arange(len(rows))[::-1]
    xerr = _yerr(rows, value, None, interval)
    colors = [COLORS["on-policy"] if v > 0 else COLORS["off-policy"] for v in rows[value]]
    ax.errorbar(rows[value], y, xerr=xerr, fmt="none", ecolor="#888888", capsize=2)
    ax.scatter(rows[value], y, color=colors, zorder=3, s=18)
    ax.axvline(0, color="#444444", linewidth=0.8)
    ax.set_yticks(y, [CATEGORY_LABELS.get(str(v), str(v)) for v in rows[label]])
    ax.set_xlabel(xlabel)
    ax.spines[["top", "right"]].set_visible(False)
    return ax
