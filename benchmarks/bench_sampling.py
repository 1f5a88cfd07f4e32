"""Batched, length-sorted sampling vs a one-prompt-at-a-time loop, side by side on this machine.

    python benchmarks/bench_sampling.py [--run-dir runs/smoke] [--prompts 48] [--new-tokens 32]

Two policies: the miniature SFT policy (built or fetched in the run store) and a ~100M-parameter
random-initialised Llama with the same tokenizer, each with N=1 and N=4 samples per prompt. Both
ways draw the same number of samples with the same settings; the loop is how one would write it
without a batching layer (one ``generate`` call per prompt, its N samples in that call). The script
prints samples/s for each and the ratio (goal: at least 5x). vLLM is not measured here: it needs a GPU.
"""

from __future__ import annotations

import argparse
import os
import platform
import time


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def bench(name, model, tokenizer, prompts, new_tokens, n, budget):
    from simplemix.sampling import generate

    kw = dict(max_new_tokens=new_tokens, temperature=0.7, top_p=0.9, num_return_sequences=n)
    generate(model, tokenizer, prompts[:2], **kw)  # warm-up
    batched, t_batched = timed(lambda: generate(model, tokenizer, prompts, batch_token_budget=budget, **kw))
    looped, t_loop = timed(lambda: [generate(model, tokenizer, [p], **kw)[0] for p in prompts])
    samples = len(prompts) * n
    tokens = sum(s.num_tokens for g in batched for s in g), sum(s.num_tokens for g in looped for s in g)
    print(f"{name:<34} {samples / t_loop:>10.1f} {samples / t_batched:>10.1f} {t_loop / t_batched:>8.1f}x"
          f"   tokens {tokens[0]} / {tokens[1]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default=None, help="run store holding the miniature world")
    parser.add_argument("--prompts", type=int, default=48)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--samples", type=int, default=4, help="samples per prompt (N)")
    args = parser.parse_args()

    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from simplemix.config import ModelConfig, default_run_dir
    from simplemix.miniature.world import build_world
    from simplemix.sampling import load_policy

    run_dir = args.run_dir or default_run_dir("smoke")
    world = build_world(run_dir, progress=False)
    prompts = [t.messages() for t in world.tasks("train")[: args.prompts]]
    model, tokenizer = load_policy(ModelConfig(name_or_path=str(world.policy_dir)))
    torch.manual_seed(0)
    big = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
        num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id)).eval()

    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), "
          f"{args.prompts} prompts x N samples, up to {args.new_tokens} new tokens, T=0.7, top-p 0.9; "
          "the loop draws a prompt's N samples in one call")
    print(f"{'policy':<34} {'loop s/s':>10} {'batch s/s':>10} {'ratio':>9}")
    for name, m, budget in [
        (f"miniature SFT ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M)", model, 16384),
        (f"random Llama ({sum(p.numel() for p in big.parameters()) / 1e6:.0f}M)", big, 8192),
    ]:
        for n in dict.fromkeys((1, args.samples)):
            bench(f"{name}, N={n}", m, tokenizer, prompts, args.new_tokens, n, budget)


if __name__ == "__main__":
    main()
