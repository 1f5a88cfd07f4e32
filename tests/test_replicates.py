"""Replicates and the two-level bootstrap: the pure core against hand-computed and simulated truth, the intervals
of Replicates against the plain statistics of evaluation, pairing, and the replicate worlds' stage keys."""

import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from conftest import tiny_world

from simplemix import evaluation, experiments, onpolicy
from simplemix.experiments import Replicates, Result

SMALL = ["sampling.num_samples=2", "sampling.max_new_tokens=8", "mixing.total_pairs=12",
         "training.per_device_train_batch_size=4", "training.max_length=192", "training.logging_steps=1",
         "evaluation.max_new_tokens=8"]


# ------------------------------------------------------------------------------------------------ helpers
def fake_result(preferences, predicted=None, label="m", instructions=None) -> Result:
    """A Result without training or a world: an annotation table of ``preferences`` and an LC whose per-prompt
    P(win) is ``predicted`` (default: the plain win of each valid row), as the pure interval functions read it."""
    instructions = list(instructions or [f"prompt {i}" for i in range(len(preferences))])
    table = pd.DataFrame({"instruction": instructions, "preference": preferences, "output_1": "a", "output_2": "b"})
    valid = evaluation.preferences(table)
    kept = table.loc[valid.index, "instruction"].to_numpy()
    predicted = pd.Series((valid - 1).to_numpy() if predicted is None else np.asarray(predicted, float), index=kept)
    wr = evaluation.win_rate(table).win_rate
    lc = evaluation.LengthControlled(float(predicted.mean() * 100), wr, {}, math.nan, "test", predicted)
    return Result(label, None, None, (), SimpleNamespace(manifest={"info": {"win_rate": wr}}), table, lc)


def reps(*per_seed, label="m", seeds=None) -> Replicates:
    """Replicates of fake Results, one list of preferences per seed."""
    results = tuple(fake_result(p, label=label) for p in per_seed)
    return Replicates(label, None, tuple(seeds or range(len(results))), results)


def plain_bootstrap(values, n_boot, seed, level=0.95):
    """The textbook prompt bootstrap of a mean (independent of the code under test)."""
    rng = np.random.default_rng(seed)
    values = np.asarray(values, float)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(axis=1)
    return np.quantile(means, [(1 - level) / 2, (1 + level) / 2])


# ------------------------------------------------------------------------------ (a) one seed = prompt bootstrap
def test_with_one_seed_the_interval_is_the_prompt_bootstrap_and_the_mean_the_plain_win_rate():
    rng = np.random.default_rng(0)
    prefs = list(1 + rng.random(400))
    prefs[:3] = [0, np.nan, 2.5]  # a draw (counts 1.5), a missing and an out-of-range verdict (both dropped)
    r = reps(prefs, seeds=[7])
    table = experiments.interval(r, n_boot=4000, seed=1)
    row = table.loc["all"]
    plain = evaluation.win_rate(r.results[0].annotations)
    assert row["mean"] == pytest.approx(plain.win_rate, abs=1e-9) == r.win_rate
    assert row["n_prompts"] == plain.n == 398 and row["n_seeds"] == 1
    values = (evaluation.preferences(r.results[0].annotations) - 1).to_numpy() * 100
    lo, hi = plain_bootstrap(values, 20000, 2)
    assert row["lo"] == pytest.approx(lo, abs=0.25) and row["hi"] == pytest.approx(hi, abs=0.25)
    # and the normal approximation from the standard error evaluation reports
    assert row["half_width"] == pytest.approx(1.96 * plain.standard_error, rel=0.05)
    assert row["half_width"] == pytest.approx((row["hi"] - row["lo"]) / 2)


def test_lc_interval_of_one_seed_rests_on_the_fitted_length_controlled_model():
    rng = np.random.default_rng(3)
    n = 80
    instructions = [f"instruction {i}" for i in range(n)]
    long = rng.random(n) < 0.5
    prefs = np.clip(1 + 0.3 + 0.4 * long + rng.normal(0, 0.15, n), 1, 2)  # longer answers win more
    table = pd.DataFrame({"instruction": instructions, "preference": prefs, "output_1": "x" * 200,
                          "output_2": ["y" * (400 if k else 100) for k in long]})
    difficulty = pd.Series(rng.normal(0, 1, n), index=instructions)
    lc = evaluation.length_controlled(table, difficulty, "test")
    wr = evaluation.win_rate(table).win_rate
    result = Result("m", None, None, (), SimpleNamespace(manifest={"info": {"win_rate": wr}}), table, lc)
    r = Replicates("m", None, (0,), (result,))
    row = experiments.interval(r, stat="lc_win_rate", n_boot=4000, seed=0).loc["all"]
    assert row["mean"] == pytest.approx(lc.lc_win_rate) == r.lc_win_rate  # the LC of a set: 100 x mean predicted
    lo, hi = plain_bootstrap(lc.predicted.to_numpy() * 100, 20000, 1)
    assert row["lo"] == pytest.approx(lo, abs=0.3) and row["hi"] == pytest.approx(hi, abs=0.3)


# ------------------------------------------------------------------------------------- (b) hand-computed
def test_two_level_draws_follow_the_hand_computed_distribution():
    # level 1 only: two seeds, constant within each (1 and 3, of different sizes). A draw picks two seeds with
    # replacement: (0, 0) -> 1, mixed -> 2, (1, 1) -> 3, with probabilities 1/4, 1/2, 1/4
    draws = experiments.bootstrap_draws([[1.0, 1.0], [3.0, 3.0, 3.0]], n_boot=20000, seed=0)
    values, counts = np.unique(np.round(draws, 12), return_counts=True)
    assert list(values) == [1.0, 2.0, 3.0]
    assert counts / counts.sum() == pytest.approx([0.25, 0.5, 0.25], abs=0.015)
    # level 2 only: one seed with prompts 0 and 1: the resampled mean is 0, 1/2 or 1 with 1/4, 1/2, 1/4
    draws = experiments.bootstrap_draws([[0.0, 1.0]], n_boot=20000, seed=1)
    values, counts = np.unique(draws, return_counts=True)
    assert list(values) == [0.0, 0.5, 1.0]
    assert counts / counts.sum() == pytest.approx([0.25, 0.5, 0.25], abs=0.015)
    # the point estimate is the mean over seeds of the per-seed means (not the mean over all prompts)
    out = experiments.hierarchical_interval([[1.0, 1.0], [3.0, 3.0, 3.0]], n_boot=200)
    assert out["mean"] == 2.0 and out["n_seeds"] == 2 and out["n_prompts"] == 2.5
    assert (out["lo"], out["hi"]) == (1.0, 3.0)


def test_difference_of_hand_made_annotation_tables():
    # a: seed 0 wins 2 of 3 prompts (66.67), seed 1 draws all three (50): mean 58.33
    # b: seed 0 loses all (0), seed 1 wins, loses, draws (50): mean 25; a - b = 33.33
    a = reps([2, 2, 1], [1.5, 1.5, 1.5], label="a")
    b = reps([1, 1, 1], [2, 1, 1.5], label="b")
    assert a.win_rate == pytest.approx(175 / 3) and b.win_rate == pytest.approx(25)
    d = experiments.difference(a, b, n_boot=500).loc["all"]
    assert d["delta"] == pytest.approx(100 / 3) and (d["n_seeds"], d["n_prompts"]) == (2, 3)
    assert d["lo"] <= d["delta"] <= d["hi"]
    # a constant per-prompt gain is a degenerate distribution: the paired interval is that gain exactly
    rng = np.random.default_rng(0)
    base = [list(1 + 0.8 * rng.random(50)) for _ in range(3)]
    worse, better = reps(*base, label="base"), reps(*[[p + 0.1 for p in s] for s in base], label="plus")
    d = experiments.difference(better, worse, n_boot=300).loc["all"]
    assert d["delta"] == pytest.approx(10) and d["lo"] == pytest.approx(10) and d["hi"] == pytest.approx(10)
    # per group: the groups' deltas by hand
    groups = {f"prompt {i}": "first" if i < 2 else "last" for i in range(3)}
    by = experiments.difference(a, b, groups, n_boot=200)
    assert list(by.index) == ["first", "last"]
    assert by.loc["first", "delta"] == pytest.approx(((100 - 0) + (50 - 50)) / 2)  # seed 0: 100, seed 1: 0
    assert by.loc["last", "delta"] == pytest.approx(((0 - 0) + (50 - 50)) / 2)
    assert by.loc["first", "n_prompts"] == 2 and by.loc["last", "n_prompts"] == 1


# ---------------------------------------------------------------------------------------------- (c) pairing
def test_identical_replicates_differ_by_exactly_zero_and_mismatches_are_refused():
    rng = np.random.default_rng(1)
    seeds = [list(1 + rng.random(120)) for _ in range(3)]
    a, b = reps(*seeds, label="a"), reps(*seeds, label="b")  # the same tables, other objects
    d = experiments.difference(a, b, n_boot=1000, seed=3).loc["all"]
    assert (d["delta"], d["lo"], d["hi"], d["half_width"]) == (0.0, 0.0, 0.0, 0.0)
    assert experiments.interval(a, n_boot=1000).loc["all", "half_width"] > 1  # while each alone varies
    # the LC statistic pairs the same way
    assert experiments.difference(a, b, stat="lc_win_rate", n_boot=200).loc["all", ["lo", "hi"]].tolist() == [0, 0]
    # prompts are matched by instruction, not by row: a shuffled copy is still identical
    shuffled = Replicates("c", None, a.seeds, tuple(
        fake_result(list(r.annotations["preference"][::-1]), instructions=list(r.annotations["instruction"][::-1]))
        for r in a.results))
    assert experiments.difference(a, shuffled, n_boot=200).loc["all", ["lo", "hi"]].tolist() == [0, 0]
    with pytest.raises(ValueError, match="same seeds"):
        experiments.difference(a, reps(*seeds, seeds=[0, 1, 5]))
    other = Replicates("d", None, a.seeds, a.results[:2] + (fake_result(seeds[2][:-1]),))
    with pytest.raises(ValueError, match=r"seed 2: a paired comparison needs the same evaluation prompts; 1 only"):
        experiments.difference(a, other)
    with pytest.raises(ValueError, match="stat must be one of"):
        experiments.interval(a, stat="accuracy")


# -------------------------------------------------------------------------------------------- (d) coverage
@pytest.mark.parametrize("n_seeds,seed_sd", [(3, 30 / math.sqrt(200)), (1, 0.0)])
def test_the_95_interval_covers_a_known_mean_about_95_percent_of_the_time(n_seeds, seed_sd):
    # per-prompt values around mu with sd 30 points; each seed shifts its prompts by a N(0, seed_sd) effect (seed
    # sd equal to the prompt standard error: the regime of a replicated DPO run), fresh in every simulation
    rng, mu, hits = np.random.default_rng(11), 50.0, 0
    for i in range(200):
        values = [rng.normal(mu + e, 30, 200) for e in rng.normal(0, seed_sd, n_seeds)]
        out = experiments.hierarchical_interval(values, n_boot=1000, seed=i)
        hits += out["lo"] <= mu <= out["hi"]
    assert 0.88 <= hits / 200 <= 0.99


# ------------------------------------------------------------------------------------ (e) seed variation
def test_seeds_that_disagree_widen_the_interval():
    rng = np.random.default_rng(2)
    low = list(np.clip(1.4 + rng.normal(0, 0.1, 300), 1, 2))  # a seed at about 40%
    high = list(np.clip(1.6 + rng.normal(0, 0.1, 300), 1, 2))  # a seed at about 60%
    alone = [experiments.interval(reps(p), n_boot=1000).loc["all"] for p in (low, high)]
    both = experiments.interval(reps(low, high), n_boot=1000).loc["all"]
    assert both["mean"] == pytest.approx((alone[0]["mean"] + alone[1]["mean"]) / 2)
    assert both["half_width"] > 3 * max(a["half_width"] for a in alone)
    assert both["lo"] < alone[0]["mean"] + 1 and both["hi"] > alone[1]["mean"] - 1
    # two seeds that agree do not widen it
    twin = experiments.interval(reps(low, low), n_boot=1000).loc["all"]
    assert twin["half_width"] < 1.5 * alone[0]["half_width"]


def test_summary_and_differences_tables_are_the_intervals_of_each_label():
    rng = np.random.default_rng(4)
    table = {m: reps(*[list(1 + rng.random(60) * k) for _ in range(3)], label=m) for m, k in (("x", 1.0), ("y", 0.5))}
    groups = {f"prompt {i}": "even" if i % 2 == 0 else "odd" for i in range(60)}
    tidy = experiments.summary_table(table, n_boot=300, seed=5)
    assert list(tidy.index) == ["x", "y"]
    for m in table:
        for stat in ("win_rate", "lc_win_rate"):
            alone = experiments.interval(table[m], stat=stat, n_boot=300, seed=5).loc["all"]
            assert tidy.loc[m, [stat, f"{stat}_lo", f"{stat}_hi", f"{stat}_half_width"]].tolist() == \
                alone[["mean", "lo", "hi", "half_width"]].tolist()
        assert tidy.loc[m, "win_rate"] == pytest.approx(table[m].win_rate)
    assert (tidy["n_seeds"] == 3).all() and (tidy["n_prompts"] == 60).all()
    grouped = experiments.summary_table(table, groups, stats=["win_rate"], n_boot=100)
    assert list(grouped.index) == [("x", "even"), ("x", "odd"), ("y", "even"), ("y", "odd")]
    assert (grouped["n_prompts"] == 30).all()
    deltas = experiments.differences_table(table, "x", n_boot=300, seed=5)
    d = experiments.difference(table["x"], table["y"], stat="lc_win_rate", n_boot=300, seed=5).loc["all"]
    assert list(deltas.index) == ["y"]
    assert deltas.loc["y", "lc_win_rate_delta"] == d["delta"] == pytest.approx(
        table["x"].lc_win_rate - table["y"].lc_win_rate)
    assert (deltas.loc["y", "lc_win_rate_delta_lo"], deltas.loc["y", "lc_win_rate_delta_hi"]) == (d["lo"], d["hi"])
    assert "one seed" in experiments.interval_note([0]) and "3 seeds" in experiments.interval_note(table["x"])


def test_the_bootstrap_is_vectorized_and_fast():
    import time

    rng = np.random.default_rng(0)
    values = [rng.random(800) for _ in range(3)]
    experiments.bootstrap_draws(values, 10)
    start = time.perf_counter()
    draws = experiments.bootstrap_draws(values, 1000, seed=0)
    assert time.perf_counter() - start < 1.0 and draws.shape == (1000,)
    ragged = experiments.bootstrap_draws([values[0], values[1][:700], values[2][:10]], 1000, seed=0)
    assert np.isfinite(ragged).all()
    assert (experiments.bootstrap_draws(values, 50, seed=3) == experiments.bootstrap_draws(values, 50, seed=3)).all()


# ----------------------------------------------------------------------------- (f) the replicate worlds
def test_replicate_worlds_offset_the_three_seeds_and_key_their_stages_apart(run_dir):
    w = tiny_world(run_dir, SMALL + ["seeds=[0, 1, 2]", "sampling.seed=5"])
    cell = w.cell()
    assert experiments.replicate(w, 0) is w and experiments.replicate(w, 2) is experiments.replicate(w, 2)
    for s in (1, 2):
        p, base = experiments.replicate(w, s).profile, w.profile
        assert (p.sampling.seed, p.mixing.seed, p.training.seed) == (5 + s, s, s)
        assert p.sampling.temperature == base.sampling.temperature and p.mixing.total_pairs == base.mixing.total_pairs
        assert experiments.replicate(w, s).run_dir == w.run_dir
    keys = {s: onpolicy.plan(experiments.replicate(w, s), cell)[0]["key"] for s in (0, 1, 2)}
    assert len(set(keys.values())) == 3
    assert keys[0] == onpolicy.plan(tiny_world(run_dir, SMALL + ["sampling.seed=5"]), cell)[0]["key"]
    sft = w.sft_policy(cell)  # the SFT policy's evaluation does not depend on the seeds: one stage for all
    assert len({experiments.evaluation_key(experiments.replicate(w, s), sft) for s in (0, 1, 2)}) == 1
    with pytest.raises(ValueError, match="integers >= 0"):
        experiments.replicate(w, -1)
    with pytest.raises(ValueError, match="unique"):
        experiments.run_replicates(w, cell, None, seeds=[1, 1])


def test_run_replicates_trains_each_seed_and_its_seed_0_is_the_plain_run(run_dir):
    w = tiny_world(run_dir, SMALL + ["seeds=[0, 3]", "training.warmup_steps=0"])
    cell = w.cell()
    plain = experiments.run_method(tiny_world(run_dir, SMALL + ["training.warmup_steps=0"]), cell, "off")
    off = experiments.run_replicates(w, cell, "off", "Off")
    assert (off.label, off.seeds, off.cell) == ("Off", (0, 3), cell)
    first, other = off.results
    assert first.trained[0].key == plain.trained[0].key and first.trained[0].hit  # replicate 0: a cache hit
    assert first.evaluation.key == plain.evaluation.key and first.evaluation.hit
    assert other.trained[0].key != first.trained[0].key and other.evaluation.key != first.evaluation.key
    assert other.trained[0].manifest["config"]["dpo"]["seed"] == 3
    assert off.win_rate == pytest.approx((first.win_rate + other.win_rate) / 2)
    frame = off.per_seed
    assert list(frame.index) == [0, 3] and (frame["rows"] == 12).all() and (frame["name"] == "Off").all()
    assert frame.loc[3, "lc_win_rate"] == other.lc_win_rate
    # a hand-made pair set per replicate world: the off-policy pairs of each world are that world's Off run
    from simplemix import methods

    again = experiments.evaluate_pairs_replicates(
        w, cell, lambda rw: methods.method_pairs(rw, cell, "off", progress=False), "off")
    assert [r.trained[0].key for r in again.results] == [r.trained[0].key for r in off.results]
    assert all(r.trained[0].hit for r in again.results)
    row = experiments.interval(off, n_boot=200).loc["all"]
    assert row["n_seeds"] == 2 and row["mean"] == pytest.approx(off.win_rate)
    sft = experiments.run_replicates(w, cell, None)
    assert sft.label == "SFT" and sft.results[0].evaluation.key == sft.results[1].evaluation.key


def test_a_contrast_is_the_hand_computed_combination_and_refuses_unpaired_terms():
    # SimpleMix minus the mean of two others; one seed, three prompts, win rates 100/0/50 per prompt
    mix, on, off = reps([2, 2, 1], label="mix"), reps([1, 1, 2], label="on"), reps([1.5, 2, 1], label="off")
    c = experiments.contrast([(1, mix), (-0.5, on), (-0.5, off)], n_boot=300).loc["all"]
    # per prompt: 100 - (0 + 50)/2 = 75, 100 - (0 + 100)/2 = 50, 0 - (100 + 0)/2 = -50; mean 25
    assert c["delta"] == pytest.approx(25) and c["lo"] <= 25 <= c["hi"]
    assert experiments.contrast([(1, mix), (-1, on)], n_boot=300).equals(experiments.difference(mix, on, n_boot=300))
    with pytest.raises(ValueError, match="same seeds"):
        experiments.contrast([(1, mix), (-1, reps([1, 1, 1], [1, 1, 1], label="two seeds"))])


def test_an_unpaired_difference_is_the_difference_of_means_with_a_bootstrap_that_matches_by_hand():
    rng = np.random.default_rng(1)
    a, b = [rng.normal(1.0, 1, 400), rng.normal(1.2, 1, 300)], [rng.normal(0, 1, 500), rng.normal(0.1, 1, 200)]
    d = experiments.unpaired_difference(a, b, n_boot=2000, seed=0)
    assert d["delta"] == pytest.approx((a[0].mean() + a[1].mean()) / 2 - (b[0].mean() + b[1].mean()) / 2)
    assert d["lo"] < d["delta"] < d["hi"] and d["n_seeds"] == 2
    # constant values: no prompt variation, and seeds that agree: the interval is the difference itself
    flat = experiments.unpaired_difference([np.full(5, 2.0)] * 3, [np.full(7, 0.5)] * 3, n_boot=200)
    assert flat["lo"] == pytest.approx(1.5) and flat["hi"] == pytest.approx(1.5)
    # one seed: the half-width is the textbook two-sample one, about 1.96 x sqrt(var_a/n_a + var_b/n_b)
    one = experiments.unpaired_difference([a[0]], [b[0]], n_boot=4000, seed=3)
    se = np.sqrt(a[0].var() / len(a[0]) + b[0].var() / len(b[0]))
    assert one["half_width"] == pytest.approx(1.96 * se, rel=0.1)
    with pytest.raises(ValueError, match="same seeds"):
        experiments.unpaired_difference(a, b[:1])
