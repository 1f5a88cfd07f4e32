"""The dev-split sweep: the smoke recipe takes its winner, the criterion is computed as declared, dev only."""

import pandas as pd
import pytest

from simplemix.config import load_profile
from simplemix.miniature import sweep
from simplemix.miniature.tasks import CATEGORIES
from conftest import tiny_world


def test_smoke_recipe_takes_the_committed_sweeps_winner():
    table = pd.read_csv(sweep.DEFAULT_OUT)
    chosen = table[table.chosen]
    assert sorted(chosen.method) == sorted(sweep.METHODS)  # one setting, every method
    assert len(chosen[list(sweep.SETTINGS)].drop_duplicates()) == 1
    winner = chosen.iloc[0][list(sweep.SETTINGS)].to_dict()
    ours = sweep.settings_of(load_profile("smoke"))
    assert ours == pytest.approx({k: float(v) for k, v in winner.items()})
    # the winner has the highest criterion of stage 2 among the feasible settings, the unconstrained best is marked,
    # and stage 2 ran at stage 1's best learning rate and beta
    crit = sweep.summary(table)
    stage2 = crit[crit.stage == 2]
    feasible = stage2[stage2.feasible]
    assert feasible.iloc[0].chosen and feasible.iloc[0].criterion == feasible.criterion.max()
    assert stage2.iloc[0].best_unconstrained and stage2.chosen.sum() == 1
    assert all(sweep.FEASIBLE(r) == r["feasible"] for r in table.to_dict("records"))
    stage1 = crit[crit.stage == 1].iloc[0]  # best first
    assert (stage1.learning_rate, stage1.beta) == (winner["learning_rate"], winner["beta"])


def test_criterion_is_the_mean_gain_over_methods_and_categories():
    rows = []
    for lr, gains in ((1e-4, [0.1, 0.2, 0.3]), (2e-4, [0.5, -0.4, 0.2])):
        for method, g in zip(sweep.METHODS, gains):
            rows.append({"learning_rate": lr, "beta": 0.1, "num_train_epochs": 1, "total_pairs": 8,
                         "num_samples": 4, "method": method, **{f"gain_{c}": g for c in CATEGORIES}, "gain": g,
                         "stage": 1, "chosen": False, "feasible": True, "best_unconstrained": False})
    table = pd.DataFrame(rows)
    settings = [dict(r) for r in table[list(sweep.SETTINGS)].drop_duplicates().to_dict("records")]
    assert sweep._best(table, settings)["learning_rate"] == 1e-4  # 0.2 beats 0.1: the mean, not the best method
    crit = sweep.summary(table).set_index("learning_rate")
    assert crit.loc[1e-4, "criterion"] == pytest.approx(0.2) and crit.loc[2e-4, "criterion"] == pytest.approx(0.1)
    assert crit.loc[2e-4, "gain_off"] == pytest.approx(0.5)


def test_settings_reach_the_fields_they_name():
    prof = sweep.with_settings(load_profile("smoke"), learning_rate=3e-4, beta=0.3, num_train_epochs=2,
                               total_pairs=64, num_samples=8)
    assert sweep.settings_of(prof) == {"learning_rate": 3e-4, "beta": 0.3, "num_train_epochs": 2, "total_pairs": 64,
                                       "num_samples": 8}


def test_dev_rewards_use_the_dev_split_only(tiny_run):
    world = tiny_world(tiny_run)
    dev = {t.prompt for t in world.dev_tasks()}
    assert dev and not dev & {t.prompt for split in ("sft", "train", "eval", "train_hs2")
                              for t in world.built.tasks(split)}
    got = sweep.dev_rewards(world, world.sft_policy(world.cell()))
    assert set(got) == set(CATEGORIES)
    again = sweep.dev_rewards(world, world.sft_policy(world.cell()))
    assert got == again
