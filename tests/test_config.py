"""Profiles: the shipped recipes load, keys match the libraries, and bad configs fail with exact messages."""

import dataclasses
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from simplemix import config as C

ROOT = Path(__file__).resolve().parent.parent


def write_recipe(tmp_path, data, name="bad.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture
def smoke_data():
    return yaml.safe_load((ROOT / "recipes" / "smoke.yaml").read_text())


def test_every_shipped_profile_loads():
    from simplemix import tinyhub

    assert set(C.profile_names()) == {"smoke", "single-gpu", "paper", "tiny-hub"}
    tinyhub.build()  # the local artifacts tiny-hub's recipe points at (kept when built by the same code)
    for name in C.profile_names():
        prof = C.load_profile(name)
        assert prof.name == name
        assert prof.policies and prof.datasets


def test_paper_profile_carries_the_papers_settings():
    p = C.load_profile("paper")
    assert (p.training.beta, p.training.learning_rate, p.training.num_train_epochs) == (0.1, 5e-7, 1.0)
    assert (p.sampling.temperature, p.sampling.top_p) == (0.7, 0.9)
    assert p.reward.model.name_or_path == "Skywork/Skywork-Reward-Gemma-2-27B-v0.2"
    assert p.reward.model.attn_implementation != "sdpa"
    assert [m.name_or_path for m in p.policies] == [
        "meta-llama/Llama-3.1-8B-Instruct", "allenai/Llama-3.1-Tulu-3-8B-SFT"]
    assert {d.format for d in p.datasets} == {"ultrafeedback_binarized", "helpsteer2"}
    assert p.mixing.on_policy_fraction == 0.5
    assert p.evaluation.max_new_tokens == 2048
    assert p.datasets[1].helpsteer2_weights == {
        "helpfulness": 0.65, "correctness": 0.8, "coherence": 0.45, "complexity": 0.55, "verbosity": -0.4}


def test_training_keys_are_trl_dpoconfig_fields():
    trl = pytest.importorskip("trl")
    ours = {f.name for f in dataclasses.fields(C.TrainingConfig)}
    # dpo_args is not a DPOConfig field but a mapping of further DPOConfig fields (tests/test_training.py)
    from simplemix.training import NON_TRL_FIELDS

    own = set(NON_TRL_FIELDS)
    trl_fields = {f.name for f in dataclasses.fields(trl.DPOConfig)}
    assert ours - own <= trl_fields, ours - own - trl_fields
    # and each recipe's values are accepted by DPOConfig itself
    prof = C.load_profile("smoke")
    kwargs = {k: v for k, v in dataclasses.asdict(prof.training).items() if k in trl_fields}
    cfg = trl.DPOConfig(output_dir="unused", use_cpu=True, report_to=[], **kwargs)
    assert cfg.beta == prof.training.beta and cfg.max_length == prof.training.max_length


def test_lora_and_quantization_keys_are_the_libraries_names():
    peft = pytest.importorskip("peft")
    transformers = pytest.importorskip("transformers")
    lora = dataclasses.asdict(C.LoraConfig())
    assert set(lora) <= {f.name for f in dataclasses.fields(peft.LoraConfig)}
    peft.LoraConfig(**lora)
    import inspect
    bnb_params = inspect.signature(transformers.BitsAndBytesConfig.__init__).parameters
    assert set(dataclasses.asdict(C.QuantizationConfig())) <= set(bnb_params)


def test_unknown_key_names_file_and_key(tmp_path, smoke_data):
    smoke_data["training"]["learnin_rate"] = 1e-3
    path = write_recipe(tmp_path, smoke_data)
    with pytest.raises(C.ConfigError) as e:
        C.load_profile(path)
    assert str(e.value) == (f"{path}: training.learnin_rate: unknown key for TrainingConfig; "
                            "did you mean 'learning_rate'?")


def test_wrong_type_names_file_and_key(tmp_path, smoke_data):
    smoke_data["sampling"]["num_samples"] = "four"
    path = write_recipe(tmp_path, smoke_data)
    with pytest.raises(C.ConfigError) as e:
        C.load_profile(path)
    assert str(e.value) == f"{path}: sampling.num_samples: expected int, got str 'four'"


def test_bool_is_not_an_int(tmp_path, smoke_data):
    smoke_data["training"]["per_device_train_batch_size"] = True
    with pytest.raises(C.ConfigError, match=r"training.per_device_train_batch_size: expected int, got bool True"):
        C.load_profile(write_recipe(tmp_path, smoke_data))


@pytest.mark.parametrize("key,value,message", [
    ("mixing.on_policy_fraction", 1.5, "mixing.on_policy_fraction: 1.5 is outside [0.0, 1.0]"),
    ("mixing.off_policy_filter.keep_fraction", -0.1,
     "mixing.off_policy_filter.keep_fraction: -0.1 is outside [0.0, 1.0]"),
    ("sampling.top_p", 0.0, "sampling.top_p: 0.0 is outside (0.0, 1.0]"),
    ("sampling.num_samples", 1, "sampling.num_samples: 1 is outside >= 2"),
    ("training.learning_rate", 0, "training.learning_rate: 0.0 is outside > 0.0"),
])
def test_out_of_range_values(key, value, message):
    with pytest.raises(C.ConfigError) as e:
        C.load_profile("smoke", overrides=[f"{key}={value}"])
    assert str(e.value).endswith(message)
    assert "smoke.yaml (with overrides)" in str(e.value)


def test_missing_model_path(tmp_path, smoke_data):
    smoke_data["policies"][0].pop("name_or_path")
    path = write_recipe(tmp_path, smoke_data)
    with pytest.raises(C.ConfigError) as e:
        C.load_profile(path)
    assert str(e.value) == f"{path}: policies[0].name_or_path: missing model path (required)"


def test_local_model_path_that_does_not_exist(tmp_path, smoke_data):
    smoke_data["reward"]["model"]["name_or_path"] = "./no/such/rm"
    path = write_recipe(tmp_path, smoke_data)
    with pytest.raises(C.ConfigError) as e:
        C.load_profile(path)
    assert str(e.value) == (f"{path}: reward.model.name_or_path: path '{tmp_path / 'no' / 'such' / 'rm'}' does not "
                            "exist (a recipe's relative paths resolve against the recipe's folder, a --set value's "
                            "against the current directory; the tiny-hub profile's artifacts are built by `python -m "
                            "simplemix.tinyhub`)")


def test_literal_and_list_errors(tmp_path, smoke_data):
    smoke_data["training"]["finetuning"] = "qlor"
    with pytest.raises(C.ConfigError, match=r"training.finetuning: 'qlor' is not one of \['full', 'lora', 'qlora'\]"):
        C.load_profile(write_recipe(tmp_path, smoke_data))
    smoke_data["training"]["finetuning"] = "full"
    smoke_data["datasets"][0]["on_invalid"] = {"empty_response": "ignore"}
    with pytest.raises(C.ConfigError, match=r"datasets\[0\].on_invalid.empty_response: 'ignore' is not one of"):
        C.load_profile(write_recipe(tmp_path, smoke_data))
    smoke_data["datasets"] = []
    with pytest.raises(C.ConfigError, match=r": datasets: needs at least 1 item"):
        C.load_profile(write_recipe(tmp_path, smoke_data))


def test_invalid_yaml_and_unknown_profile(tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("training: [unclosed\n")
    with pytest.raises(C.ConfigError, match=rf"^{bad}: not valid YAML"):
        C.load_profile(bad)
    with pytest.raises(C.ConfigError, match=r"unknown profile 'smok'; known profiles: paper, single-gpu, smoke"):
        C.load_profile("smok")


def test_overrides_merge_and_parse_yaml_values():
    prof = C.load_profile("smoke", overrides=["training.beta=0.25", "mixing.on_policy_fraction=1",
                                              "evaluation.benchmarks=[piqa, ifeval]"])
    assert prof.training.beta == 0.25 and isinstance(prof.mixing.on_policy_fraction, float)
    assert prof.evaluation.benchmarks == ["piqa", "ifeval"]
    assert prof.training.learning_rate == C.load_profile("smoke").training.learning_rate
    with pytest.raises(C.ConfigError, match="expected KEY=VALUE"):
        C.parse_overrides(["training.beta"])


def test_dump_round_trips(tmp_path):
    prof = C.load_profile("paper")
    path = tmp_path / "again.yaml"
    path.write_text(C.dump(prof))
    assert C.load_profile(path) == prof


def test_cli_config_show_prints_resolved_profile():
    out = subprocess.run([sys.executable, "-m", "simplemix.cli", "config", "show", "--profile", "smoke",
                          "--set", "training.beta=0.3"], capture_output=True, text=True, check=True).stdout
    data = yaml.safe_load(out)
    assert data["name"] == "smoke" and data["training"]["beta"] == 0.3
    assert data["sampling"]["diversity_prompt"] == "Give another answer, different from the ones before."
    for name in ("single-gpu", "paper"):  # the real-model profiles ask in the paper's words
        assert C.load_profile(name).sampling.diversity_prompt == C.PAPER_DIVERSITY_PROMPT


def test_cli_config_error_exits_2_with_message():
    r = subprocess.run([sys.executable, "-m", "simplemix.cli", "config", "show", "--profile", "smoke",
                        "--set", "sampling.num_samples=1"], capture_output=True, text=True)
    assert r.returncode == 2
    assert "sampling.num_samples: 1 is outside >= 2" in r.stderr


def test_exponent_without_a_dot_is_a_float_not_a_string():
    load_profile, ConfigError = C.load_profile, C.ConfigError
    # YAML 1.1 reads 1e-4 as a string; a user typing --set training.learning_rate=1e-4 means the number
    prof = load_profile("smoke", ["training.learning_rate=1e-4", "training.beta=2E-1"])
    assert prof.training.learning_rate == 1e-4 and prof.training.beta == 0.2
    with pytest.raises(ConfigError, match="training.learning_rate: expected float, got str 'fast'"):
        load_profile("smoke", ["training.learning_rate=fast"])


def test_replicate_seeds_default_to_one_and_are_checked():
    assert C.Profile().seeds == [0]
    for name in ("single-gpu", "paper"):
        assert C.load_profile(name).seeds == [0]
    assert C.load_profile("smoke", overrides=["seeds=[0, 1, 2]"]).seeds == [0, 1, 2]
    for value, message in [("[]", "seeds: needs at least 1 item(s)"),
                           ("[0, 1, 1]", "seeds: items must be unique, [1] repeated in [0, 1, 1]"),
                           ("[0, -2]", "seeds[1]: -2 is outside >= 0"),
                           ("[0, 1.5]", "seeds[1]: expected int, got float 1.5"),
                           ("[true]", "seeds[0]: expected int, got bool True"),
                           ("3", "seeds: expected a list, got int 3")]:
        with pytest.raises(C.ConfigError) as e:
            C.load_profile("smoke", overrides=[f"seeds={value}"])
        assert str(e.value).endswith(message), str(e.value)


def test_an_override_reaches_one_item_of_a_list():
    prof = C.load_profile("smoke", ["datasets.0.max_rows=5", "policies.1.label=weaker"])
    assert prof.datasets[0].max_rows == 5 and prof.datasets[1].max_rows is None
    assert prof.policies[1].label == "weaker" and prof.policies[0].label == "mini-instruct"
    with pytest.raises(C.ConfigError, match=r"override 'datasets.7': datasets is a list of 2 item\(s\); give an index "
                                            r"from 0 to 1"):
        C.load_profile("smoke", ["datasets.7.max_rows=5"])


def test_one_rule_for_run_directories_and_recipe_relative_paths(tmp_path, monkeypatch):
    """A recipe's relative paths resolve against its folder (whatever the current directory, notebooks run in
    notebooks/); every command and chapter puts a profile's run in <runs root>/<its name>."""
    recipe_dir = tmp_path / "project" / "recipes"
    (recipe_dir / "data").mkdir(parents=True)
    (recipe_dir / "data" / "pairs.jsonl").write_text("{}\n")
    recipe = yaml.safe_load((C.recipes_dir() / "smoke.yaml").read_text())
    recipe["name"] = "mine"
    recipe["datasets"][1] = {"label": "local", "format": "local", "path": "data/pairs.jsonl"}
    (recipe_dir / "my-recipe.yaml").write_text(yaml.safe_dump(recipe))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    prof = C.load_profile(recipe_dir / "my-recipe.yaml")
    assert prof.datasets[1].path == str(recipe_dir / "data" / "pairs.jsonl")
    assert prof.datasets[0].path == "miniature:ultrafeedback"  # a world name is no path
    (elsewhere / "other.jsonl").write_text("{}\n")  # a --set path is the command line's: relative to the cwd
    assert C.load_profile(recipe_dir / "my-recipe.yaml", ["datasets.1.path=other.jsonl"]).datasets[1].path == str(
        elsewhere / "other.jsonl")
    with pytest.raises(C.ConfigError, match=r"datasets\[1\].path: path '.*/elsewhere/missing.jsonl' does not exist "
                                            r"\(a recipe's relative paths resolve against the recipe's folder"):
        C.load_profile(recipe_dir / "my-recipe.yaml", ["datasets.1.path=missing.jsonl"])
    recipe["datasets"][1]["path"] = "data/absent.parquet"  # ends like a data file: a path, checked
    (recipe_dir / "bad.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(C.ConfigError, match="recipes/data/absent.parquet' does not exist"):
        C.load_profile(recipe_dir / "bad.yaml")

    assert C.default_run_dir(recipe_dir / "my-recipe.yaml") == C.runs_root() / "mine"  # its name, not its file
    assert C.default_run_dir("smoke", tmp_path / "r") == tmp_path / "r" / "smoke"
    monkeypatch.setenv("SIMPLEMIX_RUNS", str(tmp_path / "all-runs"))
    assert C.default_run_dir(recipe_dir / "my-recipe.yaml") == tmp_path / "all-runs" / "mine"
    monkeypatch.delenv("SIMPLEMIX_RUNS")
    assert C.runs_root() == Path(C.__file__).resolve().parent.parent / "runs"  # a checkout keeps its runs
