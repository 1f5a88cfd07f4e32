"""Where the project's own files are (data, recipes, notebooks, book sources): a checkout's tree, else the copy a
wheel ships inside the package (``simplemix/_tree``, written at build time by ``setup.py``)."""

from __future__ import annotations

import importlib.resources
from functools import cache
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent
TREE = ("data", "recipes", "notebooks", "book", "_config.yml", "_toc.yml")  # what a wheel bundles


class MissingProjectFiles(RuntimeError):
    """Neither a checkout nor the installed package holds the project's files."""


def is_checkout() -> bool:
    """True when the package runs from a source tree (a clone or an editable install)."""
    return (CHECKOUT / "pyproject.toml").is_file() and (CHECKOUT / "recipes").is_dir()


@cache
def root() -> Path:
    """The folder holding ``data/``, ``recipes/``, ``notebooks/`` and the book sources (not checked: `require`)."""
    return CHECKOUT if is_checkout() else Path(str(importlib.resources.files("simplemix") / "_tree"))


def require() -> Path:
    """`root`, or a one-line error when the installed package carries no project files."""
    top = root()
    if not all((top / name).exists() for name in TREE):
        raise MissingProjectFiles(
            f"simplemix needs its data, recipes and notebooks and {top} does not hold them: install from a wheel "
            "built from a checkout (`pip install .` there), or run from the checkout")
    return top


def path(*parts: str) -> Path:
    """A path inside the project's tree, e.g. ``path("data", "alpaca_eval")``."""
    return root().joinpath(*parts)
