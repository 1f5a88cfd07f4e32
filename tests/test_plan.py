"""The batch dry run: the paper's grid cell by cell, sharing between chapters, and what is already stored."""

import subprocess
import sys

from conftest import tiny_world

from simplemix import onpolicy, plan, runner, world
from simplemix.config import load_profile

TABLE2 = "03_simplemix_and_baselines"


def _paper(tmp_path, overrides=None):
    return plan.plan(world.resolve(load_profile("paper", overrides), tmp_path), runner.notebooks())


def test_paper_runs_table2_on_four_cells_and_the_other_chapters_on_the_primary_one(tmp_path):
    planner = _paper(tmp_path)
    cells = planner.cells
    assert sorted(cells[TABLE2]) == sorted(f"{p}__{d}" for p in ("llama-3.1-instruct", "tulu-3-sft")
                                           for d in ("ultrafeedback", "helpsteer2"))
    for chapter, ids in cells.items():
        if chapter != TABLE2:
            assert ids == ["llama-3.1-instruct__ultrafeedback"], chapter


def test_no_request_of_one_cell_is_keyed_like_another_cells(tmp_path):
    planner = _paper(tmp_path)
    prof = planner.prof
    for request_id, owners in planner.owners.items():
        assert len(owners) == 1, (planner.requests[request_id].stage, owners)
    # the datasets are never merged: each cell's off-policy data is exactly one of the profile's datasets
    # (relabelling a dataset by the reward model does not depend on the policy: one request per dataset)
    off = [r for r in planner.requests.values() if r.stage == "off-policy"]
    assert sorted(r.cell for r in off) == ["dataset:helpsteer2", "dataset:ultrafeedback"]
    for r in off:
        (dataset,) = [d for d in prof.datasets if d.label == r.cell.split(":")[1]]
        assert r.what["dataset"]["path"] == dataset.path
    for r in planner.requests.values():
        if r.stage == "samples":
            policy, dataset = r.cell.split("__")
            assert r.what["dataset"]["path"] == next(
                d.path for d in prof.datasets if d.label == dataset)
    # what only the SFT policy determines (its evaluation) is one request per policy, shared by its cells
    sft = [r for r in planner.requests.values() if r.stage == "evaluation" and r.label == "SFT"]
    assert sorted(r.cell for r in sft) == ["policy:llama-3.1-instruct", "policy:tulu-3-sft"]
    per_cell = [r for r in planner.requests.values() if r.stage in ("samples", "train")]
    assert {r.cell for r in per_cell} == set(planner.cells[TABLE2])


def test_sharing_is_counted_and_reported(tmp_path):
    planner = _paper(tmp_path)
    totals = plan.totals(planner)
    # chapter 02's on-policy pairs are chapter 03's, 04's (T=0.7) and 05's (r=1): asked for more often than computed
    assert 0 < totals["ratio"]["generations"] < 1 and 0 < totals["ratio"]["pair_epochs"] < 1
    on = [r for r in planner.requests.values() if r.stage == "train" and r.label == "on"]
    assert len(on) == 4 and max(len(r.chapters) for r in on) == 4
    text = plan.report(planner)
    assert "03_simplemix_and_baselines: 4 cell(s)" in text and "ratio" in text


def test_cli_dry_run_computes_nothing(tmp_path):
    out = subprocess.run([sys.executable, "-m", "simplemix.cli", "run", "--profile", "paper", "--dry-run",
                          "--runs-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "llama-3.1-instruct__helpsteer2" in out.stdout and "with sharing" in out.stdout
    assert not (tmp_path / "paper" / "stages").exists()


def test_stored_requests_are_found_by_their_real_keys(tiny_run):
    w = tiny_world(tiny_run, ["mixing.total_pairs=12", "seeds=[0]"])
    before = plan.plan(w, runner.notebooks(["02"]))
    samples = [r for r in before.requests.values() if r.stage == "samples"]
    assert [r.stored for r in samples] == [False]
    onpolicy.on_policy_pairs(w, w.cell(), progress=False)
    after = plan.plan(w, runner.notebooks(["02"]))
    assert [r.stored for r in after.requests.values() if r.stage == "samples"] == [True]
    assert [r.stored for r in after.requests.values() if r.stage == "off-policy"] == [False]


def test_a_datasets_size_is_counted_in_prompts_without_a_download(tmp_path):
    from simplemix.config import DataConfig

    w = world.resolve(load_profile("paper"), tmp_path)
    assert w.expected_prompts(DataConfig(format="helpsteer2", path="nvidia/HelpSteer2", split="train"),
                              plan.KNOWN_PROMPTS) == 10_162
    # max_rows counts rows: HelpSteer2 has two a prompt, UltraFeedback one
    assert w.expected_prompts(DataConfig(format="helpsteer2", path="nvidia/HelpSteer2", split="train", max_rows=100),
                              plan.KNOWN_PROMPTS) == 50
    assert w.expected_prompts(DataConfig(format="ultrafeedback_binarized", path="HuggingFaceH4/ultrafeedback_binarized",
                                         split="train_prefs", max_rows=100), plan.KNOWN_PROMPTS) == 100
    assert w.expected_prompts(DataConfig(format="local", path="someone/unknown"), plan.KNOWN_PROMPTS) is None


def test_each_replicate_seed_is_a_separate_training_and_evaluation(tmp_path):
    one, three = _paper(tmp_path / "one", ["seeds=[0]"]), _paper(tmp_path / "three", ["seeds=[0, 1, 2]"])

    def distinct(planner, chapter, stage, label=""):
        return [r for r in planner.requests.values() if chapter in r.chapters and r.stage == stage
                and r.label.startswith(label)]

    ratios = plan.parameters(runner.notebooks(["05"])[0])["ratios"]
    for chapter in ("03_simplemix_and_baselines", "04_diversity", "05_mixture_ratio", "06_filtering"):
        assert one.seeds[chapter] == [0] and three.seeds[chapter] == [0, 1, 2]
        for stage in ("train", "evaluation", "samples"):
            # the SFT policies' evaluations do not depend on the seeds: shared by the replicates
            sft = [len(distinct(p, chapter, stage, "SFT")) if stage == "evaluation" else 0 for p in (one, three)]
            assert sft[0] == sft[1]
            n1, n3 = len(distinct(one, chapter, stage)) - sft[0], len(distinct(three, chapter, stage)) - sft[1]
            assert n1 > 0 and n3 == 3 * n1, (chapter, stage, n1, n3)
    assert len(distinct(one, "05_mixture_ratio", "train")) == len(ratios)
    # what a seed does not change is one request for every replicate: the SFT policy's evaluation, the off-policy
    # relabelling, the reference log-probs of a filtered off-policy subset (the same pairs in every replicate)
    assert len(distinct(three, "06_filtering", "off-policy")) == len(distinct(one, "06_filtering", "off-policy")) == 1
    assert len(distinct(three, "06_filtering", "evaluation", "SFT")) == 1
    subsets = [r for r in three.requests.values() if r.stage == "ref-logps" and r.what["pairs"]["seed"] is None]
    assert len(subsets) == len(distinct(one, "06_filtering", "ref-logps", "off ")) > 0
    # the chapters ask three times as often; a replicate's requests are labelled with its seed
    asked = {n: sum(c == "05_mixture_ratio" for c, _ in p.asked) for n, p in (("one", one), ("three", three))}
    assert asked["three"] == 3 * asked["one"]
    labels = {r.label for r in distinct(three, "05_mixture_ratio", "train")}
    assert {"simplemix r=0.5 s1", "simplemix r=0.5 s2"} <= labels
    # DPO-Mix-P samples each round per replicate (its sampling seed and prompt order are the replicate's)
    assert len(distinct(three, "03_simplemix_and_baselines", "dpo-mix-p-pairs")) == \
        3 * len(distinct(one, "03_simplemix_and_baselines", "dpo-mix-p-pairs"))
    assert "05_mixture_ratio: 1 cell(s): llama-3.1-instruct__ultrafeedback; 3 seed(s): 0, 1, 2;" in plan.report(three)


def test_a_chapters_seeds_parameter_chooses_its_replicates():
    prof = load_profile("paper", ["seeds=[0, 4]"])
    assert plan.chapter_seeds(prof, {}) == [0]  # no seeds parameter: the profile as written
    assert plan.chapter_seeds(prof, {"seeds": None}) == [0, 4]
    assert plan.chapter_seeds(prof, {"seeds": [2, 3]}) == [2, 3]


def test_stored_requests_are_looked_up_in_each_replicates_world(tiny_run):
    w = tiny_world(tiny_run, ["mixing.total_pairs=12", "seeds=[0, 1, 2]"])
    onpolicy.on_policy_pairs(w, w.cell(), progress=False)  # replicate 0's on-policy samples only
    planner = plan.plan(w, runner.notebooks(["05"]))
    samples = [r for r in planner.requests.values() if r.stage == "samples"]
    assert [r.stored for r in samples] == [True, False, False]
    assert [r.what["sampling"]["seed"] for r in samples] == [0, 1, 2]
