"""The miniature world: the oracle on hand-worked cases, determinism of the build, and the policy's reload path."""

import hashlib
import random
from pathlib import Path

import pytest

from simplemix.miniature import generators, tasks
from simplemix.miniature.oracle import judge, length_bonus
from simplemix.miniature.tasks import FIT, Task
from simplemix.miniature.world import WorldConfig, build_world
from conftest import TINY, tiny_policy

MATH = Task("math", "What is 7 plus 5?", {"answer": "12", "a": 7, "b": 5, "op": "+"})
CODE = Task("coding", "Reverse the word 'cat'.", {"answer": "tac", "op": "reverse", "arg": "cat"})
POEM = Task("creative", "Write a short line about the sea at dawn.", {"topic": "sea", "when": "at dawn", "setting": "dawn"})
RECO = Task("recommendation", "Recommend a book for a rainy day.", {"thing": "book", "occasion": "rainy day"})


@pytest.mark.parametrize("task,response,reward,correct", [
    # math: 1 for the right answer, +0.2 format, +0.1 right working shown, -0.1 wrong working
    (MATH, "7 + 5 = 12. The answer is 12.", 1.3, True),
    (MATH, "The answer is 12.", 1.2, True),
    (MATH, "12", 1.0, True),
    (MATH, "The answer is 13.", 0.2, False),
    (MATH, "7 + 5 = 11. The answer is 12.", 1.1, True),
    (MATH, "Let me think. The answer is 12. " + "I hope this helps. " * 3, 1.2 - 0.004 * (88 - 60), True),  # 88 chars once stripped
    (MATH, "   ", -1.0, False),
    # coding: exact output, +0.2 for the "Output:" format
    (CODE, "Output: tac", 1.2, True),
    (CODE, "tac", 1.0, True),
    (CODE, "Output: cat", 0.2, False),
    # creative: 0.4 topic + 0.3 setting + 0.3 per word of one mood (max 3) - 0.3 per word of another
    # + 0.003 per character
    (POEM, "The quiet sea at dawn is soft and still.", 0.4 + 0.3 + 0.9 + 0.003 * 40, True),
    (POEM, "The roaring sea at dawn is fierce and bright.", 0.4 + 0.3 + 0.9 + 0.003 * 45, True),  # another mode
    (POEM, "The quiet sea is soft and still.", 0.4 + 0.9 + 0.003 * 32, False),
    (POEM, "The roaring sea at dawn is soft and still.", 0.4 + 0.3 + 0.6 - 0.3 + 0.003 * 42, False),
    (POEM, "The quiet lamp at dawn is soft and still.", 0.3 + 0.9 + 0.003 * 41, False),
    # recommendation: item quality x occasion fit (0.6 if unsuited) + 0.1 reason + 0.3 reason naming the occasion
    (RECO, "I recommend Paper Kites because it is perfect for a rainy day.", 1.0 + 0.4 + 0.003 * 62, True),
    (RECO, "I recommend Stone River because it fits a rainy day well.", 0.95 + 0.4 + 0.003 * 57, True),
    (RECO, "I recommend The Quiet Harbor because it is perfect for a rainy day.", 0.6 + 0.4 + 0.003 * 67, False),
    (RECO, "I recommend Paper Kites.", 1.0 + 0.003 * 24, False),
    (RECO, "I recommend Orbit Run because it is perfect for a rainy day.", -0.2 + 0.4 + 0.003 * 60, False),
    (RECO, "Paper Kites or Stone River because it is perfect for a rainy day.", 1.0 - 0.2 + 0.4 + 0.003 * 65, True),
])
def test_oracle_hand_worked_cases(task, response, reward, correct):
    assert task.category in tasks.CATEGORIES
    j = judge(task, response)
    assert j.reward == pytest.approx(reward, abs=1e-6)
    assert j.correct is correct


def test_hidden_fit_is_what_the_cases_assume():
    assert "rainy day" in FIT["book"]["Paper Kites"] and "rainy day" in FIT["book"]["Stone River"]
    assert "rainy day" not in FIT["book"]["The Quiet Harbor"]


def test_length_bonus_saturates_then_penalises_rambling():
    assert [length_bonus("x" * n) for n in (0, 32, 90, 140, 150)] == pytest.approx([0, 0.096, 0.27, 0.27, 0.17])
    assert judge(MATH, "The answer is 12." + " So" * 30).reward < judge(MATH, "The answer is 12.").reward


def test_splits_are_seeded_and_verifiable_prompts_never_repeat():
    a, b = tasks.make_splits({"x": 40, "y": 20}, 3), tasks.make_splits({"x": 40, "y": 20}, 3)
    assert [t.prompt for t in a["x"]] == [t.prompt for t in b["x"]]
    verifiable = [t.prompt for ts in a.values() for t in ts if t.category in tasks.VERIFIABLE]
    assert len(verifiable) == len(set(verifiable)) == 2 * (40 + 20)
    assert {t.category for t in a["y"]} == set(tasks.CATEGORIES)
    for t in a["x"] + a["y"]:
        if t.category == "math":
            assert str(eval(f"{t.meta['a']} {t.meta['op']} {t.meta['b']}")) == t.meta["answer"]


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
    for name in ("tasks_dir", "policy_dir", "pool_dir"):
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
    assert rendered == "<|bos|><|user|>What is 7 plus 5?<|end|><|assistant|>"
    (samples,) = generate(model, tokenizer, [MATH.messages()], max_new_tokens=8)
    assert len(samples) == 1 and samples[0].num_tokens >= 1
    assert samples[0].finish_reason in ("stop", "length")
