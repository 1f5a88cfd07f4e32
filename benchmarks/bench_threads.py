"""The miniature world's models at torch's default thread count vs one thread, alone and beside a busy process.

    python benchmarks/bench_threads.py [--run-dir runs/smoke] [--steps 60] [--prompts 400]

The workload is what the smoke book spends its time on: SFT steps of a fresh miniature policy (the world build)
and greedy generation of the built SFT policy on evaluation prompts (every evaluation). Each configuration runs
in a fresh process: torch's default intra-op threads (all cores) or one thread, with the machine otherwise idle
or with one other CPU-bound process (a Python busy loop) running. The script prints the wall times and the ratio
default / one thread; ``simplemix.sampling.threads_for`` applies the one-thread rule to every small model it
loads, and the world build runs its SFT single-threaded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time


def worker(run_dir: str, threads: int | None, steps: int, prompts: int) -> dict:
    import random
    import tempfile
    from pathlib import Path

    import torch

    if threads:
        torch.set_num_threads(threads)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from simplemix.miniature import generators, policy
    from simplemix.miniature.build import stored_world
    from simplemix.sampling import generate

    built = stored_world(run_dir)
    if built is None:
        raise SystemExit(f"no miniature world in {run_dir}: run chapter 00 (or `simplemix run`) first")
    tokenizer = AutoTokenizer.from_pretrained(built.policy_dir)
    rng = random.Random(0)
    sft = built.tasks("sft")
    demos = [(t.messages(), generators.respond(generators.DEMONSTRATORS["tutor"], t, rng)) for t in sft]
    cfg = policy.PolicyConfig(sft_steps=steps, weak_sft_steps=steps)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        policy.train_sft(tokenizer, demos, cfg, Path(out), progress=False)
        sft_s = time.perf_counter() - start
    model = AutoModelForCausalLM.from_pretrained(built.policy_dir).eval()  # plain load: no thread rule applied
    messages = [t.messages() for t in built.tasks("eval")[:prompts]]
    start = time.perf_counter()
    generate(model, tokenizer, messages, max_new_tokens=48)
    gen_s = time.perf_counter() - start
    return {"threads": torch.get_num_threads(), "sft_s": sft_s, "generate_s": gen_s}


def run(run_dir: str, threads: int | None, steps: int, prompts: int, busy: bool) -> dict:
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        cmd = [sys.executable, __file__, "--worker", "--run-dir", run_dir, "--steps", str(steps), "--prompts",
               str(prompts)] + (["--threads", str(threads)] if threads else [])
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
        return json.loads(out.strip().splitlines()[-1])
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="runs/smoke")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--prompts", type=int, default=400)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--worker", action="store_true")
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.run_dir, args.threads, args.steps, args.prompts)))
        return
    print(f"{platform.machine()}, {os.cpu_count()} CPUs; {args.steps} SFT steps, greedy answers to {args.prompts} "
          "prompts; wall seconds")
    print(f"{'machine':<10} {'threads':>8} {'SFT':>8} {'generate':>9}")
    results = {}
    for busy in (False, True):
        for threads in (None, 1):
            r = run(args.run_dir, threads, args.steps, args.prompts, busy)
            results[busy, threads] = r
            print(f"{'busy' if busy else 'idle':<10} {r['threads']:>8} {r['sft_s']:>8.1f} {r['generate_s']:>9.1f}")
    for busy in (False, True):
        default, one = results[busy, None], results[busy, 1]
        print(f"{'busy' if busy else 'idle'}: default threads / one thread = SFT {default['sft_s'] / one['sft_s']:.1f}x, "
              f"generate {default['generate_s'] / one['generate_s']:.1f}x")


if __name__ == "__main__":
    main()
