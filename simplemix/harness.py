"""The paper's eight lm-evaluation-harness benchmarks: task names, the metric reported for each, and the average.

SimpleMix evaluates with lm-evaluation-harness (Appendix D) on ARC-Challenge, CommonsenseQA, HellaSwag, MMLU,
OpenBookQA, PIQA, Winogrande and IFEval, and §4 defines the **Avg. Score**: "We report the average scores of
the seven tasks + Ifeval prompt level loose accuracy as Avg. Score". It is the plain, unweighted mean of the
eight columns of Tables 4 and 5 (every published row reproduces to within 0.005 of rounding); MMLU counts
once, with lm-eval's own ``mmlu`` group score (the question-weighted mean of its 57 subjects).

Which metric for the seven multiple-choice tasks? The paper does not name it, and lm-eval reports ``acc`` and
``acc_norm`` for ARC-Challenge, HellaSwag, OpenBookQA and PIQA (CommonsenseQA, MMLU and Winogrande report only
``acc``). The published numbers settle it: the Llama-3.1-8B-Instruct baseline scores 59.14 on HellaSwag and
33.40 on OpenBookQA, which are that model's zero-shot *unnormalised* accuracies (its ``acc_norm`` is near 79
and 43; the Open LLM Leaderboard's length-normalised convention would be far higher). So every
multiple-choice column is ``acc``; ``acc_norm`` still appears in the table (``reported=False``) for
comparison, and ``metrics=`` switches any column to it. The numbers are also consistent with each task's
default shot count (0 for all eight) and with prompts given without a chat template (the baseline's 44.00 on
IFEval is far below what the same model reaches with its template), which are this wrapper's defaults.
Owns the lm-eval wrapper; imports nothing else of simplemix at import time.
"""

from __future__ import annotations

import difflib
import importlib.util
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class PaperTask:
    """One column of the paper's benchmark table: the lm-eval task (or group) and the metric it reports."""

    task: str
    metric: str
    column: str  # the header in Tables 4 and 5


PAPER_TASKS: dict[str, PaperTask] = {
    "ARC-Challenge": PaperTask("arc_challenge", "acc", "ARC-C"),
    "CommonsenseQA": PaperTask("commonsense_qa", "acc", "CQA"),
    "HellaSwag": PaperTask("hellaswag", "acc", "HSwag"),
    "MMLU": PaperTask("mmlu", "acc", "MMLU"),
    "OpenBookQA": PaperTask("openbookqa", "acc", "OQA"),
    "PIQA": PaperTask("piqa", "acc", "PiQA"),
    "Winogrande": PaperTask("winogrande", "acc", "WG"),
    "IFEval": PaperTask("ifeval", "prompt_level_loose_acc", "Ifeval"),
}

TABLE_COLUMNS = ["benchmark", "task", "metric", "value", "stderr", "reported"]
# Imported by lm-eval's IFEval task (the ``ifeval`` extra of lm-eval, in our ``eval`` extra)
IFEVAL_MODULES = ("langdetect", "immutabledict", "nltk")


@dataclass
class BenchmarkResults:
    """A tidy table of every metric lm-eval reported, the paper's average, and lm-eval's own results dict."""

    table: pd.DataFrame
    average: float  # unweighted mean of the reported metric over benchmarks, as a fraction (lm-eval's unit)
    raw: dict = field(repr=False)

    def scores(self) -> dict[str, float]:
        """The reported value per benchmark, as fractions."""
        rows = self.table[self.table["reported"]]
        return dict(zip(rows["benchmark"], rows["value"].astype(float)))

    def paper_row(self) -> dict[str, float]:
        """The row as the paper prints it: percentages under the paper's column names, then "Avg. Score"."""
        row = {PAPER_TASKS[b].column if b in PAPER_TASKS else b: 100 * v for b, v in self.scores().items()}
        return row | {"Avg. Score": 100 * self.average}


def resolve_tasks(tasks: Sequence[str], metrics: Mapping[str, str] | None = None) -> list[tuple[str, str, str | None]]:
    """(benchmark, lm-eval task, metric) for each name: a paper benchmark, its lm-eval task name, or any task.

    Tasks outside the paper take their metric from ``metrics`` or, when absent (None), ``acc`` if the task
    reports it, else its first metric. ``metrics`` may be keyed by benchmark or by lm-eval task name.
    """
    if isinstance(tasks, str):
        tasks = [tasks]
    metrics = dict(metrics or {})
    by_task = {spec.task: name for name, spec in PAPER_TASKS.items()}
    by_lower = {name.lower(): name for name in PAPER_TASKS}
    resolved, seen = [], set()
    for name in tasks:
        benchmark = by_lower.get(str(name).lower()) or by_task.get(name)
        if benchmark is not None:
            spec = PAPER_TASKS[benchmark]
            metric = metrics.pop(benchmark, None) or metrics.pop(spec.task, None) or spec.metric
            entry = (benchmark, spec.task, metric)
        else:
            entry = (name, name, metrics.pop(name, None))
        if entry[1] in seen:
            raise ValueError(f"task {entry[1]!r} is requested twice")
        seen.add(entry[1])
        resolved.append(entry)
    if metrics:
        raise ValueError(f"metrics given for tasks that are not requested: {sorted(metrics)}")
    return resolved


def _split_metric_key(key: str) -> tuple[str, str] | None:
    """lm-eval keys its numbers "metric,filter" and "metric_stderr,filter"; other keys (alias, ...) are None."""
    if "," not in key:
        return None
    metric, filt = key.split(",", 1)
    return metric, filt


def _number(value: Any) -> float:
    """A float, NaN for lm-eval's "N/A" stderr (bootstrap_iters=0 or a single document)."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def tidy_results(results: Mapping[str, Mapping[str, Any]], selection: Sequence[tuple[str, str, str | None]]):
    """One row per (benchmark, metric) from lm-eval's ``results["results"]``; the chosen metric is ``reported``.

    A filter other than lm-eval's default ``none`` is kept in the metric name as "metric,filter".
    """
    import pandas as pd

    rows = []
    for benchmark, task, metric in selection:
        if task not in results:
            raise KeyError(f"lm-eval returned no results for task {task!r} (got {sorted(results)})")
        numbers = results[task]
        found = []
        for key, value in numbers.items():
            parts = _split_metric_key(key)
            if parts is None or parts[0].endswith("_stderr"):
                continue
            name = parts[0] if parts[1] == "none" else key
            stderr = numbers.get(f"{parts[0]}_stderr,{parts[1]}")
            found.append(name)
            rows.append({"benchmark": benchmark, "task": task, "metric": name, "value": _number(value),
                         "stderr": _number(stderr), "reported": False})
        if not found:
            raise KeyError(f"lm-eval returned no metrics for task {task!r}: {dict(numbers)}")
        chosen = metric or ("acc" if "acc" in found else found[0])
        if chosen not in found:
            raise KeyError(f"task {task!r} has no metric {chosen!r}; lm-eval reported {found}")
        rows[len(rows) - len(found) + found.index(chosen)]["reported"] = True
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def paper_average(table: pd.DataFrame) -> float:
    """The paper's Avg. Score: the unweighted mean of the reported metric over the benchmarks in the table."""
    reported = table[table["reported"]]
    if reported["benchmark"].duplicated().any():
        raise ValueError("more than one reported metric for a benchmark")
    if reported.empty:
        raise ValueError("no reported metric to average")
    return float(reported["value"].astype(float).mean())


def _task_manager(names: Sequence[str], include_path, include_defaults: bool | None):
    """lm-eval's TaskManager; with include_defaults=None the built-in index (about 5 s) is read only if needed."""
    from lm_eval.tasks import TaskManager

    paths = [str(p) for p in ([include_path] if isinstance(include_path, (str, Path)) else include_path or [])]
    for path in paths:
        if not Path(path).is_dir():
            raise FileNotFoundError(f"include_path {path} is not a directory")
    if include_defaults is None:
        if paths:
            local = TaskManager(include_path=paths, include_defaults=False)
            if all(name in local.all_tasks for name in names):
                return local
        include_defaults = True
    if not paths and not include_defaults:
        raise ValueError("include_defaults=False needs an include_path with the tasks")
    return TaskManager(include_path=paths or None, include_defaults=include_defaults)


def _check_known(names: Sequence[str], known: Sequence[str], include_path) -> None:
    """Raise one ValueError naming every unknown task, with close matches among the paper's and lm-eval's names."""
    unknown = [n for n in names if n not in known]
    if not unknown:
        return
    candidates = list(PAPER_TASKS) + list(known)
    hints = []
    for name in unknown:
        close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
        hints.append(f"{name!r}" + (f" (did you mean {', '.join(map(repr, close))}?)" if close else ""))
    where = f"lm-eval's tasks or {include_path}" if include_path else "lm-eval's tasks (include_path adds local YAMLs)"
    raise ValueError(f"unknown task(s): {'; '.join(hints)}. Paper benchmarks: {', '.join(PAPER_TASKS)}; "
                     f"other names must be in {where}.")


def _check_chat_template(model: str, model_args: Mapping[str, Any]) -> None:
    """Fail before loading weights when a chat template is requested and the tokenizer has none."""
    from transformers import AutoTokenizer

    source = model_args.get("tokenizer") or model
    if not isinstance(source, str):
        return
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=bool(model_args.get("trust_remote_code")))
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"apply_chat_template=True but the tokenizer of {source} has no chat template")


def run_benchmarks(
    model: str | Path,
    tasks: Sequence[str] = tuple(PAPER_TASKS),
    *,
    apply_chat_template: bool | str = False,
    num_fewshot: int | None = None,
    limit: int | float | None = None,
    batch_size: int | str = 8,
    device: str | None = None,
    dtype: str = "auto",
    metrics: Mapping[str, str] | None = None,
    include_path: str | Path | Sequence[str | Path] | None = None,
    include_defaults: bool | None = None,
    model_args: Mapping[str, Any] | None = None,
    log_samples: bool = False,
    bootstrap_iters: int = 100_000,
    output_path: str | Path | None = None,
) -> BenchmarkResults:
    """Evaluate a Hugging Face causal LM (local directory or hub id) with ``lm_eval.simple_evaluate``.

    ``tasks`` are paper benchmark names (``PAPER_TASKS``, case-insensitive), their lm-eval names, or any other
    lm-eval task, including tasks defined by YAMLs under ``include_path``. Task names and the chat template
    are checked before the model loads; ``metrics`` picks another reported metric per task (checked against what
    lm-eval returns). ``apply_chat_template`` wraps each prompt in the tokenizer's template (a string names one
    of several templates); few-shot examples then become turns.
    ``num_fewshot=None`` keeps each task's default (0 for all eight paper tasks); ``limit`` caps documents per
    (sub)task and is for smoke tests only. ``model_args`` go to lm-eval's ``HFLM`` (e.g. ``peft``,
    ``max_length``, ``trust_remote_code``). The IFEval task needs ``simplemix[eval]`` and NLTK's ``punkt_tab``
    data (lm-eval downloads it on first use). lm-eval seeds Python's, NumPy's and torch's RNGs.
    Returns every metric in a tidy table and the paper's average; ``output_path`` also writes them as JSON.
    """
    selection = resolve_tasks(tasks, metrics)
    names = [task for _, task, _ in selection]
    manager = _task_manager(names, include_path, include_defaults)
    _check_known(names, manager.all_tasks, include_path)
    if "ifeval" in names:
        missing = [m for m in IFEVAL_MODULES if importlib.util.find_spec(m) is None]
        if missing:
            raise ImportError(f"IFEval needs {', '.join(missing)}: pip install 'simplemix[eval]'")
    model = str(model)
    extra = dict(model_args or {})
    if apply_chat_template:
        _check_chat_template(model, extra)

    import lm_eval
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    raw = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": model, "dtype": dtype, **extra},
        tasks=names,
        num_fewshot=num_fewshot,
        limit=limit,
        batch_size=batch_size,
        device=device,
        apply_chat_template=apply_chat_template,
        fewshot_as_multiturn=bool(apply_chat_template),
        task_manager=manager,
        log_samples=log_samples,
        bootstrap_iters=bootstrap_iters,
    )
    table = tidy_results(raw["results"], selection)
    result = BenchmarkResults(table=table, average=paper_average(table), raw=raw)
    if output_path is not None:
        write_results(result, output_path)
    return result


def write_results(result: BenchmarkResults, path: str | Path) -> Path:
    """Write the average, the per-benchmark scores, the tidy table and lm-eval's results dict as one JSON file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "average": result.average,
        "scores": result.scores(),
        "paper_row": result.paper_row(),
        "table": result.table.to_dict(orient="records"),
        "lm_eval": result.raw,
    }
    path.write_text(json.dumps(_jsonable(payload), indent=2, allow_nan=False) + "\n")
    return path


def _jsonable(value: Any) -> Any:
    """Strict JSON from lm-eval's results: NaN becomes null; NumPy scalars, sets, dtypes and functions convert."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (str, bytes)):
        try:
            value = value.item()
        except (TypeError, ValueError, RuntimeError):  # arrays and tensors with more than one element
            value = value.tolist()
            return _jsonable(value)
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else value
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)
