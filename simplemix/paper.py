"""The paper's reported numbers, transcribed once into ``data/paper/*.csv`` (see ``data/paper/README.md``).

Each table keeps the paper's own column names (``"ARC-C"``, ``"Avg. Score"``, ``"Alpaca Eval 2.0 LC (%)"`` ...)
and identifies its rows with ``base_model``, ``dataset`` and ``method`` / ``method_id`` (the ids of
:data:`simplemix.methods.METHODS`, plus ``sft``), so a chapter can set its own results beside them.
Owns the transcribed paper tables; imports nothing else of simplemix.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from simplemix import resources

if TYPE_CHECKING:
    import pandas as pd

PAPER_DIR = resources.path("data", "paper")


def tables() -> list[str]:
    """Names of the transcribed tables (the CSV file names without ``.csv``), sorted."""
    return sorted(p.stem for p in PAPER_DIR.glob("*.csv"))


def table(name: str) -> pd.DataFrame:
    """The transcribed table ``name`` (e.g. ``"table2_main_results"``) as printed; blank cells read as missing."""
    import pandas as pd

    path = PAPER_DIR / f"{name}.csv"
    if not path.is_file():
        raise KeyError(f"no paper table {name!r}; known: {', '.join(tables())}")
    # Only blank cells are missing: "none" (the dataset of the SFT rows) must stay a string.
    return pd.read_csv(path, keep_default_na=False, na_values=[""])
