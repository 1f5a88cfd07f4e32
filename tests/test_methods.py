"""The methods end to end on the tiny world: one pair budget for all, each method's pair sources in its own cell,
DPO-Mix-P's rounds chained through the store, and LoRA results loading as merged models."""

import json
from pathlib import Path

import pytest
from conftest import tiny_world

from simplemix import methods
from simplemix.config import ConfigError
from simplemix.data import load_preferences
from simplemix.sampling import Policy, load_policy

SMALL = ["sampling.num_samples=4", "sampling.max_new_tokens=8", "mixing.total_pairs=12",
         "training.per_device_train_batch_size=4", "training.max_length=192", "training.logging_steps=1"]


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def test_every_method_trains_on_the_same_budget_from_its_own_sources(run_dir):
    world = tiny_world(run_dir, SMALL)
    cell = world.cell()
    assert methods.budget(world, cell, progress=False) == 12
    sources = {}
    for method in ("off", "on", "simplemix", "hypo"):
        pairs = methods.method_pairs(world, cell, method, progress=False)
        assert len(pairs) == 12
        sources[method] = sorted(pairs["source"])
    assert sources["off"] == sources["hypo"] == ["off"] * 12 and sources["on"] == ["on"] * 12
    assert sources["simplemix"] == ["off"] * 6 + ["on"] * 6
    quarter = methods.method_pairs(world, cell, "simplemix", on_fraction=0.25, progress=False)
    assert sorted(quarter["source"]) == ["off"] * 9 + ["on"] * 3
    (entry,) = methods.train_method(world, cell, "simplemix", progress=False)
    info = entry.manifest["info"]
    assert (info["on_policy"], info["off_policy"], info["name"]) == (6, 6, "simplemix-r0.5")
    assert entry.manifest["config"]["policy"] == world.sft_policy(cell).key
    assert methods.run_name("simplemix", 0.25, world.profile) == "simplemix-r0.25"
    with pytest.raises(ValueError, match="unknown method 'dpo'"):
        methods.check(world.profile, "dpo")
    with pytest.raises(ValueError, match="no fixed pair set"):
        methods.method_pairs(world, cell, "dpo_mix_p", progress=False)


def test_pairs_whose_prompt_fills_max_length_are_left_out_before_the_budget(run_dir):
    """TRL drops a pair whose prompt fills training.max_length; left to it, on- and off-policy DPO trained on
    different numbers of pairs. Left out before the budget, every method trains on all of it."""
    from simplemix.onpolicy import load_pairs, on_policy_pairs

    first = tiny_world(run_dir, SMALL)
    cell = first.cell()
    tokenizer = methods._tokenizer(first.sft_policy(cell))
    prompts = list(load_pairs(on_policy_pairs(first, cell, progress=False)["pairs"])["prompt"])
    prompts += list(first.off_policy_pairs(cell, progress=False)["prompt"])
    lengths = sorted(len(tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=True,
                                                       return_dict=False)) for p in prompts)
    limit = lengths[len(lengths) // 2] + 1  # about half the prompts fill it
    world = tiny_world(run_dir, SMALL[:2] + ["mixing.total_pairs=8", "training.per_device_train_batch_size=4",
                                             f"training.max_length={limit}", "training.logging_steps=1"])
    report = methods.too_long(world, cell, progress=False)
    assert all(0 < r["too_long"] < r["pairs"] for r in report.values()), report  # the limit cuts into both pools
    assert methods.budget(world, cell, progress=False) == 8
    rows = {}
    for method in ("off", "on"):
        (entry,) = methods.train_method(world, cell, method, progress=False)
        rows[method] = entry.manifest["info"]["rows"]  # what TRL's trainer kept, counted from its train_dataset
    assert rows == {"off": 8, "on": 8}
    big = tiny_world(run_dir, SMALL[:2] + [f"training.max_length={limit}", "mixing.total_pairs=100000"])
    with pytest.raises(ConfigError, match=rf"shorter than training.max_length={limit}"):
        methods.budget(big, big.cell(), progress=False)


def test_each_cell_draws_on_its_own_policy_and_dataset(run_dir):
    world = tiny_world(run_dir, SMALL[:2] + ["mixing.total_pairs=4"])
    cell = world.cell("mini-sft__mini-helpsteer2")
    on, off = methods.sources(world, cell, progress=False)
    prompts = set(world.training_prompts(cell).ids)
    assert set(on["prompt_id"]) <= prompts and set(off["prompt_id"]) <= prompts
    assert set(off["origin"]) == {"helpsteer2"} and set(on["origin"]) == {"on-policy"}
    uf = world.training_prompts(world.cell("mini-sft__mini-ultrafeedback"))
    assert not prompts & set(uf.ids)  # the HelpSteer2-like data has prompts of its own
    (samples,) = [p for p in (run_dir / "stages" / "samples").iterdir()]
    assert _manifest(samples)["config"]["policy"] == world.sft_policy(cell).key  # the weak policy sampled
    assert world.sft_policy(cell).key["miniature"] == "miniature:sft-weak"
    mixed = methods.method_pairs(world, cell, "simplemix", progress=False)
    assert sorted(mixed["source"]) == ["off", "off", "on", "on"] and set(mixed["prompt_id"]) <= prompts


def test_a_budget_larger_than_a_source_is_a_config_error(run_dir):
    world = tiny_world(run_dir, SMALL[:2] + ["mixing.total_pairs=100000"])
    with pytest.raises(ConfigError, match=r"mixing.total_pairs=100000.*\d+ on-policy and \d+ off-policy pairs exist"):
        methods.method_pairs(world, world.cell(), "off", progress=False)


def test_dpo_mix_p_chains_its_rounds_and_keeps_the_budget(run_dir):
    world = tiny_world(run_dir, SMALL + ["training.dpo_mix_p.rounds=2", "training.warmup_steps=0"])
    cell = world.cell()
    rounds = methods.dpo_mix_p(world, cell, progress=False)
    assert [e.manifest["info"]["rows"] for e in rounds] == [6, 6]
    assert all(e.manifest["info"]["on_policy"] == 6 for e in rounds)
    made = sorted((run_dir / "stages" / "dpo-mix-p-pairs").iterdir())
    assert len(made) == 2
    configs = {_manifest(p)["config"]["round"]: _manifest(p)["config"] for p in made}
    sft = world.sft_policy(cell)
    assert configs[0]["policy"] == configs[0]["sft"] == configs[1]["sft"] == sft.key
    assert sft.key["miniature"] == "miniature:sft-policy"
    assert configs[1]["policy"] == {"train": rounds[0].key}  # round 1 samples from round 0's policy
    assert configs[1]["fused_weights"] == [[1.5, -0.5], [0.5, 0.5]]
    # round 0 trains the SFT policy, round 1 the policy round 0 made
    assert rounds[0].manifest["config"]["policy"] == sft.key
    assert rounds[1].manifest["config"]["policy"] == {"train": rounds[0].key}
    prompts = set(world.training_prompts(cell).ids)
    seen = []
    for p in made:
        pairs, _ = load_preferences("local", p / "pairs.jsonl", source="on", on_invalid={"empty_response": "keep"})
        assert set(pairs["origin"]) == {f"dpo-mix-p-round{_manifest(p)['config']['round']}"}
        assert set(pairs["prompt_id"]) <= prompts
        seen.append(set(pairs["prompt_id"]))
    assert not seen[0] & seen[1]  # disjoint prompt slices per round
    again = methods.dpo_mix_p(tiny_world(run_dir, SMALL + ["training.dpo_mix_p.rounds=2", "training.warmup_steps=0"]),
                              cell, progress=False)
    assert [e.hit for e in again] == [True, True]
    assert [e.key for e in again] == [e.key for e in rounds]
    trained = methods.train_method(world, cell, "dpo_mix_p", progress=False)
    assert [e.key for e in trained] == [e.key for e in rounds] and all(e.hit for e in trained)


def test_lora_results_load_as_merged_models_for_sampling_and_the_next_round(run_dir):
    world = tiny_world(run_dir, SMALL + ["training.finetuning=lora", "training.dpo_mix_p.rounds=2",
                                         "training.learning_rate=0.01", "training.warmup_steps=0"])
    cell = world.cell()
    rounds = methods.dpo_mix_p(world, cell, progress=False)
    assert (rounds[-1].path / "adapter_config.json").exists()
    sft = world.sft_policy(cell)
    model, _ = load_policy(Policy.trained(rounds[0], sft))
    base, _ = load_policy(sft)
    assert type(model) is type(base)  # merged: a plain causal LM, no PEFT wrapper
    moved = [(a - b).abs().max().item() for a, b in zip(model.parameters(), base.parameters())]
    assert max(moved) > 0
