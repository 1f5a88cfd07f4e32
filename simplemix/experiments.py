"""From pairs to a number: the ``evaluation`` stage, and one :class:`Result` for every method and pair set.

Every method (the SFT policy itself, off, on, SimpleMix at any r, HyPO, DPO-Mix-P) and every hand-made pair set
(a filter ablation, a diversity scheme) ends in the same :class:`Result`: the training entries, the evaluation
entry, the judge's annotation table and the LC win rate. :func:`run_method` and :func:`evaluate_pairs` are the
two ways in, so a chapter has one path from pairs to a number and never re-runs a method to read its manifest.
Owns the ``evaluation`` and ``benchmarks`` stages and Result; imports world, methods, training, evaluation,
sampling and harness (the last step of the data flow before the notebooks).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from simplemix.methods import METHODS, run_name, train_method
from simplemix.sampling import Policy
from simplemix.store import Entry

if TYPE_CHECKING:
    import pandas as pd

    from simplemix.evaluation import LengthControlled
    from simplemix.world import Cell, World

TRAIN_TOTALS = ("rows", "on_policy", "off_policy", "global_step")  # summed over DPO-Mix-P's rounds


@dataclass(frozen=True)
class Result:
    """One evaluated policy of a cell: how it was trained (no entries for the SFT policy), its evaluation entry,
    the judge's annotations against the baseline and its LC win rate."""

    label: str
    cell: Cell
    policy: Policy
    trained: tuple[Entry, ...]
    evaluation: Entry
    annotations: "pd.DataFrame"
    lc: "LengthControlled"

    @property
    def training(self) -> dict:
        """Pairs (on/off), steps and final loss of the training, summed over rounds; empty for the SFT policy."""
        if not self.trained:
            return {}
        infos = [e.manifest["info"] for e in self.trained]
        # the label, not the stored name: a shared run keeps the name of whichever chapter trained it first
        name = self.label if len(infos) == 1 else f"{self.label} ({len(infos)} rounds)"
        return {"name": name, **{k: sum(i[k] for i in infos) for k in TRAIN_TOTALS},
                "train_loss": infos[-1]["train_loss"], "rounds": len(infos)}

    @property
    def win_rate(self) -> float:
        return self.evaluation.manifest["info"]["win_rate"]

    @property
    def lc_win_rate(self) -> float:
        return self.lc.lc_win_rate


def _evaluation_request(world: World, policy: Policy):
    from simplemix.config import SamplingConfig

    prof = world.profile
    sampling = dataclasses.replace(SamplingConfig(), backend=prof.sampling.backend,
                                   batch_token_budget=prof.sampling.batch_token_budget,
                                   tensor_parallel_size=prof.sampling.tensor_parallel_size, seed=prof.sampling.seed)
    config = {"policy": policy.key, "max_new_tokens": prof.evaluation.max_new_tokens, "backend": sampling.backend,
              "judge": world.judge_key(), "prompts": world.eval_key()}
    return sampling, config


def evaluation_key(world: World, policy: Policy) -> str:
    """The store key of ``policy``'s evaluation stage (for dry runs)."""
    from simplemix.store import default_code_version

    return world.store.key_for("evaluation", _evaluation_request(world, policy)[1], None,
                               default_code_version(__name__))


def evaluate_policy(world: World, policy: Policy, name: str, *, progress: bool = True) -> Entry:
    """Stage ``evaluation``: greedy outputs of ``policy`` on the world's evaluation prompts in alpaca_eval's
    ``model_outputs.json``, and the world judge's ``annotations.json`` against the world's baseline."""
    from simplemix.evaluation import model_outputs, win_rate, write_model_outputs
    from simplemix.sampling import load_backend

    ev = world.profile.evaluation
    sampling, config = _evaluation_request(world, policy)

    def compute(out: Path) -> dict:
        baseline = world.baseline()
        backend = load_backend(sampling, policy)
        outputs = model_outputs(backend, name, baseline, max_new_tokens=ev.max_new_tokens,
                                num_prompts=ev.num_prompts, seed=sampling.seed, progress=progress)
        del backend
        write_model_outputs(outputs, out / "model_outputs.json")
        judge = world.judge()
        table = judge.annotate(outputs, baseline)
        (out / "annotations.json").write_text(table.to_json(orient="records", force_ascii=False, indent=1))
        wr = win_rate(table)
        return {"name": name, "judge": judge.name, "leaderboard_comparable": judge.comparable_with_leaderboard,
                "prompts": len(outputs), "win_rate": wr.win_rate, "standard_error": wr.standard_error}

    return world.store.run("evaluation", compute, config)


def load_evaluation(entry: Entry) -> "pd.DataFrame":
    """The annotation table of an ``evaluation`` entry."""
    import pandas as pd

    return pd.read_json(entry.path / "annotations.json", orient="records")


def result(world: World, cell: Cell, label: str, trained: list[Entry] | tuple[Entry, ...] = (), *,
           progress: bool = False) -> Result:
    """The Result of the cell's SFT policy (no ``trained`` entries) or of the policy its last entry trained."""
    sft = world.sft_policy(cell)
    policy = Policy.trained(trained[-1], sft, label) if trained else sft
    entry = evaluate_policy(world, policy, label, progress=progress)
    table = load_evaluation(entry)
    return Result(label, cell, policy, tuple(trained), entry, table, world.lc(table))


def run_method(world: World, cell: Cell, method: str | None, label: str | None = None, *,
               on_fraction: float | None = None, progress: bool = False) -> Result:
    """Train (or fetch) ``method`` in ``cell`` and evaluate it; ``method`` None is the SFT policy itself."""
    if method is None:
        return result(world, cell, label or "SFT", progress=progress)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS} or None (the SFT policy)")
    trained = train_method(world, cell, method, on_fraction=on_fraction, progress=progress)
    return result(world, cell, label or run_name(method, on_fraction, world.profile), trained, progress=progress)


def run_methods(world: World, cell: Cell, methods: dict[str, str | None], *, on_fraction: float | None = None,
                progress: bool = False) -> dict[str, Result]:
    """{label: Result} for ``methods`` ({display label: method name or None for the SFT policy})."""
    return {label: run_method(world, cell, method, label, on_fraction=on_fraction, progress=progress)
            for label, method in methods.items()}


def evaluate_pairs(world: World, cell: Cell, pairs, name: str, *, progress: bool = False) -> Result:
    """DPO of the cell's SFT policy on any pair set (a filtered subset, another sampling scheme), evaluated."""
    from simplemix.methods import check
    from simplemix.training import train

    check(world.profile)
    entry = train(pairs, world.profile.training, world.sft_policy(cell), world.run_dir, name=name, progress=progress)
    return result(world, cell, name, [entry], progress=progress)


def benchmark_policy(world: World, policy: Policy, *, include_path=None, limit: int | None = None) -> Entry:
    """Stage ``benchmarks``: ``evaluation.benchmarks`` through lm-evaluation-harness for ``policy`` (a LoRA result
    is evaluated as its base plus the adapter); ``results.json`` holds the tidy table and the paper's average."""
    import json

    from simplemix.harness import run_benchmarks, write_results

    tasks = list(world.profile.evaluation.benchmarks)
    if not tasks:
        raise ValueError(f"profile {world.profile.name!r} lists no evaluation.benchmarks")
    path = policy.model.name_or_path
    model, model_args = path, {}
    adapter = Path(path) / "adapter_config.json"
    if adapter.exists():  # lm-eval's HF model applies the adapter itself
        model, model_args = json.loads(adapter.read_text())["base_model_name_or_path"], {"peft": path}
    config = {"policy": policy.key, "tasks": tasks, "limit": limit,
              "include_path": str(include_path) if include_path else None}

    def compute(out: Path) -> dict:
        dtype = policy.model.torch_dtype
        result = run_benchmarks(model, tasks, include_path=include_path, limit=limit, model_args=model_args,
                                dtype=dtype if dtype != "auto" else "auto")
        write_results(result, out / "results.json")
        return {"average": result.average, "scores": result.scores()}

    return world.store.run("benchmarks", compute, config)
