"""The methods end to end on the tiny world: one pair budget for all, each method's pair sources, DPO-Mix-P's
rounds chained through the store, and LoRA results loading as merged models."""

import json
import math
import shutil
from pathlib import Path

import pytest

from simplemix import experiments
from simplemix.config import ConfigError, ModelConfig, load_profile
from simplemix.data import load_preferences
from simplemix.sampling import load_policy

SMALL = ["sampling.num_samples=2", "sampling.max_new_tokens=8", "mixing.total_pairs=12",
         "training.per_device_train_batch_size=4", "training.max_length=192", "training.logging_steps=1"]


@pytest.fixture
def run_dir(tiny_run_module, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    return Path(shutil.copytree(tiny_run_module, tmp_path / "run"))


def test_every_method_trains_on_the_same_budget_from_its_own_sources(run_dir):
    prof = load_profile("smoke", SMALL)
    sources = {}
    for method in ("off", "on", "simplemix", "hypo"):
        pairs = experiments.method_pairs(prof, run_dir, method, progress=False)
        assert len(pairs) == 12
        sources[method] = sorted(pairs["source"])
    assert sources["off"] == sources["hypo"] == ["off"] * 12 and sources["on"] == ["on"] * 12
    assert sources["simplemix"] == ["off"] * 6 + ["on"] * 6
    quarter = experiments.method_pairs(prof, run_dir, "simplemix", on_fraction=0.25, progress=False)
    assert sorted(quarter["source"]) == ["off"] * 9 + ["on"] * 3
    entry = experiments.run_method(prof, run_dir, "simplemix", progress=False)
    info = entry.manifest["info"]
    assert (info["on_policy"], info["off_policy"], info["name"]) == (6, 6, "simplemix-r0.5")


def test_a_budget_larger_than_a_source_is_a_config_error(run_dir):
    prof = load_profile("smoke", SMALL[:2] + ["mixing.total_pairs=100000"])
    with pytest.raises(ConfigError, match=r"mixing.total_pairs=100000.*\d+ on-policy and \d+ off-policy pairs exist"):
        experiments.method_pairs(prof, run_dir, "off", progress=False)


def test_dpo_mix_p_chains_its_rounds_and_keeps_the_budget(run_dir):
    prof = load_profile("smoke", SMALL + ["training.dpo_mix_p.rounds=2", "training.warmup_steps=0"])
    rounds = experiments.dpo_mix_p(prof, run_dir, progress=False)
    assert [e.manifest["info"]["rows"] for e in rounds] == [6, 6]
    assert all(e.manifest["info"]["on_policy"] == 6 for e in rounds)
    made = sorted((run_dir / "stages" / "dpo-mix-p-pairs").iterdir())
    assert len(made) == 2
    configs = {_manifest(p)["config"]["round"]: _manifest(p)["config"] for p in made}
    assert configs[0]["policy"]["name_or_path"] == "miniature:sft-policy"
    assert configs[1]["policy"]["name_or_path"] == str(rounds[0].path)  # round 1 samples from round 0's policy
    assert configs[1]["fused_weights"] == [[1.5, -0.5], [0.5, 0.5]]
    for p in made:
        pairs, _ = load_preferences("local", p / "pairs.jsonl", source="on", on_invalid={"empty_response": "keep"})
        assert set(pairs["origin"]) == {f"dpo-mix-p-round{_manifest(p)['config']['round']}"}
    again = experiments.dpo_mix_p(prof, run_dir, progress=False)
    assert [e.hit for e in again] == [True, True]


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def test_lora_results_load_as_merged_models_for_sampling_and_the_next_round(run_dir):
    prof = load_profile("smoke", SMALL + ["training.finetuning=lora", "training.dpo_mix_p.rounds=2",
                                          "training.learning_rate=0.01", "training.warmup_steps=0"])
    rounds = experiments.dpo_mix_p(prof, run_dir, progress=False)
    assert (rounds[-1].path / "adapter_config.json").exists()
    model, _ = load_policy(ModelConfig(name_or_path=str(rounds[0].path)), run_dir)
    base, _ = load_policy(ModelConfig(name_or_path="miniature:sft-policy"), run_dir)
    assert type(model) is type(base)  # merged: a plain causal LM, no PEFT wrapper
    moved = [(a - b).abs().max().item() for a, b in zip(model.parameters(), base.parameters())]
    assert max(moved) > 0


def test_miniature_results_table_has_every_method_and_category(run_dir):
    prof = load_profile("smoke", SMALL + ["training.dpo_mix_p.rounds=2", "evaluation.max_new_tokens=8"])
    table = experiments.miniature_results(prof, run_dir, methods=("off", "simplemix"))
    assert list(table.index) == ["sft", "off", "simplemix"]
    assert list(table.columns) == ["coding", "creative", "math", "recommendation", "all"]
    rows = experiments.oracle_rewards(prof.policies[0], run_dir, max_new_tokens=8)
    by_hand = sum(r["reward"] for r in rows if r["category"] == "math") / sum(r["category"] == "math" for r in rows)
    assert table.loc["sft", "math"] == pytest.approx(by_hand)
    assert len(rows) == 4 * 3 and all(0 <= r["tokens"] <= 8 for r in rows)


def test_evaluation_stage_writes_alpaca_eval_files_and_oracle_annotations(run_dir):
    from simplemix import evaluation
    from simplemix.miniature.world import build_world

    prof = load_profile("smoke", SMALL + ["evaluation.max_new_tokens=8"])
    entry = experiments.evaluate_policy(prof, run_dir, prof.policies[0], "sft", progress=False)
    outputs = json.loads((entry.path / "model_outputs.json").read_text())
    unique = {t.prompt for t in build_world(run_dir, progress=False).tasks("eval")}  # a prompt drawn twice: once
    assert set(outputs[0]) == {"instruction", "output", "generator", "dataset"} and len(outputs) == len(unique)
    table = experiments.load_evaluation(entry)
    assert len(table) == len(unique) and table["preference"].between(1, 2).all()
    # the oracle's verdicts by hand: preference = 1 + sigmoid(r_model - r_baseline)
    from simplemix.miniature.oracle import judge as oracle

    tasks = {t.prompt: t for t in build_world(run_dir, progress=False).tasks("eval")}
    row = table.iloc[0]
    gap = oracle(tasks[row.instruction], row.output_2).reward - oracle(tasks[row.instruction], row.output_1).reward
    assert row.preference == pytest.approx(1 + 1 / (1 + math.exp(-gap)))
    assert entry.manifest["info"]["win_rate"] == pytest.approx(evaluation.win_rate(table).win_rate)
    assert not entry.manifest["info"]["leaderboard_comparable"]
    assert experiments.evaluate_policy(prof, run_dir, prof.policies[0], "sft", progress=False).hit


def test_miniature_difficulty_orders_prompts_by_how_often_the_pool_beats_the_baseline(run_dir):
    import pandas as pd
    from scipy.stats import spearmanr

    from simplemix.evaluation import baseline_outputs

    difficulty = experiments.miniature_difficulty(run_dir)
    assert list(difficulty.index) == [b["instruction"] for b in baseline_outputs(run_dir, miniature=True)]
    assert abs(difficulty.mean()) < 1e-6 and difficulty.std() > 0
    # the instruction effect must track the pool's mean preference per prompt (it is that, net of length)
    prof = load_profile("smoke", SMALL + ["evaluation.max_new_tokens=8"])
    table = experiments.load_evaluation(experiments.evaluate_policy(prof, run_dir, prof.policies[0], "sft",
                                                                    progress=False))
    lc = experiments.lc_of(prof, table, run_dir)
    assert lc.difficulty_source.startswith("derived from the miniature pool")
    assert isinstance(lc.predicted, pd.Series) and set(lc.predicted.index) == set(table["instruction"])
    pool = experiments.miniature_pool_annotations(run_dir).groupby("instruction")["preference"].mean()
    assert spearmanr(difficulty.to_numpy(), pool.loc[difficulty.index].to_numpy()).statistic > 0.8


def test_benchmark_stage_runs_lm_eval_on_full_and_lora_results(run_dir, monkeypatch):
    from simplemix.harness import run_benchmarks

    root = Path(__file__).resolve().parent.parent
    tasks_dir = root / "tests" / "data" / "lm_eval_tasks"
    monkeypatch.chdir(root)  # the tiny task names its data file relative to the repository root
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    prof = load_profile("smoke", SMALL + ["evaluation.benchmarks=[simplemix_tiny_mc]", "training.finetuning=lora",
                                          "training.learning_rate=0.01"])
    sft = experiments.benchmark_policy(prof, run_dir, prof.policies[0], include_path=tasks_dir)
    stored = json.loads((sft.path / "results.json").read_text())
    from simplemix.sampling import resolve_model_path

    direct = run_benchmarks(resolve_model_path("miniature:sft-policy", run_dir), ["simplemix_tiny_mc"],
                            include_path=tasks_dir, device="cpu")
    assert sft.manifest["info"]["average"] == pytest.approx(direct.average)
    assert stored["average"] == pytest.approx(direct.average)
    lora = experiments.run_method(prof, run_dir, "off", progress=False)
    tuned = experiments.benchmark_policy(prof, run_dir, ModelConfig(name_or_path=str(lora.path)),
                                         include_path=tasks_dir)
    assert 0.0 <= tuned.manifest["info"]["average"] <= 1.0 and tuned.key != sft.key
    with pytest.raises(ValueError, match="lists no evaluation.benchmarks"):
        experiments.benchmark_policy(load_profile("smoke"), run_dir, prof.policies[0])


def test_a_new_mixture_ratio_computes_only_its_own_stages(run_dir):
    from collections import Counter

    prof = load_profile("smoke", SMALL + ["evaluation.max_new_tokens=8"])

    def stages():
        return Counter(p.parent.parent.name for p in (run_dir / "stages").glob("*/*/manifest.json"))

    for r in (0.0, 0.5):
        experiments.evaluate_methods(prof, run_dir, {f"r={r}": "simplemix"}, on_fraction=r)
    before = stages()
    experiments.evaluate_methods(prof, run_dir, {"r=0.5": "simplemix"}, on_fraction=0.5)
    assert stages() == before, "rerunning a ratio recomputed something"
    experiments.evaluate_methods(prof, run_dir, {"r=0.25": "simplemix"}, on_fraction=0.25)
    # the new mix's reference log-probs, its training run and its evaluation; nothing upstream
    assert stages() - before == Counter({"ref-logps": 1, "train": 1, "evaluation": 1})
