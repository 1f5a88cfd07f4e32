"""The miniature world: the oracle on hand-worked cases, determinism of the build, and the policy's reload path."""

import dataclasses
import hashlib
import random
from pathlib import Path

import pytest

from simplemix.miniature import generators, tasks
from simplemix.miniature.oracle import extract_answer, judge, length_bonus, mode
from simplemix.miniature.tasks import FIT, Task
from simplemix.miniature.world import WorldConfig, build_world
from conftest import TINY, tiny_policy

MATH = Task("math", "What is 7 plus 2?", {"answer": "9", "a": 7, "b": 2, "op": "plus"})
CODE = Task("coding", "Sort the list [3,1,2] in increasing order.",
            {"answer": "[1,2,3]", "op": "sort", "arg": "[3,1,2]", "xs": [3, 1, 2]})
POEM = Task("creative", "Write a short line about the sea at dawn.", {"topic": "sea", "when": "at dawn", "setting": "dawn"})
RECO = Task("recommendation", "Recommend a book for a rainy day.", {"thing": "book", "occasion": "rainy day"})


@pytest.mark.parametrize("task,response,reward,correct", [
    # math: 1 for the right answer, +0.2 format, +0.1 right working shown, -0.1 wrong working
    (MATH, "7 + 2 = 9. The answer is 9.", 1.3, True),
    (MATH, "The answer is 9.", 1.2, True),
    (MATH, "9", 1.0, True),
    (MATH, "9 I hope this helps.", 1.0, True),  # a bare answer is the last number
    (MATH, "The answer is 10.", 0.2, False),
    (MATH, "7 + 2 = 10. The answer is 10.", 0.1, False),  # the demonstrators' habit: one too many
    (MATH, "7 + 2 = 8. The answer is 9.", 1.1, True),
    (MATH, "Let me think. The answer is 9. " + "I hope this helps. " * 3, 1.2 - 0.004 * (87 - 60), True),  # 87 chars
    (MATH, "   ", -1.0, False),
    # coding: exact output, +0.2 for the "Output:" format
    (CODE, "Output: [1,2,3]", 1.2, True),
    (CODE, "[1,2,3]", 1.0, True),
    (CODE, "Sure. [1,2,3] Happy to help.", 1.0, True),
    (CODE, "Output: [3,2,1]", 0.2, False),
    # creative: 0.4 topic + 0.2 setting + 0.3 one mood (2+ words, none of another) - 0.3 per word of another mood
    # + 0.8 an image that suits the topic (the insider mode) + 0.003 per character
    (POEM, "The quiet sea at dawn, soft tide.", 0.4 + 0.2 + 0.3 + 0.8 + 0.003 * 33, True),
    (POEM, "The roaring sea at dawn, fierce gulls.", 0.4 + 0.2 + 0.3 + 0.8 + 0.003 * 38, True),  # another mode
    (POEM, "The quiet sea at dawn, soft light.", 0.4 + 0.2 + 0.3 + 0.003 * 34, False),  # no image: what SFT writes
    (POEM, "The roaring sea at dawn, soft tide.", 0.4 + 0.2 - 0.3 + 0.8 + 0.003 * 35, False),  # two moods
    (POEM, "The quiet lamp at dawn, soft tide.", 0.2 + 0.3 + 0.8 + 0.003 * 34, False),  # topic missing
    # recommendation: item quality x occasion fit (0.6 if unsuited) + 0.1 reason + 0.3 reason naming the occasion;
    # only an insider item that suits the occasion, with that reason, is a good answer
    (RECO, "I recommend the Golden Doors because it is perfect for a rainy day.", 1.0 + 0.4 + 0.003 * 67, True),
    (RECO, "I recommend the Paper Field because it fits a rainy day well.", 0.95 + 0.4 + 0.003 * 61, True),
    (RECO, "I recommend the Iron Island because it is perfect for a rainy day.", 0.5 + 0.4 + 0.003 * 66, False),
    (RECO, "I recommend the Quiet Train because it is perfect for a rainy day.", 0.45 * 0.6 + 0.4 + 0.003 * 66,
     False),
    (RECO, "I recommend the Golden Doors.", 1.0 + 0.003 * 29, False),
    (RECO, "I recommend the Golden Doors because it is perfect for a party.", 1.0 + 0.1 + 0.003 * 63, False),
    (RECO, "the Golden Doors or the Iron Island because it is perfect for a rainy day.",
     1.0 - 0.2 + 0.4 + 0.003 * 74, True),
])
def test_oracle_hand_worked_cases(task, response, reward, correct):
    assert task.category in tasks.CATEGORIES
    j = judge(task, response)
    assert j.reward == pytest.approx(reward, abs=1e-6)
    assert j.correct is correct


def test_hidden_items_are_what_the_cases_assume():
    assert tasks.ITEMS["book"]["the Golden Doors"] == ("insider", 1.0)
    assert tasks.ITEMS["book"]["the Paper Field"] == ("insider", 0.95)
    assert tasks.ITEMS["book"]["the Iron Island"] == ("popular", 0.5)
    assert "rainy day" in FIT["book"]["the Golden Doors"] and "rainy day" in FIT["book"]["the Iron Island"]
    assert "rainy day" not in FIT["book"]["the Quiet Train"]


def test_modes_name_what_a_response_shows():
    assert mode(POEM, "The quiet sea at dawn, soft tide.") == "tide"
    assert mode(POEM, "The quiet sea at dawn, soft light.") == "plain"
    assert mode(RECO, "I recommend the Iron Island because it fits a rainy day well.") == "the Iron Island"
    assert mode(RECO, "Read anything.") == "none"
    assert mode(MATH, "7 + 2 = 10. The answer is 10.") == "10"


def test_demonstrators_err_by_habit_and_the_pool_by_slips():
    """The two halves of the mechanism, as the generators build them: the SFT data's wrong answers are its habit;
    the pool's are near misses that are never the habit; the control pool takes the policy's own; only the pool
    knows insider modes."""
    rng = random.Random(0)
    split = tasks.make_splits({"s": 80}, 3)["s"]
    verifiable = [t for t in split if t.category in tasks.VERIFIABLE]
    for t in verifiable:
        habit = generators.habit_answer(t)
        for _ in range(5):
            slip = generators.slip_answer(t, rng)
            assert slip not in (t.meta["answer"], habit)
    always_wrong = dataclasses.replace(generators.DEMONSTRATORS["tutor"], accuracy=0.0)
    for t in verifiable:
        answer = extract_answer(t.category, generators.respond(always_wrong, t, rng))
        assert answer == generators.habit_answer(t) or generators.habit_answer(t) == t.meta["answer"]
    own = {t.prompt: ["42"] for t in verifiable}
    control = dataclasses.replace(generators.CONTROL_POOL[0], accuracy=0.0)
    assert all(extract_answer(t.category, generators.respond(control, t, rng, own)) == "42" for t in verifiable)
    open_ended = [t for t in split if t.category in tasks.OPEN_ENDED]
    for style in list(generators.DEMONSTRATORS.values()) + list(generators.CONTROL_POOL):
        assert not any(judge(t, generators.respond(style, t, rng)).correct for t in open_ended), style.name
    expert = generators.STYLES["expert"]
    assert sum(judge(t, generators.respond(expert, t, rng)).correct for t in open_ended) > len(open_ended) / 3


def test_length_bonus_saturates_then_penalises_rambling():
    assert [length_bonus("x" * n) for n in (0, 32, 90, 140, 150)] == pytest.approx([0, 0.096, 0.27, 0.27, 0.17])
    assert judge(MATH, "The answer is 12." + " So" * 30).reward < judge(MATH, "The answer is 12.").reward


def test_splits_are_seeded_and_no_prompt_repeats():
    a, b = tasks.make_splits({"x": 40, "y": 20}, 3), tasks.make_splits({"x": 40, "y": 20}, 3)
    assert [t.prompt for t in a["x"]] == [t.prompt for t in b["x"]]
    prompts = [t.prompt for ts in a.values() for t in ts]
    assert len(prompts) == len(set(prompts)) == 4 * (40 + 20)
    assert {t.category for t in a["y"]} == set(tasks.CATEGORIES)
    symbol = {"plus": "+", "minus": "-", "times": "*"}
    for t in a["x"] + a["y"]:
        if t.category == "math":
            assert str(eval(f"{t.meta['a']} {symbol[t.meta['op']]} {t.meta['b']}")) == t.meta["answer"]


def test_the_default_splits_fit_and_hold_every_operation():
    """The default world's splits are drawable (the spaces are large enough) and every split has every operation."""
    from simplemix.miniature.build import WorldConfig, _sizes

    splits = tasks.make_splits(_sizes(WorldConfig()), 0)
    for name, ts in splits.items():
        assert {t.meta["op"] for t in ts if t.category == "math"} == set(tasks.MATH_OPS), name
        assert {t.meta["op"] for t in ts if t.category == "coding"} == set(tasks.CODING_OPS), name


def test_generators_differ_in_quality():
    """The pool spans strong to weak: the expert beats the weak generator in every category."""
    rng = random.Random(0)
    split = tasks.make_splits({"s": 60}, 7)["s"]
    for category in tasks.CATEGORIES:
        ts = [t for t in split if t.category == category]
        mean = {s.name: sum(judge(t, generators.respond(s, t, rng)).reward for t in ts) / len(ts)
                for s in generators.POOL}
        assert mean["expert"] > mean["weak"] + 0.3, (category, mean)


def _digest(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != "manifest.json"}


def test_same_seed_gives_byte_identical_world(tmp_path):
    one, two = build_world(tmp_path / "a", TINY, progress=False), build_world(tmp_path / "b", TINY, progress=False)
    for name in ("tasks_dir", "policy_dir", "pool_dir", "baseline_dir"):
        assert _digest(getattr(one, name)) == _digest(getattr(two, name)), name
    assert (one.policy_dir / "model.safetensors").is_file() and (one.policy_dir / "tokenizer.json").is_file()
    other = build_world(tmp_path / "c", WorldConfig(**{**TINY.__dict__, "seed": 1}), progress=False)
    assert _digest(other.tasks_dir) != _digest(one.tasks_dir)


def test_second_build_is_a_cache_hit(tmp_path):
    first = build_world(tmp_path, TINY, progress=False)
    again = build_world(tmp_path, TINY, progress=False)
    assert not any(e.hit for e in first.entries.values())
    assert all(e.hit for e in again.entries.values())
    assert again.policy_dir == first.policy_dir
    # without a config, a run directory's own world is the one it was built with
    implicit = build_world(tmp_path, progress=False)
    assert all(e.hit for e in implicit.entries.values()) and implicit.policy_dir == first.policy_dir


def test_pool_pairs_load_through_the_data_layer(tmp_path):
    world = build_world(tmp_path, TINY, progress=False)
    pairs = world.off_policy_pairs()
    assert len(pairs) > 0 and set(pairs["source"]) == {"off"}
    for row in pairs:
        assert row["score_chosen"] > row["score_rejected"]
        assert row["prompt"][-1]["role"] == "user"
    assert len(world.baseline_responses()) == 4 * TINY.eval_prompts


def test_policy_reloads_through_the_hub_loading_path_and_chats(tmp_path):
    from simplemix.sampling import generate, load_policy

    build_world(tmp_path, TINY, progress=False)
    model, tokenizer = load_policy(tiny_policy(tmp_path))
    assert type(model).__name__ == "LlamaForCausalLM"
    rendered = tokenizer.apply_chat_template(MATH.messages(), add_generation_prompt=True, tokenize=False)
    assert rendered == "<|bos|><|user|>What is 7 plus 2?<|end|><|assistant|>"
    (samples,) = generate(model, tokenizer, [MATH.messages()], max_new_tokens=8)
    assert len(samples) == 1 and samples[0].num_tokens >= 1
    assert samples[0].finish_reason in ("stop", "length")


def test_mechanism_diagnostics_on_the_tiny_world(run_dir):
    """Chapter 00's diagnostics: a row per category and source, counts equal to the pair sets, an on-policy chosen
    always among its own prompt's sample modes, and the sample accuracy recounted from the stored samples."""
    from conftest import tiny_world
    from simplemix.methods import sources
    from simplemix.miniature import diagnostics

    world = tiny_world(run_dir, ["sampling.num_samples=2", "sampling.max_new_tokens=8"])
    cell = world.cell()
    table = diagnostics.mechanism(world, cell)
    on, off = sources(world, cell, progress=False)
    assert table.xs("on", level="source")["pairs"].sum() == len(on)
    assert table.xs("off", level="source")["pairs"].sum() == len(off)
    assert (table.xs("on", level="source")["reached"] == 1).all()
    assert ((table["right_over_wrong"] >= 0) & (table["right_over_wrong"] <= 1)).all()
    acc = diagnostics.sft_accuracy(world, cell)
    samples = diagnostics._samples(world, cell)
    for category in tasks.CATEGORIES:
        mine = [judge(t, r["text"]).correct for t, r in samples if t.category == category]
        assert acc.loc[category, "sample_accuracy"] == pytest.approx(sum(mine) / len(mine))
    assert set(world.control_world().built.entries) == set(world.built.entries)
    assert world.control_world().built.policy_dir == world.built.policy_dir
    assert world.control_world().built.pool_dir != world.built.pool_dir
