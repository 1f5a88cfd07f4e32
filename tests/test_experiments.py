"""From pairs to a number on the tiny world: the evaluation stage and its oracle annotations, Results of methods
and of hand-made pair sets, the miniature LC difficulty, benchmarks, and what a new mixture ratio recomputes."""

import json
import math
from pathlib import Path

import pytest
from conftest import tiny_world

from simplemix import evaluation, experiments, methods
from simplemix.miniature.oracle import judge as oracle
from simplemix.sampling import Policy

SMALL = ["sampling.num_samples=4", "sampling.max_new_tokens=8", "mixing.total_pairs=12",
         "training.per_device_train_batch_size=4", "training.max_length=192", "training.logging_steps=1",
         "evaluation.max_new_tokens=8"]


def test_evaluation_stage_writes_alpaca_eval_files_and_oracle_annotations(run_dir):
    world = tiny_world(run_dir, SMALL)
    sft = world.sft_policy(world.cell())
    entry = experiments.evaluate_policy(world, sft, "sft", progress=False)
    outputs = json.loads((entry.path / "model_outputs.json").read_text())
    tasks = {t.prompt: t for t in world.built.tasks("eval")}  # a prompt drawn twice: evaluated once
    assert [b["instruction"] for b in world.baseline()] == list(dict.fromkeys(t.prompt for t in
                                                                              world.built.tasks("eval")))
    assert set(outputs[0]) == {"instruction", "output", "generator", "dataset"} and len(outputs) == len(tasks)
    assert {o["generator"] for o in outputs} == {"sft"}
    assert [o["dataset"] for o in outputs] == [tasks[o["instruction"]].category for o in outputs]
    table = experiments.load_evaluation(entry)
    assert len(table) == len(tasks) and table["preference"].between(1, 2).all()
    # the oracle's verdicts by hand: preference = 1 + sigmoid(r_model - r_baseline)
    for row in table.itertuples():
        task = tasks[row.instruction]
        gap = oracle(task, row.output_2).reward - oracle(task, row.output_1).reward
        assert row.preference == pytest.approx(1 + 1 / (1 + math.exp(-gap)))
    assert entry.manifest["info"]["win_rate"] == pytest.approx(evaluation.win_rate(table).win_rate)
    assert not entry.manifest["info"]["leaderboard_comparable"]
    assert entry.manifest["config"]["policy"] == sft.key and entry.manifest["config"]["judge"]["judge"] == "oracle"
    assert experiments.evaluate_policy(tiny_world(run_dir, SMALL), sft, "sft", progress=False).hit
    # the weaker SFT policy is another policy: its own evaluation
    weak = world.sft_policy(world.cell("mini-sft__mini-ultrafeedback"))
    assert experiments.evaluate_policy(world, weak, "weak", progress=False).key != entry.key


def test_run_methods_gives_one_result_per_label_with_its_training_evaluation_and_categories(run_dir):
    world = tiny_world(run_dir, SMALL + ["training.dpo_mix_p.rounds=2", "training.warmup_steps=0"])
    cell = world.cell()
    results = experiments.run_methods(world, cell, {"SFT": None, "Off": "off", "SimpleMix": "simplemix",
                                                    "DPO-Mix-P": "dpo_mix_p"})
    assert list(results) == ["SFT", "Off", "SimpleMix", "DPO-Mix-P"]
    sft = results["SFT"]
    assert sft.trained == () and sft.training == {} and sft.policy == world.sft_policy(cell) and sft.cell == cell
    off, mix, mixp = results["Off"], results["SimpleMix"], results["DPO-Mix-P"]
    assert {k: off.training[k] for k in ("name", "rows", "on_policy", "off_policy", "rounds")} == {
        "name": "Off", "rows": 12, "on_policy": 0, "off_policy": 12, "rounds": 1}
    # the name is the label asked for, never the stored run's (a shared run keeps its first requester's name)
    assert off.trained[0].manifest["info"]["name"] == "off"
    assert (mix.training["name"], mix.training["on_policy"], mix.training["off_policy"]) == ("SimpleMix", 6, 6)
    assert mixp.training["name"] == "DPO-Mix-P (2 rounds)" and len(mixp.trained) == 2
    assert (mixp.training["rows"], mixp.training["on_policy"]) == (12, 12)  # summed over the rounds
    assert mixp.training["global_step"] == sum(e.manifest["info"]["global_step"] for e in mixp.trained)
    assert mixp.training["train_loss"] == mixp.trained[-1].manifest["info"]["train_loss"]
    for label, result in results.items():
        assert result.label == label
        expected = Policy.trained(result.trained[-1], world.sft_policy(cell)).key if result.trained else sft.policy.key
        assert result.policy.key == expected == result.evaluation.manifest["config"]["policy"]
        assert result.win_rate == result.evaluation.manifest["info"]["win_rate"]
        assert result.win_rate == pytest.approx(evaluation.win_rate(result.annotations).win_rate)
        assert result.lc_win_rate == pytest.approx(world.lc(result.annotations).lc_win_rate)
    assert len({r.evaluation.key for r in results.values()}) == 4
    # per category, the win rate of a Result is its annotations' mean by hand
    groups = world.groups(off.annotations)
    tasks = {t.prompt: t for t in world.built.tasks("eval")}
    assert all(groups[i] == tasks[i].category for i in off.annotations["instruction"])
    table = evaluation.by_group(off.annotations, groups, n_boot=10)
    assert sorted(table.index) == sorted(world.shown_categories())
    math_rows = off.annotations[[tasks[i].category == "math" for i in off.annotations["instruction"]]]
    assert table.loc["math", "win_rate"] == pytest.approx(100 * (math_rows["preference"] - 1).mean())
    # a hand-made pair set takes the same path: the off-policy pairs again are the Off result's run
    again = experiments.evaluate_pairs(world, cell, methods.method_pairs(world, cell, "off", progress=False), "off")
    assert again.trained[0].key == off.trained[0].key and again.trained[0].hit
    assert again.evaluation.key == off.evaluation.key and again.evaluation.hit
    with pytest.raises(ValueError, match="unknown method 'best'"):
        experiments.run_method(world, cell, "best")


def test_miniature_difficulty_orders_prompts_by_how_often_the_pool_beats_the_baseline(run_dir):
    import pandas as pd
    from scipy.stats import spearmanr

    world = tiny_world(run_dir, SMALL)
    difficulty, source = world.difficulty()
    assert source.startswith("derived from the miniature pool")
    assert list(difficulty.index) == [b["instruction"] for b in world.baseline()]
    assert abs(difficulty.mean()) < 1e-6 and difficulty.std() > 0
    # the instruction effect must track the pool's mean preference per prompt (it is that, net of length)
    table = experiments.load_evaluation(experiments.evaluate_policy(world, world.sft_policy(world.cell()), "sft",
                                                                    progress=False))
    lc = world.lc(table)
    assert lc.difficulty_source.startswith("derived from the miniature pool")
    assert isinstance(lc.predicted, pd.Series) and set(lc.predicted.index) == set(table["instruction"])
    pool = world.pool_annotations().groupby("instruction")["preference"].mean()
    assert spearmanr(difficulty.to_numpy(), pool.loc[difficulty.index].to_numpy()).statistic > 0.8


def test_benchmark_stage_runs_lm_eval_on_full_and_lora_results(run_dir, monkeypatch):
    from simplemix.harness import run_benchmarks

    root = Path(__file__).resolve().parent.parent
    tasks_dir = root / "tests" / "data" / "lm_eval_tasks"
    monkeypatch.chdir(root)  # the tiny task names its data file relative to the repository root
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    world = tiny_world(run_dir, SMALL + ["evaluation.benchmarks=[simplemix_tiny_mc]", "training.finetuning=lora",
                                         "training.learning_rate=0.01"])
    cell = world.cell()
    policy = world.sft_policy(cell)
    sft = experiments.benchmark_policy(world, policy, include_path=tasks_dir)
    stored = json.loads((sft.path / "results.json").read_text())
    direct = run_benchmarks(policy.model.name_or_path, ["simplemix_tiny_mc"], include_path=tasks_dir, device="cpu")
    assert sft.manifest["info"]["average"] == pytest.approx(direct.average)
    assert stored["average"] == pytest.approx(direct.average)
    assert sft.manifest["config"]["policy"] == policy.key
    (lora,) = methods.train_method(world, cell, "off", progress=False)
    tuned = experiments.benchmark_policy(world, Policy.trained(lora, policy), include_path=tasks_dir)
    assert 0.0 <= tuned.manifest["info"]["average"] <= 1.0 and tuned.key != sft.key
    with pytest.raises(ValueError, match="lists no evaluation.benchmarks"):
        experiments.benchmark_policy(tiny_world(run_dir), policy)


def test_a_new_mixture_ratio_computes_only_its_own_stages(run_dir):
    from collections import Counter

    world = tiny_world(run_dir, SMALL)
    cell = world.cell()

    def stages():
        return Counter(p.parent.parent.name for p in (run_dir / "stages").glob("*/*/manifest.json"))

    for r in (0.0, 0.5):
        experiments.run_methods(world, cell, {f"r={r}": "simplemix"}, on_fraction=r)
    before = stages()
    experiments.run_methods(world, cell, {"r=0.5": "simplemix"}, on_fraction=0.5)
    assert stages() == before, "rerunning a ratio recomputed something"
    experiments.run_methods(world, cell, {"r=0.25": "simplemix"}, on_fraction=0.25)
    # the new mix's reference log-probs, its training run and its evaluation; nothing upstream
    assert stages() - before == Counter({"ref-logps": 1, "train": 1, "evaluation": 1})
