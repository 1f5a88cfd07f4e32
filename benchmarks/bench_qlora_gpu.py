"""QLoRA DPO on one GPU: peak memory and tokens/s for a random-initialised Llama-3.1-8B-shaped policy at
max length 2048 (goal: under 24 GB, so the single-gpu profile fits a 24 GB card).

The policy goes through the same code as the ``single-gpu`` profile: ``simplemix.training.load_model`` (4-bit
NF4, double quantisation, bf16 compute, LoRA r=16 on every projection) and ``make_trainer`` with reference
log-probs precomputed before training. Pairs are random words from a word-level stub tokenizer, so every
sequence is exactly ``--max-length`` tokens (prompt half, response half). Run on a GPU machine:
``python benchmarks/bench_qlora_gpu.py`` (writes a 16 GB random checkpoint to --workdir first).
``--shape tiny`` runs the same path on a small model, on a CPU too, to check the script itself.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

SHAPES = {
    "8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1024),
}


def stub_tokenizer(vocab_size: int, directory: Path):
    """A word-level tokenizer: ``w<i>`` is token i, so a text of n words is exactly n tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3} | {f"w{i}": i for i in range(4, vocab_size)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")
    fast.save_pretrained(directory)
    return fast


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="8b")
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--workdir", default=None, help="where the random checkpoint goes (default: a temp dir)")
    args = parser.parse_args()

    import torch
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM, TrainerCallback

    from simplemix import training
    from simplemix.config import ModelConfig, TrainingConfig

    cuda = torch.cuda.is_available()
    if args.shape == "8b" and not cuda:
        raise SystemExit("the 8B shape needs a CUDA GPU; use --shape tiny to check the script on a CPU")
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-qlora-"))
    model_dir = work / f"random-llama-{args.shape}"
    spec = SHAPES[args.shape]
    if not (model_dir / "config.json").exists():
        tokenizer = stub_tokenizer(spec["vocab_size"], model_dir)
        config = LlamaConfig(max_position_embeddings=max(8192, args.max_length), bos_token_id=1, eos_token_id=2,
                             pad_token_id=0, **spec)
        torch.manual_seed(0)
        with torch.device("cuda" if cuda else "cpu"):
            default = torch.get_default_dtype()
            torch.set_default_dtype(torch.bfloat16)  # 16 GB of bf16 weights, never 32 GB of float32
            try:
                LlamaForCausalLM(config).save_pretrained(model_dir)
            finally:
                torch.set_default_dtype(default)
        del tokenizer
        if cuda:
            torch.cuda.empty_cache()

    rng = random.Random(0)
    half = args.max_length // 2 - 1  # room for the eos TRL appends
    words = lambda n: " ".join(f"w{rng.randrange(4, spec['vocab_size'])}" for _ in range(n))  # noqa: E731
    n_pairs = args.steps
    pairs = Dataset.from_list([{"prompt": words(half), "chosen": words(half), "rejected": words(half),
                                "pair_id": str(i), training.SOURCE_COLUMN: i % 2} for i in range(n_pairs)])
    cfg = TrainingConfig(finetuning="qlora", learning_rate=5e-5, per_device_train_batch_size=1,
                         max_length=args.max_length, bf16=cuda, gradient_checkpointing=True, logging_steps=1,
                         warmup_steps=0.0)
    policy = ModelConfig(name_or_path=str(model_dir), torch_dtype="bfloat16" if cuda else "float32")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    model, tokenizer, peft_config = training.load_model(cfg, policy)
    loaded = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
    start = time.perf_counter()
    trainer = training.make_trainer(model, tokenizer,
                                    training.dpo_config(cfg, work / "out", max_steps=args.steps, save_strategy="no",
                                                        precompute_ref_log_probs=True), pairs, peft_config)
    precompute = time.perf_counter() - start
    stamps = []

    class Clock(TrainerCallback):
        def on_step_end(self, *a, **k):
            if cuda:
                torch.cuda.synchronize()
            stamps.append(time.perf_counter())

    trainer.add_callback(Clock())
    begin = time.perf_counter()
    trainer.train()
    steps = [b - a for a, b in zip([begin] + stamps, stamps)][1:]  # the first step pays for warm-up
    step = statistics.median(steps)
    tokens = 2 * args.max_length * cfg.per_device_train_batch_size  # chosen and rejected sequences
    device = torch.cuda.get_device_name() if cuda else "CPU"
    print(f"QLoRA DPO, {args.shape} random Llama, max length {args.max_length}, batch 1, gradient checkpointing, "
          f"on {device}")
    if cuda:
        print(f"  weights loaded (4-bit): {loaded:.2f} GiB allocated")
        print(f"  peak allocated during training: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB "
              f"(reserved {torch.cuda.max_memory_reserved() / 2**30:.2f} GiB); goal under 24 GB")
    print(f"  reference precompute: {precompute:.1f} s for {n_pairs} pairs")
    print(f"  step: {step:.2f} s median of {len(steps)}; {tokens / step:,.0f} tokens/s")
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
