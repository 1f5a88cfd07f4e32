"""DPO step time and peak memory for three ways to get the reference log-probs, with TRL's own DPOTrainer:

* ``explicit``: full fine-tuning with a second, frozen copy of the model as reference (a reference forward
  every step, two models in memory);
* ``precomputed``: full fine-tuning with the reference log-probs computed once before training (what
  simplemix does, caching them in the run store so experiments on the same pairs share them);
* ``lora-disabled``: LoRA, the reference being the base with the adapters disabled (one model in memory, a
  reference forward every step).

Models: the miniature policy (4 x 128) and a random-initialised ~100M-parameter Llama (12 x 768) with the same
tokenizer, trained on the same miniature pairs. Each (model, way) runs in its own process, so its peak
resident memory is its own; the rounds alternate the ways so background load hits them alike, and the best
round is reported. Run: ``python benchmarks/bench_training.py`` (about 3 minutes on 2 CPU cores).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WAYS = ("explicit", "precomputed", "lora-disabled")
MODELS = {
    "miniature (4 x 128)": None,  # the world's SFT policy itself
    "~100M (12 x 768)": dict(hidden_size=768, intermediate_size=2560, num_hidden_layers=12, num_attention_heads=12),
}
PAIRS, BATCH, STEPS, SKIP, ROUNDS = 48, 4, 8, 2, 2


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def one(model_dir: str, run_dir: str, way: str) -> dict:
    """Train STEPS steps one way in this process; median step time after SKIP steps, and memory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOTrainer

    from simplemix import training
    from simplemix.config import LoraConfig, TrainingConfig
    from simplemix.miniature.world import build_world

    torch.manual_seed(0)
    pairs = training.trl_pairs(build_world(run_dir, progress=False).off_policy_pairs().select(range(PAIRS)))
    before = peak_mib()
    cfg = TrainingConfig(learning_rate=1e-5, per_device_train_batch_size=BATCH, max_length=192, logging_steps=100,
                         precompute_ref_log_probs=way == "precomputed", warmup_steps=0.0,
                         finetuning="lora" if way == "lora-disabled" else "full", lora=LoraConfig(r=16))
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    peft_config = None
    if way == "lora-disabled":
        from peft import LoraConfig as PeftLora

        peft_config = PeftLora(**vars(cfg.lora), task_type="CAUSAL_LM")
    args = training.dpo_config(cfg, Path(run_dir) / "bench-out", max_steps=STEPS, save_strategy="no",
                               disable_tqdm=True)
    start = time.perf_counter()
    trainer = DPOTrainer(model, args=args, train_dataset=pairs, processing_class=tokenizer, peft_config=peft_config)
    setup = time.perf_counter() - start  # includes TRL's reference precompute for "precomputed"

    stamps = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            stamps.append(time.perf_counter())

    trainer.add_callback(Clock())
    begin = time.perf_counter()
    trainer.train()
    steps = [b - a for a, b in zip([begin] + stamps, stamps)][SKIP:]
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    return {"step_s": statistics.median(steps), "setup_s": setup, "peak_mib": peak_mib(),
            "peak_above_start_mib": peak_mib() - before, "trainable": trainable,
            "params": sum(p.numel() for p in trainer.model.parameters())}


def save_random(directory: Path, spec: dict, tokenizer_dir: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), max_position_embeddings=512, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **spec)
    LlamaForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def main() -> None:
    import torch
    import transformers
    import trl

    from simplemix.miniature.policy import PolicyConfig
    from simplemix.miniature.world import WorldConfig, build_world

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        world = build_world(run_dir, WorldConfig(sft_prompts=12, train_prompts=20, eval_prompts=3,
                                                 policy=PolicyConfig(sft_steps=30, batch_size=8)), progress=False)
        dirs = {}
        for name, spec in MODELS.items():
            if spec is None:
                dirs[name] = world.policy_dir
            else:
                dirs[name] = Path(tmp) / name.split()[0]
                save_random(dirs[name], spec, world.policy_dir)
        results: dict[tuple[str, str], list[dict]] = {}
        env = dict(os.environ, TQDM_DISABLE="1", HF_HUB_OFFLINE="1")
        for round_index in range(ROUNDS):
            for name in MODELS:
                for way in WAYS:
                    out = subprocess.run([sys.executable, __file__, "--one", str(dirs[name]), str(run_dir), way],
                                         capture_output=True, text=True, env=env, check=True)
                    results.setdefault((name, way), []).append(json.loads(out.stdout.strip().splitlines()[-1]))
                    print(f"round {round_index + 1}/{ROUNDS} {name} {way}: done", file=sys.stderr)

    print(f"DPO reference log-probs, {BATCH} pairs per step, {STEPS} steps (median of the last {STEPS - SKIP}), "
          f"best of {ROUNDS} rounds")
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, trl {trl.__version__}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads\n")
    print(f"{'model':<22}{'way':<15}{'step s':>8}{'x explicit':>12}{'setup s':>9}{'peak MiB':>10}"
          f"{'x explicit':>12}{'+model MiB':>12}{'trainable':>13}")
    for name in MODELS:
        base = min(results[(name, "explicit")], key=lambda r: r["step_s"])
        for way in WAYS:
            best = min(results[(name, way)], key=lambda r: r["step_s"])
            print(f"{name:<22}{way:<15}{best['step_s']:>8.3f}{best['step_s'] / base['step_s']:>11.2f}x"
                  f"{best['setup_s']:>9.1f}{best['peak_mib']:>10.0f}{best['peak_mib'] / base['peak_mib']:>11.2f}x"
                  f"{best['peak_above_start_mib']:>12.0f}{best['trainable']:>13,}")
    print("\npeak MiB: the process's peak resident memory (Python, torch and the data included); +model MiB: how "
          "far training raised it above its peak before the model was loaded (0: not above the data loading's).")
    print("setup s: building the trainer, which for 'precomputed' includes TRL's one reference pass over the pairs.")
    print("GPU (QLoRA on a random-initialised Llama-3.1-8B shape at max length 2048): not measured here; no GPU "
          "machine was lent to this run. See benchmarks/bench_qlora_gpu.py.")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--one":
        print(json.dumps(one(*sys.argv[2:])))
    else:
        main()
