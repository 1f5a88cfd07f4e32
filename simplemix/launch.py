"""Multi-GPU launches: accelerate (DDP or DeepSpeed ZeRO-3) configs written from a profile, and the command.

The templates live in ``recipes/accelerate/``. What must agree with the training config (process
count, mixed precision, micro-batch, accumulation, global batch) is filled in from the profile, so a
launch can never disagree with the DPOConfig it runs; the rest stays "auto" for transformers to fill
from the model when training starts.
Owns the accelerate launch files and command; imports config and training.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

from simplemix.config import ConfigError, Profile, recipes_dir


def accelerate_files(prof: Profile, out_dir: str | Path) -> tuple[Path, Path | None]:
    """Write ``accelerate.yaml`` (and ``ds_config.json`` for DeepSpeed) for ``prof`` into ``out_dir``."""
    t = prof.training
    if not t.accelerate_config:
        raise ValueError(f"profile '{prof.name}' sets no training.accelerate_config; it trains in one process")
    template = Path(t.accelerate_config)
    template = template if template.exists() else recipes_dir() / "accelerate" / template
    multi = machines(t.num_machines, t.num_processes)
    # every machine writes its own files: the run directory is shared, and the machine rank differs
    out_dir = Path(out_dir) / (f"machine-{multi['machine_rank']}" if t.num_machines > 1 else "")
    out_dir.mkdir(parents=True, exist_ok=True)
    acc = yaml.safe_load(template.read_text())
    acc["num_processes"] = t.num_processes
    acc.update(multi)
    ds_path = None
    if acc["distributed_type"] == "DEEPSPEED":
        ds = json.loads((template.parent / acc["deepspeed_config"]["deepspeed_config_file"]).read_text())
        ds["train_micro_batch_size_per_gpu"] = t.per_device_train_batch_size
        ds["gradient_accumulation_steps"] = t.gradient_accumulation_steps
        ds["train_batch_size"] = t.per_device_train_batch_size * t.gradient_accumulation_steps * t.num_processes
        ds["bf16"] = {"enabled": t.bf16}
        ds_path = out_dir / "ds_config.json"
        ds_path.write_text(json.dumps(ds, indent=2) + "\n")
        acc["deepspeed_config"]["deepspeed_config_file"] = str(ds_path.resolve())
    else:
        acc["mixed_precision"] = "bf16" if t.bf16 else "no"
    acc_path = out_dir / "accelerate.yaml"
    acc_path.write_text(yaml.safe_dump(acc, sort_keys=False))
    return acc_path, ds_path


def machines(num_machines: int, num_processes: int, env: dict | None = None) -> dict:
    """accelerate's multi-node keys: this machine's rank and the main process's address and port, from the
    environment (accelerate's names first, then torchrun's and SLURM's), so one SLURM script serves every node."""
    import os

    env = os.environ if env is None else env
    if num_machines == 1:
        return {"num_machines": 1, "machine_rank": 0}
    if num_processes % num_machines:
        raise ConfigError(f"training.num_processes={num_processes} (over every machine) does not divide among "
                          f"training.num_machines={num_machines}")
    rank = env.get("MACHINE_RANK") or env.get("SLURM_NODEID") or env.get("NODE_RANK")
    ip = env.get("MAIN_PROCESS_IP") or env.get("MASTER_ADDR")
    if rank is None or ip is None:
        raise ConfigError(f"training.num_machines={num_machines}: set MACHINE_RANK (or SLURM_NODEID) and "
                          "MAIN_PROCESS_IP (or MASTER_ADDR) on every machine; see recipes/slurm/multinode.sbatch")
    if not 0 <= int(rank) < num_machines:
        raise ConfigError(f"machine rank {rank} is outside 0..{num_machines - 1}")
    return {"num_machines": num_machines, "machine_rank": int(rank), "main_process_ip": ip,
            "main_process_port": int(env.get("MAIN_PROCESS_PORT") or env.get("MASTER_PORT") or 29500),
            "same_network": True, "rdzv_backend": "static"}


def worker_command(accelerate_yaml: str | Path, train_args: list[str]) -> list[str]:
    """``accelerate launch --config_file <yaml> -m simplemix.cli train <args> --worker``, with this interpreter."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_yaml),
            "-m", "simplemix.cli", "train", *train_args, "--worker"]


def describe(command: list[str], files: list[Path | None]) -> str:
    """What a dry run prints: the exact command, then every generated config file in full."""
    parts = [f"command:\n  {shlex.join(command)}"]
    for path in filter(None, files):
        parts.append(f"{path}:\n" + "".join(f"  {line}\n" for line in path.read_text().splitlines()))
    return "\n".join(parts)


def launched_train(command: list[str]):
    """A stand-in for :func:`simplemix.training.train` that trains in ``accelerate launch`` workers.

    The reference log-probs are computed here, in one process, before the launch: in the workers every stage
    before training is a store hit, so no rank waits on a lock while another waits on it in a collective. The
    workers commit the trained model to the store; reading it back here is then a hit too. DPO-Mix-P calls this
    once per round, and the workers stop after that round (``--upto-round``). It takes what
    :func:`simplemix.training.train` takes (``policy`` a :class:`~simplemix.sampling.Policy` or a ModelConfig),
    except ``stored_only``.
    """
    from simplemix import training

    calls = []

    def train(pairs, cfg, policy, run_dir, *, name, method="dpo", max_steps=None, progress=True):
        training.check_dpo_args(cfg)  # a bad dpo_args key fails here, not in every worker
        if cfg.precompute_ref_log_probs:
            training.reference_logps(pairs, cfg, policy, run_dir, progress)
        round_args = ["--upto-round", str(len(calls))] if name.startswith("dpo_mix_p") else []
        calls.append(name)
        subprocess.run(command + round_args, check=True)
        return training.train(pairs, cfg, policy, run_dir, name=name, method=method, max_steps=max_steps,
                              progress=progress, stored_only=True)

    return train
