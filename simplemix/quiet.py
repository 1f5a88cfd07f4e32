"""Library chatter off for the length of one of the package's calls, so the book's pages show results, not logs.

What it silences, each where it starts and only while the ``with`` block runs (everything is put back after):

- DeepSpeed's ``Setting accelerator to CPU`` line (its own ``DeepSpeed`` logger, which prints to stdout) and
  bitsandbytes' ``Failed to load CPU gemm_4bit_forward`` (an optional kernel; the plain CPU path is used);
- transformers' and datasets' log records below ERROR, and the deprecation warnings (``FutureWarning``,
  ``DeprecationWarning``) that TRL's calls into transformers raise: a reader can act on none of them;
- tqdm's ``IProgress not found`` warning (tqdm.auto imported in a kernel without ipywidgets);
- with ``bars=False``, the progress bars of transformers ("Loading weights"), datasets ("Generating train
  split", "Map"), huggingface_hub and TRL ("Computing reference log probs", which reads only ``TQDM_DISABLE``).

Errors are never silenced, and warnings from the package itself pass through.
Owns no state beyond the block; imports nothing heavy until entered.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings

# loggers of the libraries whose records below ERROR are noise on a page (the ones that print at import included)
LOGGERS = ("DeepSpeed", "bitsandbytes", "transformers", "datasets", "accelerate", "peft", "trl", "torch.distributed")
# modules whose deprecation notices concern the libraries' own calls to each other
DEPRECATING = r"(transformers|trl|peft|accelerate|datasets|torch|deepspeed|bitsandbytes)(\.|$)"


class _BelowError(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


@contextlib.contextmanager
def quiet(bars: bool = True):
    """Silence the libraries' warnings and log lines (and their progress bars unless ``bars``) inside the block."""
    drop = _BelowError()
    loggers = [logging.getLogger(name) for name in LOGGERS]
    with contextlib.ExitStack() as stack, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"IProgress not found")
        for category in (FutureWarning, DeprecationWarning):
            warnings.filterwarnings("ignore", category=category, module=DEPRECATING)
        levels = {logger: logger.level for logger in loggers}
        for logger in loggers:
            # a level for the records of child loggers (bitsandbytes.backends.cpu.ops), and a filter for the
            # logger's own: DeepSpeed sets its logger's level again when it is imported
            logger.setLevel(logging.ERROR)
            logger.addFilter(drop)
        stack.callback(_restore, levels, drop)
        if not bars:
            stack.enter_context(_no_bars())
        yield


def _restore(levels: dict, drop: logging.Filter) -> None:
    for logger, level in levels.items():
        logger.removeFilter(drop)
        if logger.level == logging.ERROR:  # unless the library set its own level meanwhile
            logger.setLevel(level)


@contextlib.contextmanager
def _no_bars():
    """transformers', datasets' and huggingface_hub's bars off, and ``TQDM_DISABLE`` set (TRL reads only that)."""
    with contextlib.ExitStack() as undo:
        if _importable("transformers"):
            from transformers.utils import logging as hf_logging

            if hf_logging.is_progress_bar_enabled():
                hf_logging.disable_progress_bar()
                undo.callback(hf_logging.enable_progress_bar)
        if _importable("datasets"):
            import datasets

            if datasets.is_progress_bar_enabled():
                datasets.disable_progress_bars()
                undo.callback(datasets.enable_progress_bars)
        if _importable("huggingface_hub"):
            from huggingface_hub import utils as hub_utils

            if not hub_utils.are_progress_bars_disabled():
                hub_utils.disable_progress_bars()
                undo.callback(hub_utils.enable_progress_bars)
        before = os.environ.get("TQDM_DISABLE")
        os.environ["TQDM_DISABLE"] = "1"
        undo.callback(lambda: os.environ.pop("TQDM_DISABLE", None) if before is None
                      else os.environ.__setitem__("TQDM_DISABLE", before))
        yield


def _importable(name: str) -> bool:
    import importlib.util

    return name in sys.modules or importlib.util.find_spec(name) is not None
