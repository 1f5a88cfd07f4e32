"""The real-model path end to end on a CPU: the ``tiny-hub`` profile (local hub-format models and data built by
``simplemix.tinyhub``) through every chapter and the book, LoRA for the chapters and QLoRA (bitsandbytes 4-bit on
the CPU) for one method through the command line, with invariants checked on what the run stored.

Like the smoke book test, the run uses the checkout's ``runs/tiny-hub`` (where the recipe's relative paths point).
"""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from simplemix import config, runner, tinyhub, world

PROFILE = "tiny-hub"


@pytest.fixture(scope="module")
def hub_run():
    """Build the artifacts, run every chapter of the profile, render its book; returns the run directory."""
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    try:
        tinyhub.build()
        (runner.REPO / "runs" / PROFILE / "results.json").unlink(missing_ok=True)  # only this run's chapters count
        assert runner.run_notebooks(PROFILE, runs_dir=runner.REPO / "runs", force=True, jobs=2) == 0
        run_dir = config.default_run_dir(PROFILE, runner.REPO / "runs")
        assert runner.build_book(run_dir) == 0
    finally:
        mp.undo()
    return run_dir


@pytest.fixture(scope="module")
def hub_world(hub_run):
    return world.resolve(config.load_profile(PROFILE), hub_run)


def test_the_builder_is_deterministic_and_writes_real_datas_defects(hub_run, tmp_path):
    built = tinyhub.default_out()
    again = tinyhub.build(tmp_path / "again")
    files = sorted(p.relative_to(built) for p in built.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for name in files:
        assert (built / name).read_bytes() == (again / name).read_bytes(), name
    policy, reward = (json.loads((built / m / "config.json").read_text()) for m in ("policy", "reward"))
    assert policy["architectures"] == ["LlamaForCausalLM"] and reward["architectures"] == ["Gemma2ForSequenceClassification"]
    templates = [(built / m / "chat_template.jinja").read_text() for m in ("policy", "reward")]
    assert templates[0] != templates[1]
    text = (built / "ultrafeedback.jsonl").read_text(encoding="utf-8")
    assert "\u2028" not in text and "\\u2028" in text  # written escaped: one row per line for every line reader
    rows = [json.loads(line) for line in text.splitlines()]
    prompts = [r["prompt"] for r in rows]
    assert len(set(prompts)) < len(prompts)  # a repeated prompt
    assert any(r["chosen"] == r["rejected"] for r in rows) and any(r["rejected"] == "" for r in rows)
    assert any("\u2028" in p for p in prompts) and max(map(len, prompts)) > tinyhub.LONG_PROMPT_CHARS


def test_every_chapter_runs_and_the_book_renders(hub_run):
    results = json.loads((hub_run / "results.json").read_text())
    chapters = [p.stem for p in runner.notebooks() if not p.name.startswith(("00", "9"))]
    assert set(chapters) <= set(results), sorted(set(chapters) - set(results))
    html = hub_run / "_build" / "html" / "notebooks"
    for nb in runner.notebooks():
        page = (html / f"{nb.stem}.html").read_text(encoding="utf-8")
        assert "Traceback (most recent call last)" not in page, nb.stem
    # chapter 00 describes (and builds) the miniature world, which this profile does not use: not run, and said so
    assert "was not run here" in (html / "00_miniature_world.html").read_text(encoding="utf-8")
    stages = {p.name for p in (hub_run / "stages").iterdir()}
    assert "off-policy" in stages and not {s for s in stages if s.startswith("miniature-")}, sorted(stages)
    assert results["03_simplemix_and_baselines"]["cells"] == ["tiny-llama__tiny-ultrafeedback",
                                                              "tiny-llama__tiny-helpsteer2"]


def test_the_data_defects_are_handled_as_the_recipe_says(hub_world):
    ufc = hub_world.cell("tiny-llama__tiny-ultrafeedback")
    raw = hub_world.raw_pairs(ufc.dataset)
    rows = [json.loads(line) for line in (tinyhub.default_out() / "ultrafeedback.jsonl").read_text().splitlines()]
    assert len(raw) == len(rows) - 1  # the identical pair is dropped, the empty response kept
    assert "" in raw["rejected"] and not any(c == r for c, r in zip(raw["chosen"], raw["rejected"]))
    off = hub_world.off_policy_pairs(ufc, progress=False)  # the stored, re-scored pairs round-trip U+2028
    assert any("\u2028" in p[-1]["content"] for p in off["prompt"])
    from simplemix import methods

    dropped = methods.too_long(hub_world, ufc, progress=False)
    assert dropped["off"]["too_long"] >= 1  # the prompt longer than training.max_length


def test_stored_scores_are_the_reward_models_scores_of_their_own_texts(hub_world):
    from simplemix import onpolicy
    from simplemix.reward import HFRewardModel

    cell = hub_world.cell()
    entries = onpolicy.on_policy_pairs(hub_world, cell, progress=False)
    pairs = onpolicy.load_pairs(entries["pairs"]).select(range(6))
    off = hub_world.off_policy_pairs(cell, progress=False).select(range(6))
    rm = HFRewardModel(hub_world.profile.reward)  # a fresh load, scoring one pair's texts at a time
    for ds in (pairs, off):
        for row in ds:
            got = rm.score([row["prompt"]] * 2, [row["chosen"], row["rejected"]])
            assert math.isclose(got[0], row["score_chosen"], rel_tol=1e-4, abs_tol=1e-4), row["pair_id"]
            assert math.isclose(got[1], row["score_rejected"], rel_tol=1e-4, abs_tol=1e-4), row["pair_id"]
            assert row["score_chosen"] >= row["score_rejected"]


def test_the_judge_is_the_reward_model_on_a_stratified_subset(hub_world):
    from simplemix import categories, evaluation, experiments

    sft = experiments.run_method(hub_world, hub_world.cell(), None, "SFT")
    table = sft.annotations
    assert len(table) == hub_world.profile.evaluation.num_prompts
    assert table["annotator"].str.startswith("reward-model proxy").all()
    everything = set(categories.categories_of(list(evaluation.alpaca_eval_set()["instruction"])))
    assert set(hub_world.groups(table)) == everything  # every category at least once


def test_qlora_trains_one_method_through_the_command_line(hub_run):
    cmd = [sys.executable, "-m", "simplemix.cli", "train", "--profile", PROFILE, "--method", "off",
           "--set", "training.finetuning=qlora", "--run", str(hub_run)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=runner.REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    manifests = {p.parent: json.loads(p.read_text()) for p in (hub_run / "stages" / "train").glob("*/manifest.json")}
    # the newest: an earlier run's checkout may hold QLoRA entries of older code
    qlora = sorted((m["created"], path) for path, m in manifests.items() if m["config"]["finetuning"] == "qlora")
    assert qlora, [m["config"]["finetuning"] for m in manifests.values()]
    qlora = [qlora[-1][1]]
    assert manifests[qlora[0]]["config"]["quantization"]["load_in_4bit"] is True
    adapter = json.loads((qlora[0] / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == str(tinyhub.default_out() / "policy")
    from safetensors.torch import load_file

    weights = load_file(qlora[0] / "adapter_model.safetensors")
    moved = [k for k, v in weights.items() if "lora_B" in k and v.abs().max() > 0]
    assert moved, "the LoRA B matrices start at zero; training must have moved them"
