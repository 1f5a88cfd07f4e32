"""Preflight on local HF-format artifacts: the wrong model class in a role, a reward model without a chat template,
a model that cannot be read offline, a pair budget larger than the data, a typo'd benchmark: all reported at once,
in seconds, before any compute; and a reward model with a random score head refused at load."""

import json

import pytest
from test_reward import make_rm, reward_cfg

from simplemix import config, preflight, world
from simplemix.config import ConfigError


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny causal-LM policy (with a chat template) and two tiny reward models, one without a template."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("models")
    rm = make_rm(root / "rm")
    bare_rm = make_rm(root / "rm-no-template", template=None)
    tokenizer = AutoTokenizer.from_pretrained(rm)
    policy = root / "policy"
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2)).save_pretrained(policy)
    tokenizer.save_pretrained(policy)
    data = root / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "chosen": "a", "rejected": "b"}) + "\n" for i in range(5)))
    return {"policy": policy, "rm": rm, "bare_rm": bare_rm, "data": data}


def hub_world(tmp_path, models, *overrides):
    base = [f"policies.0.name_or_path={models['policy']}", f"reward.model.name_or_path={models['rm']}",
            f"datasets.0.path={models['data']}", "datasets.0.format=local", "datasets.0.split=null",
            "datasets.0.max_rows=null", "mixing.total_pairs=4", "sampling.backend=transformers"]
    prof = config.load_profile("single-gpu", base + list(overrides))
    return world.resolve(prof, tmp_path / "run")


def test_a_sound_profile_passes(tmp_path, models):
    assert preflight.problems(hub_world(tmp_path, models)) == []


def test_every_problem_is_reported_at_once_before_any_compute(tmp_path, models, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    w = hub_world(tmp_path, models, f"policies.0.name_or_path={models['rm']}",  # the roles swapped
                  f"reward.model.name_or_path={models['policy']}", "mixing.total_pairs=50",
                  "evaluation.benchmarks=[arc_chalenge]")
    with pytest.raises(ConfigError) as info:
        preflight.check(w)
    message = str(info.value)
    assert "found 4 problem(s), before any compute" in message
    assert f"policies[0].name_or_path '{models['rm']}' is not a causal language model " \
           "(LlamaForSequenceClassification)" in message
    assert f"reward.model.name_or_path '{models['policy']}' is not a sequence-classification reward model " \
           "(LlamaForCausalLM)" in message
    assert "mixing.total_pairs=50 is more than the 5 prompts of dataset 'ultrafeedback'" in message
    assert "evaluation.benchmarks: unknown task(s): 'arc_chalenge' (did you mean 'arc_challenge'" in message


def test_a_reward_model_without_a_chat_template_and_an_unreadable_id(tmp_path, models, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    w = hub_world(tmp_path, models, f"reward.model.name_or_path={models['bare_rm']}")
    assert preflight.problems(w) == [f"reward.model.name_or_path '{models['bare_rm']}' has no chat template; "
                                     "conversations cannot be rendered for it (set tokenizer.chat_template and save "
                                     "the tokenizer)"]
    w = hub_world(tmp_path, models, "reward.model.name_or_path=nobody/no-such-reward-model")
    (problem,) = preflight.problems(w)
    assert problem.startswith("reward.model.name_or_path 'nobody/no-such-reward-model' cannot be read (HF_HUB_OFFLINE "
                              "is set: only models already in the hub cache can be read)")


def test_the_cli_stops_on_preflight_with_one_message(tmp_path, models, capsys):
    from simplemix import cli

    sets = [f"policies.0.name_or_path={models['rm']}", f"reward.model.name_or_path={models['rm']}",
            f"datasets.0.path={models['data']}", "datasets.0.format=local", "datasets.0.split=null",
            "datasets.0.max_rows=null", "mixing.total_pairs=4", "sampling.backend=transformers"]
    argv = ["onpolicy", "--profile", "single-gpu", "--run", str(tmp_path / "run")]
    for s in sets:
        argv += ["--set", s]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("simplemix: config error: preflight of profile 'single-gpu' found 1 problem(s)")
    assert not (tmp_path / "run" / "stages").exists()  # nothing was computed


def test_a_causal_lm_given_as_reward_model_is_refused_at_load(models):
    from simplemix.reward import HFRewardModel

    with pytest.raises(ConfigError, match=r"has no trained score head \(missing score.weight\): it is not a reward "
                                          r"model \(LlamaForCausalLM\)"):
        HFRewardModel(reward_cfg(models["policy"]))
