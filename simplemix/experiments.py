"""From pairs to a number: the ``evaluation`` stage, and one :class:`Result` for every method and pair set.

Every method (the SFT policy itself, off, on, SimpleMix at any r, HyPO, DPO-Mix-P) and every hand-made pair set
(a filter ablation, a diversity scheme) ends in the same :class:`Result`: the training entries, the evaluation
entry, the judge's annotation table and the LC win rate. :func:`run_method` and :func:`evaluate_pairs` are the
two ways in, so a chapter has one path from pairs to a number and never re-runs a method to read its manifest.

Replicates: every comparison runs over the profile's ``seeds``. :func:`replicate` is the world of one replicate
seed (sampling, mixing and training seeds offset together), :class:`Replicates` one Result per seed, and
:func:`interval` / :func:`difference` a two-level bootstrap over seeds and prompts (:func:`bootstrap_draws` is its
pure core, on arrays). Owns the ``evaluation`` and ``benchmarks`` stages, Result and Replicates; imports world,
methods, training, evaluation, sampling and harness (the last step of the data flow before the notebooks).
"""

from __future__ import annotations

import dataclasses
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Mapping, Sequence

from simplemix.methods import METHODS, run_name, train_method
from simplemix.sampling import Policy
from simplemix.store import Entry

if TYPE_CHECKING:
    import numpy as np
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
    from simplemix.evaluation import model_outputs, stratified, win_rate, write_model_outputs
    from simplemix.sampling import load_backend

    ev = world.profile.evaluation
    sampling, config = _evaluation_request(world, policy)

    def compute(out: Path) -> dict:
        baseline = world.baseline()
        rows = baseline if ev.num_prompts is None else stratified(
            baseline, ev.num_prompts, world.categories([r["instruction"] for r in baseline]))
        backend = load_backend(sampling, policy)
        outputs = model_outputs(backend, name, rows, max_new_tokens=ev.max_new_tokens, seed=sampling.seed,
                                progress=progress)
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


# ------------------------------------------------------------------------------------------------ replicates
STATS = ("win_rate", "lc_win_rate")
_REPLICATE_WORLDS: "weakref.WeakKeyDictionary[World, dict[int, World]]" = weakref.WeakKeyDictionary()


def check_seeds(seeds: Sequence[int]) -> tuple[int, ...]:
    """``seeds`` as a tuple, checked as ``Profile.seeds`` is: non-empty, unique integers >= 0."""
    seeds = tuple(seeds)
    if not seeds:
        raise ValueError("seeds: at least one replicate seed is needed")
    bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int) or s < 0]
    if bad:
        raise ValueError(f"seeds: replicate seeds are integers >= 0, got {bad} in {list(seeds)}")
    if len(set(seeds)) < len(seeds):
        raise ValueError(f"seeds: replicate seeds must be unique, got {list(seeds)}")
    return seeds


def _seeds(world: World, seeds: Sequence[int] | None) -> tuple[int, ...]:
    return check_seeds(world.profile.seeds if seeds is None else seeds)


def replicate(world: World, seed: int) -> World:
    """The world of replicate ``seed``: the same profile with ``sampling.seed``, ``mixing.seed`` and
    ``training.seed`` offset by ``seed`` together, over the same run store. Every stage those seeds feed is keyed
    on them, so replicates never share a stage they should not, and replicate 0 is ``world`` itself (a cache hit
    of the run without replicates). Offsets are relative to ``world``'s own seeds; one world per (world, seed) is
    kept, so a replicate's cached pieces (the miniature world's LC difficulty) are computed once."""
    from simplemix.world import resolve

    (seed,) = check_seeds([seed])
    if seed == 0:
        return world
    known = _REPLICATE_WORLDS.setdefault(world, {})
    if seed not in known:
        prof = world.profile
        offset = dataclasses.replace(
            prof, sampling=dataclasses.replace(prof.sampling, seed=prof.sampling.seed + seed),
            mixing=dataclasses.replace(prof.mixing, seed=prof.mixing.seed + seed),
            training=dataclasses.replace(prof.training, seed=prof.training.seed + seed))
        known[seed] = resolve(offset, world.run_dir)
    return known[seed]


@dataclass(frozen=True)
class Replicates:
    """One method (or pair set) of a cell over replicate seeds: one :class:`Result` per seed, in ``seeds`` order.
    ``win_rate`` and ``lc_win_rate`` are the means over seeds of each seed's rate; :func:`interval` gives their
    two-level bootstrap intervals."""

    label: str
    cell: Cell
    seeds: tuple[int, ...]
    results: tuple[Result, ...]

    def __post_init__(self):
        object.__setattr__(self, "seeds", check_seeds(self.seeds))
        object.__setattr__(self, "results", tuple(self.results))
        if len(self.results) != len(self.seeds):
            raise ValueError(f"Replicates {self.label!r}: {len(self.results)} results for seeds {list(self.seeds)}")

    @property
    def win_rate(self) -> float:
        return float(sum(r.win_rate for r in self.results) / len(self.results))

    @property
    def lc_win_rate(self) -> float:
        return float(sum(r.lc_win_rate for r in self.results) / len(self.results))

    def result(self, seed: int) -> Result:
        """The Result of one replicate seed."""
        return self.results[self.seeds.index(seed)]

    @property
    def per_seed(self) -> "pd.DataFrame":
        """One row per seed: win rate, LC win rate, prompts evaluated, and the training totals (name, rows,
        on_policy, off_policy, global_step, train_loss, rounds) where the policy was trained."""
        import pandas as pd

        rows = [{"seed": s, "win_rate": r.win_rate, "lc_win_rate": r.lc_win_rate, "prompts": len(r.lc.predicted),
                 **r.training} for s, r in zip(self.seeds, self.results)]
        return pd.DataFrame(rows).set_index("seed")


def run_replicates(world: World, cell: Cell, method: str | None, label: str | None = None, *,
                   seeds: Sequence[int] | None = None, on_fraction: float | None = None,
                   progress: bool = False) -> Replicates:
    """:func:`run_method` in the world of each replicate seed (default: the profile's ``seeds``)."""
    seeds = _seeds(world, seeds)
    results = tuple(run_method(replicate(world, s), cell, method, label, on_fraction=on_fraction, progress=progress)
                    for s in seeds)
    return Replicates(results[0].label, cell, seeds, results)


def run_methods_replicates(world: World, cell: Cell, methods: dict[str, str | None], *,
                           seeds: Sequence[int] | None = None, on_fraction: float | None = None,
                           progress: bool = False) -> dict[str, Replicates]:
    """{label: Replicates} for ``methods`` ({display label: method name or None}), as :func:`run_methods`."""
    return {label: run_replicates(world, cell, method, label, seeds=seeds, on_fraction=on_fraction,
                                  progress=progress) for label, method in methods.items()}


def evaluate_pairs_replicates(world: World, cell: Cell, make_pairs: Callable[[World], object], name: str, *,
                              seeds: Sequence[int] | None = None, progress: bool = False) -> Replicates:
    """:func:`evaluate_pairs` in each replicate's world on ``make_pairs(w)``, the pair set of replicate world
    ``w``: build it from ``w`` (its on-policy pairs, ``w.profile.mixing.seed``) so that it varies with the seed; a
    fixed pair set (a filtered off-policy subset) still trains with each replicate's ``training.seed``."""
    seeds = _seeds(world, seeds)
    results = []
    for s in seeds:
        w = replicate(world, s)
        results.append(evaluate_pairs(w, cell, make_pairs(w), name, progress=progress))
    return Replicates(name, cell, seeds, tuple(results))


# ------------------------------------------------------------------------------- the two-level bootstrap
def bootstrap_draws(per_seed: Sequence["np.ndarray"], n_boot: int = 1000, seed: int = 0, *,
                    chunk: int = 4_000_000) -> "np.ndarray":
    """``n_boot`` draws of the two-level bootstrap of a mean over seeds of per-seed means.

    ``per_seed[k]`` holds the per-prompt values of seed k (any lengths). Each draw resamples the seeds with
    replacement, then, within each drawn seed, that seed's prompts with replacement (as many as it has), and
    returns the mean over the drawn seeds of each one's resampled prompt mean. Vectorized over draws; ``chunk``
    bounds the elements (draws x seeds x prompts) held at once. A pure function of its arrays."""
    import numpy as np

    arrays = [np.asarray(v, dtype=float).ravel() for v in per_seed]
    if not arrays or any(len(a) == 0 for a in arrays):
        raise ValueError("bootstrap_draws: every seed needs at least one prompt value")
    n = np.array([len(a) for a in arrays])
    values = np.zeros((len(arrays), n.max()))
    for k, a in enumerate(arrays):
        values[k, :len(a)] = a
    n_seeds, width = values.shape
    flat, rng, out = values.ravel(), np.random.default_rng(seed), np.empty(n_boot)
    step = max(1, chunk // (n_seeds * width))
    for start in range(0, n_boot, step):
        b = min(step, n_boot - start)
        drawn = rng.integers(0, n_seeds, size=(b, n_seeds))  # level 1: seeds with replacement
        sizes = n[drawn]
        if (n == width).all():  # level 2: prompts with replacement within each drawn seed
            idx = rng.integers(0, width, size=(b, n_seeds, width))
            means = flat[drawn[..., None] * width + idx].mean(axis=-1)
        else:  # seeds of different sizes: draw `width` indices below each seed's size, keep its first n
            idx = np.minimum((rng.random((b, n_seeds, width)) * sizes[..., None]).astype(np.intp),
                             sizes[..., None] - 1)
            keep = np.arange(width) < sizes[..., None]
            means = np.where(keep, flat[drawn[..., None] * width + idx], 0.0).sum(axis=-1) / sizes
        out[start:start + b] = means.mean(axis=-1)
    return out


def hierarchical_interval(per_seed: Sequence["np.ndarray"], *, n_boot: int = 1000, seed: int = 0,
                          level: float = 0.95) -> dict:
    """The mean over seeds of the per-seed means of ``per_seed`` (per-prompt values, one array per seed) and its
    two-level bootstrap percentile interval: {mean, lo, hi, half_width, n_prompts (per seed; their mean when the
    seeds differ), n_seeds}. A pure function of its arrays."""
    import numpy as np

    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    arrays = [np.asarray(v, dtype=float).ravel() for v in per_seed]
    draws = bootstrap_draws(arrays, n_boot, seed)
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    sizes = [len(a) for a in arrays]
    return {"mean": float(np.mean([a.mean() for a in arrays])), "lo": float(lo), "hi": float(hi),
            "half_width": float(hi - lo) / 2,
            "n_prompts": sizes[0] if len(set(sizes)) == 1 else float(np.mean(sizes)), "n_seeds": len(arrays)}


def prompt_values(result: Result, stat: str = "win_rate") -> "pd.Series":
    """Per-prompt values of ``result`` in percent, indexed by instruction, whose mean is the Result's rate:
    ``win_rate``: (preference - 1) x 100 of every valid annotation (as :func:`simplemix.evaluation.win_rate`);
    ``lc_win_rate``: 100 x the LC model's P(win) with the length term at zero (``Result.lc.predicted``)."""
    from simplemix.evaluation import preferences

    if stat == "win_rate":
        p = preferences(result.annotations)
        return (p - 1).set_axis(result.annotations.loc[p.index, "instruction"].to_numpy()) * 100
    if stat == "lc_win_rate":
        return result.lc.predicted.astype(float) * 100
    raise ValueError(f"stat must be one of {STATS}, got {stat!r}")


def _by_group(values: list["pd.Series"], groups, n_boot: int, seed: int, level: float) -> "pd.DataFrame":
    """:func:`hierarchical_interval` of per-seed value series (indexed by instruction) per group of ``groups``
    (instruction -> label; None: one group "all"); a seed with no prompt in a group is left out of it."""
    import pandas as pd

    if groups is None:
        labelled = [pd.Series("all", index=v.index) for v in values]
    else:
        mapping = groups if isinstance(groups, pd.Series) else pd.Series(dict(groups), dtype=object)
        labelled = [pd.Series(v.index.map(mapping), index=v.index) for v in values]
    names = sorted({g for lab in labelled for g in lab.dropna()}, key=str)
    rows = []
    for name in names:
        parts = [v[(lab == name).to_numpy()].to_numpy() for v, lab in zip(values, labelled)]
        rows.append({"group": name, **hierarchical_interval([p for p in parts if len(p)], n_boot=n_boot, seed=seed,
                                                           level=level)})
    return pd.DataFrame(rows, columns=["group", "mean", "lo", "hi", "half_width", "n_prompts",
                                       "n_seeds"]).set_index("group")


def interval(reps: Replicates, groups: "Mapping | pd.Series | None" = None, *, stat: str = "win_rate",
             n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> "pd.DataFrame":
    """The mean over seeds of ``stat`` (``win_rate`` or ``lc_win_rate``, percent) and its two-level bootstrap
    interval, which covers both seed and prompt variation (with one seed: prompts only), per group of ``groups``
    (instruction -> label, as :func:`simplemix.evaluation.by_group`; None: one row "all"). Columns: mean, lo, hi,
    half_width, n_prompts, n_seeds. The same ``seed`` draws the same seed resamples for every group and call."""
    return _by_group([prompt_values(r, stat) for r in reps.results], groups, n_boot, seed, level)


def paired_values(a: Replicates, b: Replicates, stat: str = "win_rate") -> list["pd.Series"]:
    """Per seed, ``a``'s minus ``b``'s per-prompt values, aligned by instruction; raises ValueError unless the two
    share their seeds (in order) and, seed by seed, their evaluation prompts."""
    return combined_values([(1.0, a), (-1.0, b)], stat)


def combined_values(terms: Sequence[tuple[float, Replicates]], stat: str = "win_rate") -> list["pd.Series"]:
    """Per seed, the per-prompt values of sum_k w_k x ``reps_k`` for ``terms`` = [(w_k, reps_k), ...], aligned by
    instruction (the first term's order); every term must share the first's seeds and, seed by seed, prompts."""
    import pandas as pd

    (_, first), out = terms[0], []
    for _, other in terms[1:]:
        if other.seeds != first.seeds:
            raise ValueError(f"difference({first.label!r}, {other.label!r}): a paired comparison needs the same "
                             f"seeds, got {list(first.seeds)} and {list(other.seeds)}")
    for k, s in enumerate(first.seeds):
        values = [prompt_values(reps.results[k], stat) for _, reps in terms]
        index = values[0].index
        for (_, reps), v in zip(terms[1:], values[1:]):
            if set(index) != set(v.index):
                only_a, only_b = set(index) - set(v.index), set(v.index) - set(index)
                example = next(iter(only_a or only_b))
                raise ValueError(f"difference({first.label!r}, {reps.label!r}), seed {s}: a paired comparison needs "
                                 f"the same evaluation prompts; {len(only_a)} only in the first, {len(only_b)} only "
                                 f"in the second, e.g. {example[:80]!r}")
        out.append(pd.Series(sum(w * v.loc[index].to_numpy() for (w, _), v in zip(terms, values)), index=index))
    return out


def difference(a: Replicates, b: Replicates, groups: "Mapping | pd.Series | None" = None, *,
               stat: str = "win_rate", n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> "pd.DataFrame":
    """``a`` minus ``b`` in ``stat``, with a paired two-level bootstrap: each draw resamples the same seeds for
    both and, within a seed, the same prompts for both. The statistic is linear, so this is the bootstrap of the
    per-prompt differences (:func:`paired_values`). Columns: delta, lo, hi, half_width, n_prompts, n_seeds."""
    return contrast([(1.0, a), (-1.0, b)], groups, stat=stat, n_boot=n_boot, seed=seed, level=level)


def contrast(terms: Sequence[tuple[float, Replicates]], groups: "Mapping | pd.Series | None" = None, *,
             stat: str = "win_rate", n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> "pd.DataFrame":
    """A linear contrast sum_k w_k x ``reps_k`` of ``stat`` (e.g. SimpleMix minus the mean of on- and off-policy
    DPO: [(1, mix), (-0.5, on), (-0.5, off)]), bootstrapped paired as :func:`difference`, whose columns it has."""
    table = _by_group(combined_values(terms, stat), groups, n_boot, seed, level)
    return table.rename(columns={"mean": "delta"})


def unpaired_difference(a: Sequence["np.ndarray"], b: Sequence["np.ndarray"], *, n_boot: int = 1000,
                        seed: int = 0, level: float = 0.95) -> dict:
    """The mean over seeds of ``a``'s per-seed means minus ``b``'s, for values that do not pair up (the rewards of
    two sampling schemes' samples), with a two-level bootstrap interval: each draw resamples the seeds (the same
    ones for both sides), then, within each drawn seed, each side's values on their own. {delta, lo, hi,
    half_width, n_seeds}."""
    import numpy as np

    a = [np.asarray(x, dtype=float).ravel() for x in a]
    b = [np.asarray(y, dtype=float).ravel() for y in b]
    if len(a) != len(b) or not a or any(len(x) == 0 for x in a + b):
        raise ValueError(f"unpaired_difference: needs the same seeds on both sides, each with values; got "
                         f"{[len(x) for x in a]} and {[len(y) for y in b]}")
    rng, n_seeds = np.random.default_rng(seed), len(a)
    drawn = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    total = np.zeros(n_boot)
    for slot in range(n_seeds):
        for k in range(n_seeds):
            rows = np.flatnonzero(drawn[:, slot] == k)
            if len(rows):
                ma = a[k][rng.integers(0, len(a[k]), size=(len(rows), len(a[k])))].mean(axis=1)
                mb = b[k][rng.integers(0, len(b[k]), size=(len(rows), len(b[k])))].mean(axis=1)
                total[rows] += ma - mb
    draws = total / n_seeds
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    delta = float(np.mean([x.mean() for x in a]) - np.mean([y.mean() for y in b]))
    return {"delta": delta, "lo": float(lo), "hi": float(hi), "half_width": float(hi - lo) / 2, "n_seeds": n_seeds}


def interval_note(seeds: Sequence[int] | Replicates, level: float = 0.95) -> str:
    """What an interval covers, for captions and provenance lines."""
    seeds = seeds.seeds if isinstance(seeds, Replicates) else tuple(seeds)
    if len(seeds) == 1:
        return f"{level:.0%} bootstrap intervals over prompts (one seed, {seeds[0]}: no seed variation)"
    return (f"{level:.0%} two-level bootstrap intervals over {len(seeds)} seeds ({', '.join(map(str, seeds))}) "
            "and prompts; mean over seeds")


def summary_table(replicates: "Mapping[str, Replicates]", groups: "Mapping | pd.Series | None" = None, *,
                  stats: Sequence[str] = ("lc_win_rate", "win_rate"), n_boot: int = 1000, seed: int = 0,
                  level: float = 0.95) -> "pd.DataFrame":
    """A tidy table of {label: Replicates}: one row per label (per label and group when ``groups`` is given),
    for each of ``stats`` its mean over seeds and two-level interval as ``<stat>``, ``<stat>_lo``, ``<stat>_hi``,
    ``<stat>_half_width`` (the naming of :func:`simplemix.evaluation.by_group`), then n_seeds and n_prompts."""
    import pandas as pd

    parts = []
    for label, reps in replicates.items():
        columns = {}
        for stat in stats:
            t = interval(reps, groups, stat=stat, n_boot=n_boot, seed=seed, level=level)
            columns |= {stat: t["mean"], f"{stat}_lo": t["lo"], f"{stat}_hi": t["hi"],
                        f"{stat}_half_width": t["half_width"]}
        part = pd.DataFrame(columns).assign(n_seeds=t["n_seeds"], n_prompts=t["n_prompts"])
        parts.append(part.assign(label=label).reset_index())
    table = pd.concat(parts, ignore_index=True)
    return table.set_index(["label", "group"] if groups is not None else "label").drop(columns="group",
                                                                                       errors="ignore")


def differences_table(replicates: "Mapping[str, Replicates]", reference: str, *,
                      stats: Sequence[str] = ("lc_win_rate", "win_rate"), n_boot: int = 1000, seed: int = 0,
                      level: float = 0.95) -> "pd.DataFrame":
    """``reference`` minus every other label of ``replicates``, paired (:func:`difference`): one row per other
    label, for each of ``stats`` ``<stat>_delta``, ``_lo``, ``_hi``, ``_half_width``, then n_seeds, n_prompts."""
    import pandas as pd

    ref, rows = replicates[reference], []
    columns = ["label", *(f"{stat}_delta{part}" for stat in stats for part in ("", "_lo", "_hi", "_half_width")),
               "n_seeds", "n_prompts"]
    for label, reps in replicates.items():
        if label == reference:
            continue
        row = {"label": label}
        for stat in stats:
            d = difference(ref, reps, stat=stat, n_boot=n_boot, seed=seed, level=level).loc["all"]
            row |= {f"{stat}_delta": d["delta"], f"{stat}_delta_lo": d["lo"], f"{stat}_delta_hi": d["hi"],
                    f"{stat}_delta_half_width": d["half_width"]}
        rows.append(row | {"n_seeds": d["n_seeds"], "n_prompts": d["n_prompts"]})
    return pd.DataFrame(rows, columns=columns).set_index("label")
