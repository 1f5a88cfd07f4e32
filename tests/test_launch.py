"""Generated multi-GPU launch configs parse with accelerate's and DeepSpeed's own parsers and match the profile."""

import json
from pathlib import Path

import pytest

from simplemix import launch
from simplemix.config import ConfigError, load_profile
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


def test_dry_run_prints_the_exact_launch_command_and_configs_and_computes_nothing(tmp_path, capsys):
    from simplemix.cli import main

    assert main(["train", "--profile", "paper", "--method", "simplemix", "--on-fraction", "0.5",
                 "--run", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    acc, ds = tmp_path / "launch" / "accelerate.yaml", tmp_path / "launch" / "ds_config.json"
    cell = "llama-3.1-instruct__ultrafeedback"  # the paper profile's primary cell, forwarded to the workers
    command = (f"-m accelerate.commands.launch --config_file {acc} -m simplemix.cli train --profile paper "
               f"--method simplemix --run {tmp_path} --cell {cell} --on-fraction 0.5 --worker")
    assert command in out and "training in 8 processes" in out
    assert "distributed_type: DEEPSPEED" in out and '"stage": 3' in out and f"{ds}:" in out
    assert not (tmp_path / "stages").exists()


def test_launched_train_rejects_unknown_dpo_args_before_launching_anything(tmp_path):
    from simplemix.config import ConfigError, ModelConfig, TrainingConfig
    from simplemix.launch import launched_train

    marker = tmp_path / "launched"
    train = launched_train(["touch", str(marker)])
    cfg = TrainingConfig(dpo_args={"weight_decy": 0.1})
    with pytest.raises(ConfigError, match="weight_decy.*did you mean 'weight_decay'"):
        train(None, cfg, ModelConfig(name_or_path="unused"), tmp_path, name="bad")
    assert not marker.exists() and not (tmp_path / "stages").exists()


def _launch_args(run_dir, *extra):
    sets = ["sampling.num_samples=2", "sampling.max_new_tokens=8", "mixing.total_pairs=12",
            "training.max_length=192", "training.warmup_steps=0", "training.logging_steps=1", *extra]
    return ["train", "--method", "simplemix", "--run", str(run_dir)] + [f"--set={s}" for s in sets]


def _assert_trained_alike(launched: Path, single: Path) -> None:
    """A launched run of two processes took the steps, losses and weights of the one-process run."""
    from safetensors.torch import load_file

    infos = [json.loads((p / "manifest.json").read_text())["info"] for p in (launched, single)]
    assert [i["num_processes"] for i in infos] == [2, 1] and [i["global_step"] for i in infos] == [3, 3]
    losses = [[r["loss"] for r in json.loads((p / "log_history.json").read_text()) if "loss" in r]
              for p in (launched, single)]
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    weights = [load_file(p / "model.safetensors") for p in (launched, single)]
    assert max((weights[0][k] - weights[1][k]).abs().max().item() for k in weights[1]) < 1e-5


def test_two_process_ddp_launch_trains_what_one_process_trains(tiny_run, tmp_path, monkeypatch):
    """The DDP recipe launched for real: two CPU processes (gloo) with micro-batch 2 take the same steps as one
    process with batch 4, and the launcher gets the workers' result from the store."""
    import shutil
    import subprocess
    import sys

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    single = shutil.copytree(tiny_run, tmp_path / "single")
    run = lambda *a: subprocess.run([sys.executable, "-m", "simplemix.cli", *a], capture_output=True,  # noqa: E731
                                    text=True, timeout=900)
    ddp = run(*_launch_args(tiny_run, "training.per_device_train_batch_size=2", "training.accelerate_config=ddp.yaml",
                            "training.num_processes=2"))
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one = run(*_launch_args(single, "training.per_device_train_batch_size=4"))
    assert one.returncode == 0, one.stderr[-3000:]
    assert "trained by the launched workers" in ddp.stdout and "computed" in one.stdout
    paths = [Path(p.stdout.split()[-1]) for p in (ddp, one)]
    _assert_trained_alike(*paths)
    assert not list((tiny_run / "checkpoints").glob("*/*"))


def test_a_multi_node_config_takes_rank_and_address_from_the_environment(tmp_path, monkeypatch):
    from accelerate.commands.config.config_args import load_config_from_file

    prof = load_profile("single-gpu", ["training.accelerate_config=ddp.yaml", "training.num_processes=16",
                                       "training.num_machines=2"])
    for key in ("MACHINE_RANK", "MAIN_PROCESS_IP", "MAIN_PROCESS_PORT", "MASTER_ADDR", "MASTER_PORT", "NODE_RANK"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("SLURM_NODEID", "1")
    with pytest.raises(ConfigError, match="set MACHINE_RANK \\(or SLURM_NODEID\\) and MAIN_PROCESS_IP"):
        launch.accelerate_files(prof, tmp_path)
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.7")
    monkeypatch.setenv("MASTER_PORT", "29611")
    acc_path, _ = launch.accelerate_files(prof, tmp_path)
    assert acc_path == tmp_path / "machine-1" / "accelerate.yaml"
    acc = load_config_from_file(str(acc_path))
    assert (acc.num_machines, acc.machine_rank, acc.main_process_ip, acc.main_process_port, acc.num_processes) == (
        2, 1, "10.0.0.7", 29611, 16)
    with pytest.raises(ConfigError, match="does not divide"):
        launch.accelerate_files(load_profile("single-gpu", ["training.accelerate_config=ddp.yaml",
                                                            "training.num_processes=3", "training.num_machines=2"]),
                                tmp_path)
    assert (launch.recipes_dir() / "slurm" / "multinode.sbatch").read_text().count("SLURM_NODEID") >= 1


def test_two_machines_of_one_process_train_what_one_process_trains(tiny_run, tmp_path, monkeypatch):
    """A multi-node launch on localhost: two `simplemix train` commands, machine ranks 0 and 1, one process each,
    meeting at 127.0.0.1 (gloo, CPU), against one process with the same global batch."""
    import os
    import shutil
    import socket
    import subprocess
    import sys

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TQDM_DISABLE", "1")
    single = shutil.copytree(tiny_run, tmp_path / "single")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = _launch_args(tiny_run, "training.per_device_train_batch_size=2", "training.accelerate_config=ddp.yaml",
                        "training.num_processes=2", "training.num_machines=2")
    nodes = [subprocess.Popen([sys.executable, "-m", "simplemix.cli", *args], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True,
                              env=os.environ | {"MACHINE_RANK": str(rank), "MAIN_PROCESS_IP": "127.0.0.1",
                                                "MAIN_PROCESS_PORT": str(port)}) for rank in (0, 1)]
    outs = [node.communicate(timeout=900) for node in nodes]
    assert [n.returncode for n in nodes] == [0, 0], [err[-3000:] for _, err in outs]
    one = subprocess.run([sys.executable, "-m", "simplemix.cli", *_launch_args(
        single, "training.per_device_train_batch_size=4")], capture_output=True, text=True, timeout=900)
    assert one.returncode == 0, one.stderr[-3000:]
    paths = {Path(out.split()[-1]) for out, _ in outs}
    assert len(paths) == 1  # both machines report the one stored result
    paths = [paths.pop(), Path(one.stdout.split()[-1])]
    _assert_trained_alike(*paths)
