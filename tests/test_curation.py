"""simplemix.curation against hand counts, hand scores, explicit forwards and TRL's own reference log-probs."""

from collections import Counter

import pytest
import torch
from conftest import tiny_policy
from datasets import Dataset

from simplemix import curation, data
from simplemix.config import FilterConfig, MixingConfig
from simplemix.miniature.world import build_world
from simplemix.sampling import load_policy


def pairs(n, source, scores=None):
    """``n`` normalized pairs labelled ``source``, with ids like ``on3``."""
    rows = [{"pair_id": f"{source}{i}", "prompt_id": f"p{i}", "prompt": [{"role": "user", "content": f"q{i}"}],
             "chosen": f"good {i}", "rejected": f"bad {i}", "score_chosen": (scores or {}).get(i, (1.0, 0.0))[0],
             "score_rejected": (scores or {}).get(i, (1.0, 0.0))[1], "source": source, "origin": f"{source}-set",
             "metadata": f'{{"i":{i}}}'} for i in range(n)]
    return Dataset.from_list(rows, features=data.PREFERENCE_FEATURES)


ON, OFF = pairs(30, "on"), pairs(50, "off")


@pytest.mark.parametrize("r, total, n_on", [(0.0, 7, 0), (1.0, 7, 7), (0.5, 7, 4), (0.5, 5, 3), (0.3, 10, 3),
                                            (0.25, 9, 2), (0.5, 40, 20)])
def test_mix_counts_and_no_duplicates(r, total, n_on):
    mixed = curation.mix(ON, OFF, total, r, seed=1)
    assert Counter(mixed["source"]) == {k: v for k, v in {"on": n_on, "off": total - n_on}.items() if v}
    assert len(set(mixed["pair_id"])) == total


def test_mix_is_seeded_shuffled_and_keeps_every_column():
    first = curation.mix(ON, OFF, 20, 0.5, seed=3)
    assert first["pair_id"] == curation.mix(ON, OFF, 20, 0.5, seed=3)["pair_id"]
    assert first["pair_id"] != curation.mix(ON, OFF, 20, 0.5, seed=4)["pair_id"]
    assert first["source"] != sorted(first["source"]) and first.features == ON.features
    originals = {row["pair_id"]: row for ds in (ON, OFF) for row in ds}
    assert all(row == originals[row["pair_id"]] for row in first)


def test_too_few_pairs_names_the_source_and_the_counts():
    with pytest.raises(ValueError) as err:
        curation.mix(pairs(100, "on"), pairs(500, "off"), 240, 0.5, seed=0)
    assert str(err.value) == ("on-policy pairs: 120 requested at on_fraction=0.5 of total=240, but only 100 exist "
                              "(set mixing.with_replacement=true to sample with replacement)")
    with pytest.raises(ValueError, match=r"^off-policy pairs: 51 requested at on_fraction=0 of total=51, but only 50"):
        curation.mix(ON, OFF, 51, 0.0, seed=0)
    with pytest.raises(ValueError, match="on_fraction must be in"):
        curation.mix(ON, OFF, 10, 1.5, seed=0)
    with pytest.raises(ValueError, match="total must be at least 1"):
        curation.mix(ON, OFF, 0, 0.5, seed=0)


def test_with_replacement_draws_more_than_exist():
    mixed = curation.mix(pairs(3, "on"), OFF, 20, 0.5, seed=0, with_replacement=True)
    assert Counter(mixed["source"]) == {"on": 10, "off": 10}
    assert set(mixed.filter(lambda r: r["source"] == "on")["pair_id"]) <= {"on0", "on1", "on2"}


@pytest.mark.parametrize("n_on, n_off, r, total", [(30, 50, 0.4, 75), (30, 50, 0.0, 50), (30, 50, 1.0, 30),
                                                   (3, 100, 0.5, 6), (30, 50, 0.5, 60)])
def test_total_none_is_the_largest_the_sources_allow(n_on, n_off, r, total):
    # 30/0.4 = 75 < 50/0.6 = 83.3; 3/0.5 = 6 < 100/0.5; 30/0.5 = 60 < 50/0.5 = 100
    assert curation.largest_total(n_on, n_off, r) == total
    assert len(curation.mix(pairs(n_on, "on"), pairs(n_off, "off"), None, r, seed=0)) == total


SCORES = {0: (1.0, 0.0), 1: (2.0, 1.0), 2: (0.5, 0.5), 3: (3.0, -1.0), 4: (2.0, 1.0)}


def test_quality_and_contrastiveness_on_hand_scores():
    ds = pairs(5, "off", SCORES)
    assert curation.quality(ds) == [1.0, 3.0, 1.0, 2.0, 3.0]
    assert curation.contrastiveness(ds) == [1.0, 1.0, 0.0, 4.0, 1.0]
    kept, scores = curation.off_policy_filter(ds, "quality", 0.4)
    assert kept["pair_id"] == ["off1", "off4"] and scores == [1.0, 3.0, 1.0, 2.0, 3.0]
    unscored = ds.map(lambda r, i: {"score_rejected": None if i == 1 else r["score_rejected"]}, with_indices=True)
    with pytest.raises(ValueError, match=r"^row 1 \(pair_id off1\): score_rejected is None"):
        curation.quality(unscored)


def test_filter_top_keeps_hand_computed_rows_with_ties_to_the_earlier():
    ds = pairs(10, "off")
    # by score: 7 (row 4), 6 (row 9), 5 (row 0), then a four-way tie at 3 (rows 2, 3, 5, 8): row 2 wins
    kept = curation.filter_top(ds, [5, 1, 3, 3, 7, 3, 0, 2, 3, 6], 0.4)
    assert kept["pair_id"] == ["off0", "off2", "off4", "off9"]
    assert len(curation.filter_top(ds, list(range(10)), 0.25)) == 3  # 2.5 rounds half up
    assert curation.filter_top(pairs(3, "off"), [0, 2, 1], 0.1)["pair_id"] == ["off1"]  # at least one
    assert curation.off_policy_filter(ds, "none", 0.1) == (ds, None)
    with pytest.raises(ValueError, match="needs the SFT policy"):
        curation.off_policy_filter(ds, "dissimilarity", 0.5)


def test_mix_from_config_filters_the_off_policy_pairs_first():
    cfg = MixingConfig(total_pairs=4, on_policy_fraction=0.5, off_policy_filter=FilterConfig("quality", 0.4))
    mixed = curation.mix_from_config(ON, pairs(5, "off", SCORES), cfg)
    assert sorted(mixed.filter(lambda r: r["source"] == "off")["pair_id"]) == ["off1", "off4"]


@pytest.fixture(scope="module")
def world(tiny_run_module):
    model, tokenizer = load_policy(tiny_policy(tiny_run_module))
    return model, tokenizer, build_world(tiny_run_module, progress=False).off_policy_pairs().select(range(6))


def hand_ids(tokenizer, prompt, response):
    """Prompt ids and prompt+response ids, straight from the chat template."""
    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=False)
    full = tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": response}], tokenize=True,
                                         return_dict=False)
    assert full[:len(prompt_ids)] == prompt_ids and full[-1] == tokenizer.eos_token_id  # end of turn is counted
    return prompt_ids, full


def test_on_policiness_matches_a_plain_loop(world):
    model, tokenizer, ds = world
    chosen, rejected = curation.response_logps(ds, model, tokenizer, batch_size=4)  # padded batches
    for row, batched in zip(ds, zip(chosen, rejected)):
        for key, value in zip(("chosen", "rejected"), batched):
            prompt_ids, full = hand_ids(tokenizer, row["prompt"], row[key])
            with torch.no_grad():
                logits = model(torch.tensor([full])).logits[0]
            expected = sum(torch.log_softmax(logits[t - 1], -1)[full[t]].item() for t in range(len(prompt_ids),
                                                                                              len(full)))
            assert value == pytest.approx(expected, abs=1e-4)
    assert curation.on_policiness(ds, model, tokenizer, batch_size=1) == pytest.approx(
        [c + r for c, r in zip(chosen, rejected)], abs=1e-4)


def test_on_policiness_matches_trl_reference_logps(world, tiny_run_module, tmp_path):
    from trl import DPOConfig, DPOTrainer

    _, tokenizer, ds = world  # a model of its own: the trainer may change the one the other tests share
    model, _ = load_policy(tiny_policy(tiny_run_module))
    args = DPOConfig(output_dir=str(tmp_path), bf16=False, use_cpu=True, report_to=[], per_device_train_batch_size=2,
                     max_length=512, precompute_ref_log_probs=True)
    trainer = DPOTrainer(model=model, args=args, train_dataset=data.to_trl(ds), processing_class=tokenizer)
    trl_ds = trainer.train_dataset
    for i, row in enumerate(ds):
        p, c, r = curation.tokenize_pair(tokenizer, row["prompt"], row["chosen"], row["rejected"])
        assert (p, c, r) == (trl_ds[i]["prompt_ids"], trl_ds[i]["chosen_ids"], trl_ds[i]["rejected_ids"])
    expected = [c + r for c, r in zip(trl_ds["ref_chosen_logps"], trl_ds["ref_rejected_logps"])]
    assert curation.on_policiness(ds, model, tokenizer, batch_size=5) == pytest.approx(expected, abs=1e-4)


def test_dissimilarity_matches_an_explicit_forward(world):
    model, tokenizer, ds = world
    scores = curation.dissimilarity(ds, model, tokenizer, batch_size=4)
    row = ds[0]
    with torch.no_grad():
        pooled = [model(torch.tensor([hand_ids(tokenizer, row["prompt"], row[key])[1]]),
                        output_hidden_states=True).hidden_states[-1][0].mean(dim=0) for key in ("chosen", "rejected")]
    cosine = (pooled[0] @ pooled[1]) / (pooled[0].norm() * pooled[1].norm())
    assert scores[0] == pytest.approx(-cosine.item(), abs=1e-5)

    same = ds.map(lambda r, i: {"rejected": r["chosen"] if i == 2 else r["rejected"]}, with_indices=True)
    scores = curation.dissimilarity(same, model, tokenizer, batch_size=4)
    assert scores[2] == pytest.approx(-1.0, abs=1e-5) and min(scores) == scores[2]
    kept, _ = curation.off_policy_filter(same, "dissimilarity", 0.5, model=model, tokenizer=tokenizer)
    assert len(kept) == 3 and same[2]["pair_id"] not in kept["pair_id"]
