"""The figure helpers draw what they are given: bar heights, asymmetric interval whiskers, points per bin."""

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from simplemix import plotting  # noqa: E402


def _errorbars(ax):
    """The ErrorbarContainers of an axis: on their own (errorbar) or attached to bars (bar with yerr)."""
    from matplotlib.container import ErrorbarContainer

    found = {id(e): e for e in (getattr(c, "errorbar", c) for c in ax.containers)}  # a bar's is listed twice
    return [c for c in found.values() if isinstance(c, ErrorbarContainer)]


def _whiskers(ax, column: int = 1):
    return sorted(tuple(np.round(seg[:, column], 6)) for c in _errorbars(ax) for coll in c.lines[2]
                  for seg in coll.get_segments())


def _ci_table():
    return pd.DataFrame({"category": ["math", "coding", "math", "coding"], "model": ["a", "a", "b", "b"],
                         "wr": [10.0, 20.0, 30.0, 40.0], "lo": [5.0, 18.0, 25.0, 30.0], "hi": [12.0, 30.0, 31.0, 45.0]})


def test_bars_with_asymmetric_intervals():
    ax = plotting.bars_by_category(_ci_table(), "wr", "model", interval=("lo", "hi"))
    heights = sorted(p.get_height() for p in ax.patches)
    assert heights == [10.0, 20.0, 30.0, 40.0]
    assert _whiskers(ax) == [(5.0, 12.0), (18.0, 30.0), (25.0, 31.0), (30.0, 45.0)]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["Math", "Coding"]


def test_lines_by_bin_and_delta_points():
    table = pd.DataFrame({"bin": ["0-500", "500-1000"] * 2, "model": ["on", "on", "off", "off"],
                          "wr": [1.0, 2.0, 3.0, 4.0], "lo": [0.5, 1.5, 2.5, 3.5], "hi": [1.5, 2.5, 3.5, 4.5]})
    ax = plotting.lines_by_bin(table, "wr", "model", interval=("lo", "hi"))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0-500", "500-1000"]
    assert [c.lines[0].get_ydata().tolist() for c in _errorbars(ax)] == [[1.0, 2.0], [3.0, 4.0]]
    assert _whiskers(ax) == [(0.5, 1.5), (1.5, 2.5), (2.5, 3.5), (3.5, 4.5)]
    deltas = pd.DataFrame({"group": ["math", "creative"], "d": [3.0, -2.0], "lo": [1.0, -5.0], "hi": [5.0, 0.5]})
    ax = plotting.delta_points(deltas, "d", interval=("lo", "hi"))
    offsets = ax.collections[-1].get_offsets()
    assert offsets[:, 0].tolist() == pytest.approx([3.0, -2.0])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["Math", "Creative writing"]  # first row on top
    assert _whiskers(ax, column=0) == [(-5.0, 0.5), (1.0, 5.0)]
