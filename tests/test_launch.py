"""Generated multi-GPU launch configs parse with accelerate's and DeepSpeed's own parsers and match the profile."""

import json

import pytest

from simplemix.config import load_profile
from simplemix.launch import accelerate_files


def test_paper_profile_writes_a_zero3_config_accelerate_accepts(tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file

    prof = load_profile("paper")
    acc_path, ds_path = accelerate_files(prof, tmp_path)
    acc = load_config_from_file(str(acc_path))
    assert acc.distributed_type.value == "DEEPSPEED" and acc.num_processes == 8
    assert acc.deepspeed_config["deepspeed_config_file"] == str(ds_path.resolve())
    ds = json.loads(ds_path.read_text())
    t = prof.training
    assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"] == {"enabled": True}
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (2, 8)
    assert ds["train_batch_size"] == t.per_device_train_batch_size * t.gradient_accumulation_steps * 8 == 128


def test_deepspeed_parses_the_config_as_transformers_resolves_it(tmp_path):
    """transformers fills the remaining "auto" values from the training arguments and the model; DeepSpeed's
    own parser then accepts the result (one process here, so the global batch is micro x accumulation)."""
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers import LlamaConfig, LlamaForCausalLM, TrainingArguments
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig

    prof = load_profile("paper", ["training.num_processes=1", "training.bf16=false"])
    _, ds_path = accelerate_files(prof, tmp_path)
    t = prof.training
    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=t.per_device_train_batch_size,
                             gradient_accumulation_steps=t.gradient_accumulation_steps, report_to=[], use_cpu=True)
    hf = HfTrainerDeepSpeedConfig(str(ds_path))
    hf.trainer_config_process(args)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=2))
    hf.trainer_config_finalize(args, model, num_training_steps=10)
    parsed = DeepSpeedConfig(hf.config)
    assert parsed.zero_optimization_stage == 3
    assert parsed.train_micro_batch_size_per_gpu == t.per_device_train_batch_size
    assert parsed.gradient_accumulation_steps == t.gradient_accumulation_steps
    assert parsed.train_batch_size == t.per_device_train_batch_size * t.gradient_accumulation_steps
    assert parsed.zero_config.reduce_bucket_size == 32 * 32  # filled by transformers from the hidden size


def test_ddp_config_takes_processes_and_precision_from_the_profile(tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file

    prof = load_profile("single-gpu", ["training.accelerate_config=ddp.yaml", "training.num_processes=4"])
    acc_path, ds_path = accelerate_files(prof, tmp_path)
    acc = load_config_from_file(str(acc_path))
    assert ds_path is None
    assert acc.distributed_type.value == "MULTI_GPU" and acc.num_processes == 4 and acc.mixed_precision == "bf16"


def test_single_process_profiles_have_nothing_to_launch(tmp_path):
    with pytest.raises(ValueError, match="profile 'smoke' sets no training.accelerate_config"):
        accelerate_files(load_profile("smoke"), tmp_path)
