"""AlpacaEval 2.0 evaluation: outputs on the 805 instructions, judges, plain and length-controlled win rates,
and the paper's breakdowns by prompt category and by generation length, with bootstrap confidence intervals.

An *annotation* table has one row per instruction: ``instruction``, ``output_1`` (the baseline's),
``output_2`` (the model's), ``generator_1``, ``generator_2`` and ``preference`` in [1, 2] (2: the model wins;
alpaca_eval's convention, 0 meaning a draw). Tables are joined on the instruction text, never on row position.

The length-controlled (LC) win rate follows alpaca_eval's ``length_controlled_v1`` GLM: logit P(model wins on
instruction i) = w_len * tanh(delta_len_i / sd) + w_diff * difficulty_i + w_model, fitted by L1-regularised
logistic regression on the soft labels (C chosen by 5-fold cross-validation grouped by instruction), and
predicted with the length term at zero. alpaca_eval also adds annotations of two length-gamed baselines (from the
hub) as a prior; we do not have them, which matters only for models that game length.
Owns the judges and the win-rate statistics; imports nothing else of simplemix (never a world).
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import json
import math
import os
import weakref
from pathlib import Path
from typing import Protocol, Sequence

import numpy as np
import pandas as pd

from simplemix import resources

DATA_DIR = resources.path("data", "alpaca_eval")
BASELINE = "gpt4_1106_preview"
DERIVED_DIFFICULTY = DATA_DIR / "instruction_difficulty_derived.csv"
LC_CS = np.logspace(-4, 4, 10)  # the C grid of sklearn's LogisticRegressionCV default, as alpaca_eval uses


# ------------------------------------------------------------------------------------------------ the data
@functools.cache
def _baseline_rows() -> tuple[dict, ...]:
    with gzip.open(DATA_DIR / "gpt4_1106_preview_outputs.json.gz", "rt", encoding="utf-8") as f:
        return tuple(json.load(f))


def alpaca_eval_set() -> pd.DataFrame:
    """The 805 AlpacaEval 2.0 instructions in canonical order: instruction, dataset, baseline output."""
    rows = _baseline_rows()
    return pd.DataFrame({"instruction": [r["instruction"] for r in rows], "dataset": [r["dataset"] for r in rows],
                         "baseline_output": [r["output"] for r in rows]})


def load_annotations(path: str | Path) -> pd.DataFrame:
    """An alpaca_eval ``annotations.json`` (optionally gzipped) as an annotation table."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        rows = json.load(f)
    table = pd.DataFrame(rows)
    missing = {"instruction", "output_1", "output_2", "preference"} - set(table.columns)
    if missing:
        raise ValueError(f"{path}: not an annotations file, missing fields {sorted(missing)}")
    return table


# ---------------------------------------------------------------------------------------------- generation
def alpaca_eval_baseline() -> list[dict]:
    """GPT-4-turbo's outputs on the 805 AlpacaEval 2.0 instructions, in alpaca_eval's format (the baseline)."""
    return [dict(r) for r in _baseline_rows()]


def stratified(rows: list[dict], n: int | None, categories: list[str], seed: int = 0) -> list[dict]:
    """``n`` of ``rows`` spread over their ``categories`` in proportion to each one's share (every category gets
    at least one when ``n`` allows; largest remainders settle the rest), drawn with ``seed``, kept in their order.
    The first ``n`` rows would not do: AlpacaEval's instructions come grouped by source, its first coding one at
    index 211."""
    import numpy as np

    if n is None or n >= len(rows):
        return list(rows)
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(categories):
        groups.setdefault(c, []).append(i)
    names = sorted(groups, key=lambda c: (-len(groups[c]), c))
    share = {c: n * len(groups[c]) / len(rows) for c in names}
    take = {c: int(share[c]) for c in names}
    for c in sorted(names, key=lambda c: -(share[c] - take[c]))[:n - sum(take.values())]:
        take[c] += 1
    if n >= len(names):  # every category at least once, each taken from the one furthest above its share
        for c in [c for c in names if take[c] == 0]:
            donor = max(names, key=lambda d: take[d] - share[d] if take[d] > 1 else -1e9)
            take[donor] -= 1
            take[c] = 1
    rng = np.random.default_rng(seed)
    chosen = sorted(i for c in names for i in rng.choice(groups[c], size=take[c], replace=False).tolist())
    return [rows[i] for i in chosen]


def model_outputs(backend, generator: str, rows: list[dict] | None = None, *, max_new_tokens: int = 2048,
                  num_prompts: int | None = None, seed: int = 0, progress: bool = True) -> list[dict]:
    """Greedy outputs of ``backend`` (a simplemix.sampling Backend) on ``rows``' instructions (default: AlpacaEval's
    805), in alpaca_eval's ``model_outputs.json`` format (instruction, output, generator, dataset). ``num_prompts``
    takes the first N; :func:`stratified` draws a subset that keeps every category."""
    rows = list(rows if rows is not None else _baseline_rows())[:num_prompts]
    prompts = [[{"role": "user", "content": r["instruction"]}] for r in rows]
    samples = backend.generate(prompts, n=1, temperature=0.0, top_p=1.0, max_new_tokens=max_new_tokens, seed=seed,
                               progress=progress)
    return [{"instruction": r["instruction"], "output": s[0].text, "generator": generator, "dataset": r.get("dataset")}
            for r, s in zip(rows, samples)]


def write_model_outputs(rows: list[dict], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path


# -------------------------------------------------------------------------------------------------- judges
class Judge(Protocol):
    """Turns a model's outputs and the baseline's into an annotation table."""

    name: str
    comparable_with_leaderboard: bool

    def annotate(self, outputs: list[dict], baseline: list[dict]) -> pd.DataFrame: ...


def _pair_up(outputs: list[dict], baseline: list[dict]) -> pd.DataFrame:
    """Model and baseline outputs joined on the instruction; an instruction without a baseline output is an error."""
    base = {r["instruction"]: r for r in baseline}
    seen: set[str] = set()
    repeated = [i for i, r in enumerate(outputs) if r["instruction"] in seen or seen.add(r["instruction"])]
    if repeated:
        raise ValueError(f"model outputs rows {repeated[:5]} repeat an instruction (annotations are keyed by "
                         f"instruction text), e.g. {outputs[repeated[0]]['instruction'][:80]!r}")
    missing = [i for i, r in enumerate(outputs) if r["instruction"] not in base]
    if missing:
        raise ValueError(f"model outputs rows {missing[:5]} (of {len(missing)}) have no baseline output for "
                         f"their instruction, e.g. {outputs[missing[0]]['instruction'][:80]!r}")
    return pd.DataFrame([{"instruction": r["instruction"], "dataset": r.get("dataset"),
                          "output_1": base[r["instruction"]]["output"], "output_2": r["output"],
                          "generator_1": base[r["instruction"]].get("generator", BASELINE),
                          "generator_2": r.get("generator", "model")} for r in outputs])


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=float)))


@dataclasses.dataclass
class ScoreJudge:
    """P(model beats baseline) = sigmoid(r_model - r_baseline) from a scalar scorer (a reward model or
    a programmatic oracle), as preference = 1 + P. A proxy: not comparable with leaderboard numbers."""

    scorer: object  # simplemix.reward.RewardScorer
    name: str = "reward-model proxy"
    comparable_with_leaderboard: bool = False

    def annotate(self, outputs: list[dict], baseline: list[dict]) -> pd.DataFrame:
        table = _pair_up(outputs, baseline)
        prompts = [[{"role": "user", "content": i}] for i in table["instruction"]]
        r_model = np.array(self.scorer.score(prompts, list(table["output_2"])))
        r_base = np.array(self._baseline_scores(prompts, list(table["output_1"])))
        return table.assign(preference=1.0 + _sigmoid(r_model - r_base), annotator=self.name)

    def _baseline_scores(self, prompts: list[list[dict]], texts: list[str]) -> list[float]:
        """The baseline's scores, scored apart from any model's outputs (so a batch of the same texts gives the same
        floats every time) and kept per scorer: every model of a run is judged against the same baseline texts,
        which cost a reward model most of an evaluation (they are long)."""
        from simplemix.store import stable_hash

        try:
            memo = _BASELINE_SCORES.setdefault(self.scorer, {})
        except TypeError:  # a scorer that cannot be weakly referenced or hashed is asked every time
            return self.scorer.score(prompts, texts)
        key = stable_hash([prompts, texts])
        if key not in memo:
            memo[key] = list(self.scorer.score(prompts, texts))
        return memo[key]


_BASELINE_SCORES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()  # scorer -> {texts' hash: scores}


class AlpacaEvalJudge:
    """alpaca_eval's official ``weighted_alpaca_eval_gpt4_turbo`` annotator (needs the ``eval`` extra and an
    OPENAI_API_KEY in the environment; the key is read by alpaca_eval from there and never passed or stored)."""

    name = "weighted_alpaca_eval_gpt4_turbo"
    comparable_with_leaderboard = True

    def __init__(self, annotators_config: str = "weighted_alpaca_eval_gpt4_turbo"):
        if not os.environ.get("OPENAI_API_KEY"):
            raise RuntimeError("the official AlpacaEval judge calls the OpenAI API: set OPENAI_API_KEY in the "
                               "environment (it is never written anywhere), or use a local judge")
        try:
            from alpaca_eval.annotators import PairwiseAnnotator
        except ImportError as err:
            raise RuntimeError("the official AlpacaEval judge needs the eval extra: pip install -e '.[eval]'") from err
        self.annotators_config = annotators_config
        # caching_path=None: alpaca_eval's "auto" cache is a file inside its installed package; the run store keeps
        # every evaluation's annotations instead
        self._annotator = PairwiseAnnotator(annotators_config=annotators_config, caching_path=None)

    def annotate(self, outputs: list[dict], baseline: list[dict]) -> pd.DataFrame:
        _pair_up(outputs, baseline)  # the same checks as the local judges, before any paid API call
        base = {r["instruction"]: r for r in baseline}
        rows = self._annotator.annotate_head2head(outputs_1=[base[r["instruction"]] for r in outputs],
                                                  outputs_2=outputs)
        return pd.DataFrame(rows)


# ----------------------------------------------------------------------------------------------- win rates
def preferences(table: pd.DataFrame) -> pd.Series:
    """alpaca_eval's preference handling: 0 is a draw (1.5); values outside [1, 2] or missing are dropped."""
    p = pd.to_numeric(table["preference"], errors="coerce").replace({0.0: 1.5})
    return p[(p >= 1) & (p <= 2)]


@dataclasses.dataclass(frozen=True)
class WinRate:
    win_rate: float  # percent
    standard_error: float  # percent
    n: int


def win_rate(table: pd.DataFrame) -> WinRate:
    """Plain win rate = mean(preference - 1) x 100, with the standard error of that mean."""
    p = preferences(table) - 1
    return WinRate(float(p.mean() * 100), float(p.sem() * 100) if len(p) > 1 else math.nan, len(p))


@functools.cache
def _published_difficulty() -> pd.Series | None:
    """alpaca_eval's per-instruction difficulty from the hub, indexed by instruction text; None when offline."""
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download("tatsu-lab/alpaca_eval", "instruction_difficulty.csv", repo_type="dataset")
    except Exception:  # offline, no huggingface_hub, or the file moved: fall back to the derived values
        return None
    values = pd.read_csv(path, index_col=0).squeeze("columns")
    instructions = [r["instruction"] for r in _baseline_rows()]
    return pd.Series(values.to_numpy(dtype=float), index=[instructions[int(i)] for i in values.index])


def derive_difficulty(compact: pd.DataFrame | None = None, iterations: int = 200,
                      instructions: Sequence[str] | None = None) -> pd.Series:
    """Per-instruction difficulty from the bundled annotations of 50 generators: the instruction effects d_i of a
    joint logistic model, logit P = quality_m + slope_m * tanh(delta_len / sd_m) + d_i, fitted to the soft labels
    by L-BFGS and centred to mean zero. Indexed by instruction text (``instructions[instruction_index]``, default
    AlpacaEval's canonical order)."""
    import torch

    if compact is None:
        compact = pd.read_csv(DATA_DIR / "annotations_compact_50generators.csv.gz")
    compact = compact.dropna(subset=["preference", "len_1", "len_2"])
    compact = compact.assign(p=pd.to_numeric(compact["preference"]).replace({0.0: 1.5}) - 1)
    compact = compact[(compact.p >= 0) & (compact.p <= 1)]
    delta = compact.len_1 - compact.len_2
    sd = delta.groupby(compact.generator_2).transform("std").replace(0.0, np.nan)
    x = torch.tensor(np.nan_to_num(np.tanh(delta / sd)), dtype=torch.float64)  # the baseline itself: no length term
    model_codes, models = pd.factorize(compact.generator_2)
    m = torch.tensor(model_codes)
    i = torch.tensor(compact.instruction_index.to_numpy())
    p = torch.tensor(compact.p.to_numpy(), dtype=torch.float64)
    quality, slope = torch.zeros(len(models), dtype=torch.float64), torch.zeros(len(models), dtype=torch.float64)
    d = torch.zeros(int(i.max()) + 1, dtype=torch.float64)
    params = [t.requires_grad_() for t in (quality, slope, d)]
    opt = torch.optim.LBFGS(params, max_iter=iterations, tolerance_grad=1e-9, line_search_fn="strong_wolfe")

    def loss():
        opt.zero_grad()
        value = torch.nn.functional.binary_cross_entropy_with_logits(quality[m] + slope[m] * x + d[i], p)
        value = value + d.mean() ** 2  # pins the shift that quality and d could otherwise trade
        value.backward()
        return value

    opt.step(loss)
    values = (d - d.mean()).detach().numpy()
    instructions = list(instructions) if instructions is not None else [r["instruction"] for r in _baseline_rows()]
    return pd.Series(values, index=instructions[:len(values)], name="instruction_difficulty")


def instruction_difficulty(source: str = "auto") -> tuple[pd.Series, str]:
    """(difficulty by instruction text, where it came from): alpaca_eval's published values when the hub has them
    (``auto`` or ``published``), else the values derived from the bundled annotations (shipped precomputed in
    ``data/alpaca_eval/instruction_difficulty_derived.csv``; :func:`derive_difficulty` recomputes them)."""
    if source not in ("auto", "published", "derived"):
        raise ValueError(f"difficulty source must be auto, published or derived, got {source!r}")
    if source in ("auto", "published"):
        published = _published_difficulty()
        if published is not None:
            return published, "published (alpaca_eval, hub)"
        if source == "published":
            raise RuntimeError("alpaca_eval's instruction_difficulty.csv could not be loaded from the hub")
    derived = pd.read_csv(DERIVED_DIFFICULTY)
    instructions = [r["instruction"] for r in _baseline_rows()]
    return (pd.Series(derived["instruction_difficulty"].to_numpy(), index=[instructions[i] for i in derived["index"]]),
            "derived from 50 bundled generators' annotations")


def write_derived_difficulty(values: pd.Series, path: str | Path = DERIVED_DIFFICULTY) -> Path:
    """Store :func:`derive_difficulty`'s values by canonical instruction index (10 decimals)."""
    position = {r["instruction"]: i for i, r in enumerate(_baseline_rows())}
    table = pd.DataFrame({"index": [position[t] for t in values.index], "instruction_difficulty": values.to_numpy()})
    table.to_csv(path, index=False, float_format="%.10f")
    return Path(path)


@dataclasses.dataclass
class LengthControlled:
    """An LC win rate and what it rests on; ``predicted`` is P(win) per instruction with the length term at zero,
    so the LC win rate of any subset of instructions is 100 x its mean."""

    lc_win_rate: float
    win_rate: float
    weights: dict[str, float]
    C: float
    difficulty_source: str
    predicted: pd.Series  # indexed by instruction text


def _soft_logistic(X, p, groups, Cs=LC_CS, folds: int = 5):
    """L1 logistic regression without intercept on soft labels p (each row twice: label 1 weighted p, label 0
    weighted 1 - p), C picked by grouped K-fold log loss; returns (fitted model, C)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold

    X2, y2 = np.vstack([X, X]), np.r_[np.ones(len(p)), np.zeros(len(p))]
    w2, g2 = np.r_[p, 1 - p], np.r_[groups, groups]

    def fit(C, rows=slice(None)):
        return LogisticRegression(C=C, l1_ratio=1.0, solver="liblinear", fit_intercept=False,
                                  random_state=123).fit(X2[rows], y2[rows], sample_weight=w2[rows])

    losses = []
    for C in Cs:
        total = 0.0
        for train, test in GroupKFold(n_splits=folds).split(X2, y2, g2):
            q = np.clip(fit(C, train).predict_proba(X2[test])[:, 1], 1e-15, 1 - 1e-15)
            total -= np.sum(w2[test] * (y2[test] * np.log(q) + (1 - y2[test]) * np.log(1 - q)))
        losses.append(total)
    best = float(Cs[int(np.argmin(losses))])
    return fit(best), best


def length_controlled(table: pd.DataFrame, difficulty: pd.Series | None = None,
                      difficulty_source: str | None = None) -> LengthControlled:
    """alpaca_eval's length-controlled win rate of one model's annotations (see the module docstring)."""
    if difficulty is None:
        difficulty, difficulty_source = instruction_difficulty()
    p = preferences(table)
    rows = table.loc[p.index]
    unknown = ~rows["instruction"].isin(difficulty.index)
    if unknown.any():
        raise ValueError(f"{unknown.sum()} annotated instructions have no difficulty (not AlpacaEval prompts?), "
                         f"e.g. {rows['instruction'][unknown].iloc[0][:80]!r}")
    plain = float((p - 1).mean() * 100)
    len_1, len_2 = _lengths(rows)
    delta = len_1 - len_2  # baseline minus model, as alpaca_eval
    if delta.std() == 0 or len(rows) < 10:
        predicted = pd.Series(np.full(len(rows), plain / 100), index=rows["instruction"].to_numpy())
        return LengthControlled(plain, plain, {}, math.nan, difficulty_source or "given", predicted)
    features = np.c_[np.tanh(delta / delta.std()), difficulty.loc[rows["instruction"]].to_numpy(),
                     np.ones(len(rows))]
    model, C = _soft_logistic(features, (p - 1).to_numpy(), np.arange(len(rows)))
    no_length = features.copy()
    no_length[:, 0] = 0.0
    predicted = pd.Series(model.predict_proba(no_length)[:, 1], index=rows["instruction"].to_numpy())
    names = ("np.tanh(std_delta_len)", "instruction_difficulty", "not_gamed_baseline.astype(float)")
    return LengthControlled(float(predicted.mean() * 100), plain, dict(zip(names, model.coef_[0].tolist())), C,
                            difficulty_source or "given", predicted)


def _lengths(table: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Characters of the baseline's and the model's outputs: ``len_1``/``len_2`` columns when given (the compact
    bundled annotations), else measured on ``output_1``/``output_2``."""
    if {"len_1", "len_2"} <= set(table.columns):
        return table["len_1"].astype(float), table["len_2"].astype(float)
    return table["output_1"].str.len().astype(float), table["output_2"].str.len().astype(float)


# ---------------------------------------------------------------------------------------------- breakdowns
def _bootstrap_means(values: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    return values[idx].mean(axis=1)


def _ci(draws: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def _with_lc(table: pd.DataFrame, lc: LengthControlled | None) -> pd.DataFrame:
    out = table.loc[preferences(table).index].copy()
    out["win"] = preferences(table) - 1
    if lc is not None:
        out["lc_win"] = out["instruction"].map(lc.predicted)
    return out


def _grouped(data: pd.DataFrame, groups, columns: dict[str, str], n_boot: int, seed: int,
             level: float) -> pd.DataFrame:
    """Per group of ``groups`` (instruction -> label): for each ``columns`` entry (value column -> output name)
    present in ``data``, its mean and bootstrap CI over the group's rows, in percent."""
    data = data.assign(group=data["instruction"].map(groups))
    rng = np.random.default_rng(seed)
    rows = []
    for name, part in data.dropna(subset=["group"]).groupby("group", sort=True):
        row = {"group": name, "n": len(part)}
        for column, label in columns.items():
            if column in part:
                values = part[column].to_numpy(dtype=float)
                lo, hi = _ci(_bootstrap_means(values, n_boot, rng), level)
                row |= {label: values.mean() * 100, f"{label}_lo": lo * 100, f"{label}_hi": hi * 100}
        rows.append(row)
    return pd.DataFrame(rows).set_index("group")


def by_group(table: pd.DataFrame, groups: pd.Series | dict, lc: LengthControlled | None = None, *,
             n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Win rate (and LC, when given) per group of instructions with bootstrap CIs over the group's prompts.
    ``groups`` maps instruction text to a group label (a category, a length bin, ...)."""
    return _grouped(_with_lc(table, lc), groups, {"win": "win_rate", "lc_win": "lc_win_rate"}, n_boot, seed, level)


def bin_labels(edges: Sequence[float]) -> list[str]:
    """The labels of the bins between consecutive edges, in order: "0-500", ..., "3000+"."""
    return [f"{int(a)}-{int(b)}" if np.isfinite(b) else f"{int(a)}+" for a, b in zip(edges[:-1], edges[1:])]


def length_bins(table: pd.DataFrame, edges: Sequence[float] = (0, 500, 1000, 1500, 2000, 3000, np.inf)) -> pd.Series:
    """Instruction -> the length bin (characters of the model's output) it falls in, labelled like "500-1000"."""
    lengths = _lengths(table)[1]
    labels = bin_labels(edges)
    bins = pd.cut(lengths, bins=list(edges), labels=labels, right=False)
    return pd.Series(bins.astype(str).to_numpy(), index=table["instruction"].to_numpy())


def paired_delta(on: pd.DataFrame, off: pd.DataFrame, groups: pd.Series | dict,
                 lc_on: LengthControlled | None = None, lc_off: LengthControlled | None = None, *,
                 n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """On-minus-off win rate (and LC) per group, with a paired bootstrap: the same prompts resampled for both."""
    a, b = _with_lc(on, lc_on), _with_lc(off, lc_off)
    data = a.merge(b, on="instruction", suffixes=("_on", "_off"))
    for column in ("win", "lc_win"):
        if f"{column}_on" in data and f"{column}_off" in data:
            data[f"{column}_delta"] = data[f"{column}_on"] - data[f"{column}_off"]
    return _grouped(data, groups, {"win_delta": "delta_win_rate", "lc_win_delta": "delta_lc_win_rate"}, n_boot,
                    seed, level)


def leaderboard() -> pd.DataFrame:
    """The bundled published AlpacaEval 2.0 leaderboard (weighted GPT-4-turbo judge), indexed by model."""
    return pd.read_csv(DATA_DIR / "leaderboard_weighted_alpaca_eval_gpt4_turbo.csv", index_col=0)


def compact_annotations() -> pd.DataFrame:
    """The bundled annotations of 50 generators: generator_2, instruction (the canonical text its index names),
    preference and the output lengths len_1 (baseline) and len_2 (model) in characters; no output texts."""
    compact = pd.read_csv(DATA_DIR / "annotations_compact_50generators.csv.gz")
    instructions = [r["instruction"] for r in _baseline_rows()]
    return compact.assign(instruction=[instructions[i] for i in compact.instruction_index])
