"""The dev-split sweep that chose the ``smoke`` profile's training settings.

The criterion is declared here, before any result is seen, and is not the paper's direction: the mean oracle-reward
gain over the SFT policy of greedy answers to the **dev** prompts (a split no other stage uses; never the
evaluation prompts), averaged over off-policy, on-policy and SimpleMix DPO and over the four categories. Stage 1
crosses learning rate and beta at one epoch, the profile's pair budget and N; stage 2 crosses epochs, pair
budget and N at stage 1's best. The highest criterion wins each stage, among the settings :data:`FEASIBLE` allows:
the smoke book must run in ten minutes on two cores, and two epochs or N = 8 double the cost of every training run
or on-policy sample of the book's ~150 runs. (That limit was added after the first sweep, whose unconstrained
winner, two epochs and N = 8, proved too slow; the table keeps every setting and marks the unconstrained best.)
One seed (the profile's); every run is a run-store stage, so a rerun is a cache hit. ``python -m simplemix.miniature.sweep`` writes the table the book
shows (``recipes/smoke-dev-sweep.csv``); ``recipes/smoke.yaml`` takes its winner, and a test checks it does.
Owns the sweep; imports config, world, methods, sampling, store and the miniature oracle.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
from pathlib import Path

from simplemix import resources
from simplemix.miniature.oracle import judge
from simplemix.miniature.tasks import CATEGORIES

CRITERION = ("mean oracle-reward gain over the SFT policy on the dev prompts (greedy answers), averaged over "
             "off-policy, on-policy and SimpleMix DPO and the four categories")
METHODS = ("off", "on", "simplemix")
STAGE1 = {"learning_rate": [5e-5, 1e-4, 2e-4, 5e-4], "beta": [0.1, 0.3]}
STAGE2 = {"num_train_epochs": [1, 2], "total_pairs": [128, 256], "num_samples": [4, 8]}
SETTINGS = ("learning_rate", "beta", "num_train_epochs", "total_pairs", "num_samples")


def FEASIBLE(setting: dict) -> bool:
    """Settings the smoke book's time budget allows: one epoch and at most four samples per prompt."""
    return setting["num_train_epochs"] <= 1 and setting["num_samples"] <= 4
DEFAULT_OUT = resources.path("recipes", "smoke-dev-sweep.csv")


def with_settings(prof, **s):
    """The profile with sweep settings applied to the fields they name."""
    training = dataclasses.replace(prof.training, **{k: s[k] for k in ("learning_rate", "beta", "num_train_epochs")
                                                    if k in s})
    mixing = dataclasses.replace(prof.mixing, total_pairs=s.get("total_pairs", prof.mixing.total_pairs))
    sampling = dataclasses.replace(prof.sampling, num_samples=s.get("num_samples", prof.sampling.num_samples))
    return dataclasses.replace(prof, training=training, mixing=mixing, sampling=sampling)


def settings_of(prof) -> dict:
    return {"learning_rate": prof.training.learning_rate, "beta": prof.training.beta,
            "num_train_epochs": prof.training.num_train_epochs, "total_pairs": prof.mixing.total_pairs,
            "num_samples": prof.sampling.num_samples}


def dev_rewards(world, policy) -> dict[str, float]:
    """Stage ``dev-evaluation``: the oracle's mean reward per category of ``policy``'s greedy dev answers."""
    import json

    from simplemix.sampling import load_backend

    tasks = world.dev_tasks()
    prof = world.profile
    config = {"policy": policy.key, "dev": world.built.entries["tasks"].key, "reward": world.reward_key(),
              "max_new_tokens": prof.evaluation.max_new_tokens}

    def compute(out: Path) -> dict:
        backend = load_backend(dataclasses.replace(prof.sampling, num_samples=1), policy)
        drawn = backend.generate([t.messages() for t in tasks], n=1, temperature=0.0, top_p=1.0,
                                 max_new_tokens=prof.evaluation.max_new_tokens, seed=0, progress=False)
        rewards = {c: [] for c in CATEGORIES}
        for t, (s,) in zip(tasks, drawn):
            rewards[t.category].append(judge(t, s.text).reward)
        means = {c: sum(v) / len(v) for c, v in rewards.items()}
        (out / "dev.json").write_text(json.dumps(means, indent=1))
        return means

    return world.store.run("dev-evaluation", compute, config).manifest["info"]


def evaluate_setting(prof, run_dir, settings: dict) -> list[dict]:
    """One row per method of the setting: its dev-reward gain over SFT per category and on average."""
    from simplemix.methods import train_method
    from simplemix.sampling import Policy
    from simplemix.world import resolve

    world = resolve(with_settings(prof, **settings), run_dir)
    cell = world.cell()
    sft = dev_rewards(world, world.sft_policy(cell))
    rows = []
    for method in METHODS:
        entry = train_method(world, cell, method, progress=False)[-1]
        got = dev_rewards(world, Policy.trained(entry, world.sft_policy(cell)))
        gains = {f"gain_{c}": got[c] - sft[c] for c in CATEGORIES}
        rows.append({**settings, "method": method, **gains, "gain": sum(gains.values()) / len(gains)})
    return rows


def _best(table, settings: list[dict], feasible_only: bool = False) -> dict:
    crit = table.groupby(list(SETTINGS), sort=False)["gain"].mean()
    settings = [s for s in settings if FEASIBLE(s)] if feasible_only else settings
    scores = [crit[tuple(s[k] for k in SETTINGS)] for s in settings]
    return settings[max(range(len(scores)), key=scores.__getitem__)]


def choose(table):
    """Mark the chosen setting (stage 2's best feasible) and stage 2's unconstrained best in ``table``."""
    stage2 = table[table.stage == 2]
    settings = stage2[list(SETTINGS)].drop_duplicates().to_dict("records")
    best, best_any = _best(stage2, settings, feasible_only=True), _best(stage2, settings)
    same = lambda r, s: r["stage"] == 2 and all(r[k] == s[k] for k in SETTINGS)  # noqa: E731
    records = table.to_dict("records")
    return table.assign(feasible=[FEASIBLE(r) for r in records], chosen=[same(r, best) for r in records],
                        best_unconstrained=[same(r, best_any) for r in records])


def run_sweep(profile: str = "smoke", run_dir: str | Path = "runs/dev-sweep", progress: bool = True):
    """Both stages; the long table (one row per setting and method) with a ``stage`` and ``chosen`` column."""
    import pandas as pd
    from tqdm import tqdm

    from simplemix.config import load_profile

    prof = load_profile(profile)
    base = settings_of(prof)
    stage1 = [{**base, "num_train_epochs": 1, **dict(zip(STAGE1, v))} for v in itertools.product(*STAGE1.values())]
    rows = []
    for s in tqdm(stage1, desc="dev sweep, stage 1", disable=not progress):
        rows += [r | {"stage": 1} for r in evaluate_setting(prof, run_dir, s)]
    best1 = _best(pd.DataFrame(rows), stage1, feasible_only=True)
    stage2 = [{**best1, **dict(zip(STAGE2, v))} for v in itertools.product(*STAGE2.values())]
    for s in tqdm(stage2, desc="dev sweep, stage 2", disable=not progress):
        rows += [r | {"stage": 2} for r in evaluate_setting(prof, run_dir, s)]
    return choose(pd.DataFrame(rows))


def summary(table):
    """The criterion per setting (mean over methods), best first: the table the book shows."""
    crit = table.groupby(["stage", *SETTINGS], sort=False).agg(
        criterion=("gain", "mean"), **{f"gain_{m}": ("gain", lambda g, m=m: g[table.loc[g.index, "method"] == m].mean())
                                       for m in METHODS}, feasible=("feasible", "any"), chosen=("chosen", "any"),
        best_unconstrained=("best_unconstrained", "any")).reset_index()
    return crit.sort_values(["stage", "criterion"], ascending=[True, False])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--profile", default="smoke")
    p.add_argument("--run", default="runs/dev-sweep", help="run directory (its store caches every run)")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    args = p.parse_args(argv)
    table = run_sweep(args.profile, args.run)
    table.to_csv(args.out, index=False, float_format="%.6g")
    print(summary(table).to_string(index=False))
    print("chosen:", table[table.chosen].iloc[0][list(SETTINGS)].to_dict())


if __name__ == "__main__":
    main()
