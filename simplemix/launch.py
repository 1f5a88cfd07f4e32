"""Multi-GPU launches: accelerate (DDP or DeepSpeed ZeRO-3) configs written from a profile, and the command.

The templates live in ``recipes/accelerate/``. What must agree with the training config (process
count, mixed precision, micro-batch, accumulation, global batch) is filled in from the profile, so a
launch can never disagree with the DPOConfig it runs; the rest stays "auto" for transformers to fill
from the model when training starts.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from simplemix.config import Profile, recipes_dir


def accelerate_files(prof: Profile, out_dir: str | Path) -> tuple[Path, Path | None]:
    """Write ``accelerate.yaml`` (and ``ds_config.json`` for DeepSpeed) for ``prof`` into ``out_dir``."""
    t = prof.training
    if not t.accelerate_config:
        raise ValueError(f"profile '{prof.name}' sets no training.accelerate_config; it trains in one process")
    template = Path(t.accelerate_config)
    template = template if template.exists() else recipes_dir() / "accelerate" / template
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    acc = yaml.safe_load(template.read_text())
    acc["num_processes"] = t.num_processes
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
