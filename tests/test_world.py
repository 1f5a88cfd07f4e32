"""Worlds and the grid: what each profile resolves to, the miniature world's pieces against the oracle and the raw
files, a hub world over local models and data (no network), and stage keys that are per cell."""

import dataclasses
import json
import shutil
from collections import Counter
from pathlib import Path

import pytest
import yaml
from conftest import tiny_world

from simplemix import onpolicy
from simplemix.config import HELPSTEER2_WEIGHTS, ConfigError, DataConfig, ModelConfig, load_profile
from simplemix.data import helpsteer2_messages, pair_helpsteer2, read_jsonl, write_jsonl
from simplemix.miniature.oracle import OracleScorer, judge
from simplemix.sampling import Policy, load_policy
from simplemix.world import HubWorld, PromptSet, resolve

ROOT = Path(__file__).resolve().parent.parent


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


# ----------------------------------------------------------------------------------------- profiles and grids
def test_smoke_resolves_to_the_miniature_world_with_its_two_by_two_grid(tmp_path):
    from simplemix.miniature.world import MiniatureWorld

    recipe = yaml.safe_load((ROOT / "recipes" / "smoke.yaml").read_text())
    expected = [f"{p['label']}__{d['label']}" for p in recipe["policies"] for d in recipe["datasets"]]
    world = resolve(load_profile("smoke"), tmp_path)
    assert isinstance(world, MiniatureWorld) and world.kind == "miniature"
    cells = world.cells()
    assert [c.id for c in cells] == expected and len(cells) == 4
    assert world.cell().id == world.cells("primary")[0].id == "mini-instruct__mini-ultrafeedback"
    assert world.cell("mini-sft__mini-helpsteer2").paper == ("Llama-3.1-Tulu-3-8B-SFT", "HelpSteer2")
    assert world.cell().paper == ("Llama-3.1-8B-Instruct", "UltraFeedback")
    assert not list(tmp_path.iterdir()), "resolving a world computed something"
    with pytest.raises(ConfigError, match="no cell 'nope__x'"):
        world.cell("nope__x")
    with pytest.raises(ValueError, match="expected 'grid' or 'primary'"):
        world.cells("all")


def test_paper_is_a_hub_world_of_four_separate_cells_and_single_gpu_of_one(tmp_path):
    prof = load_profile("paper")
    world = resolve(prof, tmp_path)
    assert isinstance(world, HubWorld) and world.kind == "hub"
    cells = world.cells()
    assert len(cells) == 4
    assert {(c.policy.name_or_path, c.dataset.path) for c in cells} == {
        (p.name_or_path, d.path) for p in prof.policies for d in prof.datasets}
    for cell in cells:  # never merged: each cell trains on exactly one of the profile's datasets
        assert sum(cell.dataset is d for d in prof.datasets) == 1
        assert sum(cell.policy is p for p in prof.policies) == 1
    primary = world.cell()
    assert (primary.policy.name_or_path, primary.dataset.path) == ("meta-llama/Llama-3.1-8B-Instruct",
                                                                   "HuggingFaceH4/ultrafeedback_binarized")
    assert primary.paper == ("Llama-3.1-8B-Instruct", "UltraFeedback")
    single = resolve(load_profile("single-gpu"), tmp_path)
    assert isinstance(single, HubWorld) and len(single.cells()) == 1
    assert single.cells()[0] == single.cell()
    assert (single.cell().policy.name_or_path, single.cell().dataset.path) == (primary.policy.name_or_path,
                                                                               primary.dataset.path)


def test_grid_cells_restrict_the_grid_and_unknown_labels_are_config_errors(tmp_path):
    prof = load_profile("smoke", {"grid.cells": [{"policy": "mini-sft", "dataset": "mini-helpsteer2"},
                                                 {"policy": "mini-instruct", "dataset": "mini-helpsteer2"}]})
    world = resolve(prof, tmp_path)
    assert [c.id for c in world.cells()] == ["mini-sft__mini-helpsteer2", "mini-instruct__mini-helpsteer2"]
    assert world.cell().id == "mini-instruct__mini-ultrafeedback"  # the primary cell stays
    assert world.cell("mini-instruct__mini-ultrafeedback") == world.cell()
    with pytest.raises(ConfigError, match=r"grid\.cells\[1\]\.policy: 'nope' is not a policy label"):
        load_profile("smoke", {"grid.cells": [{"policy": "mini-sft", "dataset": "mini-helpsteer2"},
                                              {"policy": "nope", "dataset": "mini-helpsteer2"}]})
    with pytest.raises(ConfigError, match=r"grid\.primary\.dataset: 'mini-uf' is not a dataset label.*"
                                          r"mini-ultrafeedback"):
        load_profile("smoke", ["grid.primary.dataset=mini-uf"])
    # the same from a YAML file, whose path the message names
    recipe = yaml.safe_load((ROOT / "recipes" / "smoke.yaml").read_text())
    recipe["grid"] = {"cells": [{"policy": "mini-instruct", "dataset": "helpsteer"}]}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ConfigError, match=rf"{path}: grid\.cells\[0\]\.dataset: 'helpsteer'"):
        load_profile(path)


# ----------------------------------------------------------------------------------- the miniature world (TINY)
@pytest.fixture(scope="module")
def mini(tiny_run_module):
    return tiny_world(tiny_run_module)


def test_training_prompts_are_each_datasets_own_unique_prompts(mini):
    by_dataset = {}
    tasks = {t.prompt: t for split in ("train", "train_hs2") for t in mini.built.tasks(split)}
    for cell in mini.cells():
        prompts = mini.training_prompts(cell)
        assert isinstance(prompts, PromptSet) and len(set(prompts.ids)) == len(prompts) > 0
        path, _ = mini.dataset(cell.dataset)
        raw = list(dict.fromkeys(r["prompt"] for r in read_jsonl(path)))  # the file's prompts, first-seen order
        paired = {m[-1]["content"] for m in mini.raw_pairs(cell.dataset)["prompt"]}
        # the prompts of the dataset's pairs (a HelpSteer2 prompt whose two responses tie gives no pair)
        assert [m[-1]["content"] for m in prompts.messages] == [x for x in raw if x in paired]
        assert prompts.categories == [tasks[m[-1]["content"]].category for m in prompts.messages]
        by_dataset.setdefault(cell.dataset.label, prompts)
        assert by_dataset[cell.dataset.label].ids == prompts.ids  # the two policies of a dataset share its prompts
    uf, hs2 = by_dataset["mini-ultrafeedback"], by_dataset["mini-helpsteer2"]
    train = {t.prompt for t in mini.built.tasks("train")}
    train_hs2 = {t.prompt for t in mini.built.tasks("train_hs2")}
    assert {m[-1]["content"] for m in uf.messages} <= train
    assert {m[-1]["content"] for m in hs2.messages} <= train_hs2
    assert not train & train_hs2 and not set(uf.ids) & set(hs2.ids)


def test_helpsteer2_like_off_policy_pairs_are_binarized_by_the_weighted_attributes(mini):
    cell = mini.cell("mini-instruct__mini-helpsteer2")
    path, identity = mini.dataset(cell.dataset)
    assert identity["miniature"] == "miniature:helpsteer2" and identity["format"] == "helpsteer2"
    rows = read_jsonl(path)
    assert set(HELPSTEER2_WEIGHTS) <= set(rows[0]) and "chosen" not in rows[0]  # one row per response
    raw = mini.raw_pairs(cell.dataset)
    direct, _ = pair_helpsteer2(rows, weights=HELPSTEER2_WEIGHTS)
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in raw] == [
        (r["prompt"], r["chosen"], r["rejected"]) for r in direct]
    weighted = {}
    for r in rows:
        weighted.setdefault(r["prompt"], {})[r["response"]] = sum(w * r[a] for a, w in HELPSTEER2_WEIGHTS.items())
    off = mini.off_policy_pairs(cell, progress=False)
    assert len(off) > 0 and set(off["origin"]) == {"helpsteer2"} and set(off["source"]) == {"off"}
    for pair in off:
        meta = json.loads(pair["metadata"])
        swapped = meta["rescore"]["swapped"]
        before = (pair["rejected"], pair["chosen"]) if swapped else (pair["chosen"], pair["rejected"])
        sums = weighted[pair["prompt"][-1]["content"]]
        assert pair["prompt"] == helpsteer2_messages(pair["prompt"][-1]["content"])
        assert sums[before[0]] > sums[before[1]]  # chosen by the weighted sum before the oracle re-labelled it
        assert meta["rescore"]["original_score_chosen"] == pytest.approx(sums[before[0]])
        assert meta["rescore"]["original_score_rejected"] == pytest.approx(sums[before[1]])


def test_the_reward_is_the_oracle_and_rescored_pairs_carry_its_scores(mini):
    scorer = mini.reward()
    assert isinstance(scorer, OracleScorer)
    tasks = {t.prompt: t for split in ("sft", "train", "eval", "train_hs2") for t in mini.built.tasks(split)}
    texts = ["The answer is 12.", "Output: tac", "I recommend Orbit Run because it fits.", ""]
    for task in list(tasks.values())[::7]:
        assert scorer.score([task.messages()] * len(texts), texts) == [judge(task, t).reward for t in texts]
    for dataset in ("mini-ultrafeedback", "mini-helpsteer2"):
        off = mini.off_policy_pairs(mini.cell(f"mini-instruct__{dataset}"), progress=False)
        assert len(off) > 0
        for pair in off:
            task = tasks[pair["prompt"][-1]["content"]]
            assert pair["score_chosen"] >= pair["score_rejected"]
            assert pair["score_chosen"] == judge(task, pair["chosen"]).reward
            assert pair["score_rejected"] == judge(task, pair["rejected"]).reward


def test_the_two_sft_policies_differ_in_weights_and_keys(mini):
    strong = mini.policy(ModelConfig(name_or_path="miniature:sft-policy"))
    weak = mini.policy(ModelConfig(name_or_path="miniature:sft-weak"))
    assert strong.key != weak.key and strong.model.name_or_path != weak.model.name_or_path
    assert strong.key["miniature"] == "miniature:sft-policy" and weak.key["miniature"] == "miniature:sft-weak"
    assert str(mini.run_dir) not in json.dumps(strong.key)  # keyed by the world's entry, not where it lies
    (a, _), (b, _) = load_policy(strong), load_policy(weak)
    assert type(a) is type(b)
    assert any((p - q).abs().max().item() > 0 for p, q in zip(a.parameters(), b.parameters()))
    # each cell's SFT policy is its policy's, whatever its dataset
    cells = {c.id: c for c in mini.cells()}
    instruct, sft = (mini.sft_policy(cells[f"{p}__mini-ultrafeedback"]) for p in ("mini-instruct", "mini-sft"))
    assert instruct != sft and instruct.key != sft.key
    assert (instruct.label, sft.label) == ("mini-instruct", "mini-sft")
    assert (instruct.model.name_or_path, sft.model.name_or_path) == (strong.model.name_or_path,
                                                                     weak.model.name_or_path)
    as_profiled = [mini.policy(ModelConfig(name_or_path=n, torch_dtype="float32")).key
                   for n in ("miniature:sft-policy", "miniature:sft-weak")]
    assert [instruct.key, sft.key] == as_profiled  # the profile's float32 is part of the key
    assert mini.sft_policy(cells["mini-sft__mini-helpsteer2"]) == sft


def test_the_baseline_has_unique_instructions_with_the_tasks_categories(mini):
    import pandas as pd

    baseline = mini.baseline()
    instructions = [b["instruction"] for b in baseline]
    assert len(set(instructions)) == len(instructions) > 0
    eval_tasks = {t.prompt: t for t in mini.built.tasks("eval")}
    assert set(instructions) == set(eval_tasks)
    assert mini.categories(instructions) == [eval_tasks[i].category for i in instructions]
    assert [b["dataset"] for b in baseline] == [eval_tasks[i].category for i in instructions]
    assert set(mini.categories(instructions)) == set(mini.shown_categories())
    table = pd.DataFrame({"instruction": instructions})
    assert mini.groups(table).to_dict() == {i: eval_tasks[i].category for i in instructions}


def test_unknown_miniature_names_are_config_errors_naming_them(mini, tiny_run_module):
    with pytest.raises(ConfigError, match="unknown miniature model 'miniature:sft-huge'"):
        mini.policy(ModelConfig(name_or_path="miniature:sft-huge"))
    with pytest.raises(ConfigError, match="unknown miniature dataset 'miniature:alpaca'"):
        mini.dataset(DataConfig(path="miniature:alpaca", format="ultrafeedback_binarized"))
    world = tiny_world(tiny_run_module, {"policies": [{"name_or_path": "miniature:nope", "label": "x"}],
                                         "grid": {"primary": None}})
    with pytest.raises(ConfigError, match="miniature:nope"):
        world.sft_policy(world.cell())
    with pytest.raises(ConfigError, match="reward.model.*miniature:judge"):
        tiny_world(tiny_run_module, ["reward.model.name_or_path=miniature:judge"]).reward()


# ------------------------------------------------------------------------- a hub world over local artifacts
UF_ROWS = [("Write a Python function that reverses a list.", "def rev(xs): return xs[::-1]", "Use a loop."),
           ("Write a short poem about the sea at dawn.", "Soft light on the quiet sea.", "The sea."),
           ("Recommend a good book for a long flight.", "I suggest The Quiet Harbor, it is calm.", "A book."),
           ("Translate good morning into French.", "Bonjour.", "good morning")]  # "Hola." ties: both <unk>.
HS2_ROWS = [("Give me a travel itinerary for three days in Rome.",
             ("Day one: the Colosseum, day two: the Vatican, day three: Trastevere.", (4, 4, 4, 2, 2)),
             ("Go to Rome.", (1, 2, 3, 0, 0))),
            ("Explain how vaccines train the immune system.",
             ("They show it a harmless piece of a germ.", (2, 2, 3, 1, 1)),
             ("Vaccines present antigens so that memory cells form and respond faster later.", (4, 4, 4, 3, 2))),
            ("What is the capital of France?\n<extra_id_1>Assistant\nParis.\n<extra_id_1>User\nWrite a poem about "
             "Paris.", ("Paris in the rain, a river of light.", (3, 3, 4, 2, 1)), ("Paris.", (0, 1, 2, 0, 0)))]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A hub-world profile over a tiny local policy, a tiny local RM and two small local datasets."""
    import torch
    from test_reward import make_rm
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("hub")
    rm_dir = make_rm(root / "rm")
    policy_dir = root / "policy"
    tokenizer = AutoTokenizer.from_pretrained(rm_dir)
    torch.manual_seed(1)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                 num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                 pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                                 eos_token_id=tokenizer.eos_token_id)).save_pretrained(policy_dir)
    tokenizer.save_pretrained(policy_dir)
    uf = root / "uf.jsonl"
    write_jsonl(uf, [{"prompt": p, "prompt_id": f"p{i}",
                      "chosen": [{"role": "user", "content": p}, {"role": "assistant", "content": c}],
                      "rejected": [{"role": "user", "content": p}, {"role": "assistant", "content": r}],
                      "messages": [{"role": "user", "content": p}, {"role": "assistant", "content": c}],
                      "score_chosen": 8.0, "score_rejected": 3.0} for i, (p, c, r) in enumerate(UF_ROWS)])
    hs2 = root / "hs2.jsonl"
    attributes = list(HELPSTEER2_WEIGHTS)
    write_jsonl(hs2, [{"prompt": p, "response": text, **dict(zip(attributes, values))}
                      for p, *responses in HS2_ROWS for text, values in responses])
    run_dir = root / "run"
    recipe = {
        "name": "local-hub", "world": "hub",
        "policies": [{"name_or_path": str(policy_dir), "label": "tiny-llama", "paper_name": "Llama-3.1-8B-Instruct",
                      "torch_dtype": "float32"}],
        "datasets": [{"label": "uf", "paper_name": "UltraFeedback", "format": "ultrafeedback_binarized",
                      "path": str(uf)},
                     {"label": "hs2", "paper_name": "HelpSteer2", "format": "helpsteer2", "path": str(hs2)}],
        "reward": {"model": {"name_or_path": str(rm_dir), "torch_dtype": "float32"}, "rescore_off_policy": True},
        "evaluation": {"judge": "reward_model"},
    }
    path = root / "local-hub.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return {"profile": path, "run": run_dir, "policy": policy_dir, "rm": rm_dir, "uf": uf, "hs2": hs2}


@pytest.fixture
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TQDM_DISABLE", "1")


def test_a_hub_world_serves_local_models_and_datasets_cell_by_cell(hub, offline):
    from simplemix.categories import ReadLabels

    world = resolve(load_profile(hub["profile"]), hub["run"])
    assert isinstance(world, HubWorld)
    cells = world.cells()
    assert [c.id for c in cells] == ["tiny-llama__uf", "tiny-llama__hs2"] and world.cell() == cells[0]
    uf, hs2 = (world.training_prompts(c) for c in cells)
    assert uf.messages == [[{"role": "user", "content": p}] for p, _, _ in UF_ROWS]
    assert hs2.messages == [helpsteer2_messages(p) for p, *_ in HS2_ROWS]
    assert hs2.messages[2][-1] == {"role": "user", "content": "Write a poem about Paris."}  # a multi-turn prompt
    assert not set(uf.ids) & set(hs2.ids)
    for prompts in (uf, hs2):
        assert prompts.categories == ReadLabels().classify([m[-1]["content"] for m in prompts.messages])
    assert len(set(uf.categories + hs2.categories)) >= 4
    # the policy: the local directory as it is, keyed by its model config and its files (a rebuild is another model)
    policy = world.sft_policy(cells[0])
    plain = ModelConfig(name_or_path=str(hub["policy"]), torch_dtype="float32")
    assert policy == world.policy(cells[0].policy) and policy.model == Policy.of(plain, "tiny-llama").model
    assert policy.key == {"model": dataclasses.asdict(plain), "files": policy.key["files"]}
    assert str(hub["run"]) not in json.dumps(policy.key) and "label" not in policy.key["model"]
    model, _ = load_policy(policy)
    assert type(model).__name__ == "LlamaForCausalLM"
    path, identity = world.dataset(cells[1].dataset)
    assert path == str(hub["hs2"]) and "label" not in identity
    assert identity["path"] == "hs2.jsonl" and len(identity["sha256"]) == 64  # known by content, not location


def test_a_hub_worlds_off_policy_pairs_are_rescored_by_its_reward_model(hub, offline):
    from simplemix.reward import HFRewardModel

    prof = load_profile(hub["profile"])
    world = resolve(prof, hub["run"])
    scorer = world.reward()
    assert isinstance(scorer, HFRewardModel) and scorer.name == str(hub["rm"])
    direct = HFRewardModel(prof.reward)
    for cell, origin, rows in zip(world.cells(), ("ultrafeedback_binarized", "helpsteer2"), (UF_ROWS, HS2_ROWS)):
        off = world.off_policy_pairs(cell, progress=False)
        assert len(off) == len(rows) and set(off["origin"]) == {origin}
        assert set(off["prompt_id"]) == set(world.training_prompts(cell).ids)
        prompts = list(off["prompt"])
        chosen, rejected = direct.score(prompts, list(off["chosen"])), direct.score(prompts, list(off["rejected"]))
        assert list(off["score_chosen"]) == pytest.approx(chosen, abs=1e-5)
        assert list(off["score_rejected"]) == pytest.approx(rejected, abs=1e-5)
        assert all(c > r for c, r in zip(off["score_chosen"], off["score_rejected"]))
    entries = sorted((hub["run"] / "stages" / "off-policy").iterdir())
    assert len(entries) == 2
    assert all(_manifest(e)["config"]["reward"]["model"]["name_or_path"] == str(hub["rm"]) for e in entries)
    # a dataset's label names its cells, not its data: relabelled, it is the same stage
    relabelled = resolve(load_profile(hub["profile"], {"grid": {"primary": None}, "datasets": [
        dataclasses.asdict(prof.datasets[0]) | {"label": "ultrafeedback-local"}]}), hub["run"])
    relabelled.off_policy_pairs(relabelled.cell(), progress=False)
    assert sorted((hub["run"] / "stages" / "off-policy").iterdir()) == entries


def test_a_hub_worlds_judge_baseline_and_categories_are_alpaca_evals(hub, offline):
    from simplemix.categories import categories_of
    from simplemix.evaluation import ScoreJudge

    world = resolve(load_profile(hub["profile"]), hub["run"])
    judge_ = world.judge()
    assert isinstance(judge_, ScoreJudge) and judge_.scorer is world.reward()
    assert not judge_.comparable_with_leaderboard and str(hub["rm"]) in judge_.name
    assert world.judge_key()["judge"] == "reward_model" and world.judge_key()["reward"] == world.reward_key()
    with pytest.raises(ConfigError, match="'oracle' exists only in the miniature world"):
        world.oracle_judge()
    baseline = world.baseline()
    assert len(baseline) == 805 and len({b["instruction"] for b in baseline}) == 805
    instructions = [b["instruction"] for b in baseline]
    assert world.categories(instructions) == categories_of(instructions)
    assert set(world.shown_categories().values()) and set(world.shown_categories()) <= set(categories_of(
        instructions))
    assert world.eval_key()["prompts"] == "alpaca_eval_805"


# ----------------------------------------------------------------------------------------- stage keys per cell
def test_stage_keys_are_per_cell_and_a_rerun_is_all_hits(tiny_run_module, tmp_path, monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    run_dir = Path(shutil.copytree(tiny_run_module, tmp_path / "run"))
    overrides = ["sampling.num_samples=2", "sampling.max_new_tokens=4"]
    world = tiny_world(run_dir, overrides)
    cells = world.cells()
    first = {c.id: onpolicy.on_policy_pairs(world, c, progress=False) for c in cells}
    for stage in ("samples", "scores", "pairs"):
        keys = [first[c.id][stage].key for c in cells]
        assert len(set(keys)) == 4, stage
        assert not any(first[c.id][stage].hit for c in cells)
    for cell in cells:
        config = first[cell.id]["samples"].manifest["config"]
        assert config["policy"] == world.sft_policy(cell).key
        assert first[cell.id]["samples"].manifest["info"]["prompts"] == len(world.training_prompts(cell))
    off = {c.id: world.off_policy_pairs(c, progress=False) for c in cells}
    made = sorted((run_dir / "stages" / "off-policy").iterdir())
    # the off-policy stage is keyed on the dataset (and the reward), not the policy: one entry per dataset,
    # shared by the two policies' cells
    by_dataset = {_manifest(p)["config"]["dataset"]["miniature"]: p.name for p in made}
    assert sorted(by_dataset) == ["miniature:helpsteer2", "miniature:ultrafeedback"]
    for cell in cells:
        same_data = next(c for c in cells if c.dataset == cell.dataset)
        assert off[cell.id]["prompt_id"] == off[same_data.id]["prompt_id"]
    assert set(off["mini-instruct__mini-ultrafeedback"]["prompt_id"]).isdisjoint(
        off["mini-instruct__mini-helpsteer2"]["prompt_id"])

    def stages():
        return Counter(p.parent.parent.name for p in (run_dir / "stages").glob("*/*/manifest.json"))

    before = stages()
    assert {s: before[s] for s in ("samples", "scores", "pairs", "off-policy")} == {
        "samples": 4, "scores": 4, "pairs": 4, "off-policy": 2}
    again_world = tiny_world(run_dir, overrides)
    again = {c.id: onpolicy.on_policy_pairs(again_world, c, progress=False) for c in cells}
    for c in cells:
        assert all(e.hit for e in again[c.id].values())
        assert [e.key for e in again[c.id].values()] == [e.key for e in first[c.id].values()]
        again_world.off_policy_pairs(c, progress=False)
    assert stages() == before


def test_a_local_model_rebuilt_in_place_is_keyed_as_another_model(tmp_path):
    """Stages built on a local model directory (tiny-hub's, or a user's own checkpoint) must not be reused after the
    directory is rebuilt at the same path: its files are part of the policy's and the reward model's keys."""
    import shutil

    from simplemix import tinyhub
    from simplemix.config import load_profile
    from simplemix.world import resolve

    hub = tinyhub.build()
    policy, reward = shutil.copytree(hub / "policy", tmp_path / "policy"), shutil.copytree(hub / "reward", tmp_path / "rm")
    prof = load_profile("tiny-hub", {"policies.0.name_or_path": str(policy), "reward.model.name_or_path": str(reward)})
    world = resolve(prof, tmp_path / "run")
    before = (world.sft_policy(world.cell()).key, world.reward_key())
    assert resolve(prof, tmp_path / "run").sft_policy(world.cell()).key == before[0]  # stable while unchanged
    for directory in (policy, reward):
        (directory / "generation_config.json").write_text("{}") if directory == policy else \
            (directory / "chat_template.jinja").write_text("{{ messages }}")
    world = resolve(prof, tmp_path / "run")
    assert world.sft_policy(world.cell()).key != before[0] and world.reward_key() != before[1]
