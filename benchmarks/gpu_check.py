"""The GPU rows nobody has measured yet, in one run: what a lent GPU machine should be asked first.

1. ``backends``: vLLM against the transformers backend on the same random-weight Llama (built here, nothing
   downloaded): samples/s of each through ``simplemix.sampling`` (the code the profiles use), and whether their
   greedy outputs are the same text.
2. ``qlora``: one 8B-shaped QLoRA DPO run at max_length 2048 (``bench_qlora_gpu.py``: peak memory, tokens/s).
3. ``mfu``: bf16 full fine-tuning of a ~1B-shaped Llama (AdamW, batch of 2048-token rows): tokens/s and model
   FLOPs utilisation, 6 x parameters x tokens/s over the card's dense bf16 peak.

    bash benchmarks/gpu_check.sh            # all three on a GPU (sized for 8 minutes; not yet timed)
    python benchmarks/gpu_check.py --tiny   # the same code at toy shapes on a CPU (what the tests run)

Prints one JSON object (also written to --out): the numbers for benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SAMPLER = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=12, num_attention_heads=16,
               num_key_value_heads=8, vocab_size=32000)  # ~0.2B
ONE_B = dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
             num_key_value_heads=8, vocab_size=32000)  # ~1.1B, Llama-3.2-1B-like
TINY = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2,
            num_key_value_heads=1, vocab_size=1024)  # head size 64, which vLLM's attention kernels take
# dense bf16 peak FLOP/s (no sparsity), by a substring of torch.cuda.get_device_name()
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L40": 181e12, "L4": 121e12,
             "A10": 125e12, "4090": 165e12}  # first match wins: L40S and L40 before L4


def random_llama(shape: dict, directory: Path, dtype: str) -> Path:
    """A random-initialised Llama and a word-level tokenizer with a chat template, saved to ``directory``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(HERE))
    from bench_qlora_gpu import stub_tokenizer

    directory.mkdir(parents=True, exist_ok=True)
    stub_tokenizer(shape["vocab_size"], directory)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(directory)
    tok.chat_template = ("{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
                         "{% if add_generation_prompt %}assistant {% endif %}")
    tok.save_pretrained(directory)
    torch.manual_seed(0)
    config = LlamaConfig(**shape, max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    LlamaForCausalLM(config).to(getattr(torch, dtype)).save_pretrained(directory)
    return directory


def backends(workdir: Path, tiny: bool, prompts: int, new_tokens: int) -> dict:
    """Samples/s of each backend on the same prompts, and the share of prompts whose greedy tokens agree."""
    import importlib.util
    import random

    from simplemix.config import ModelConfig, SamplingConfig
    from simplemix.sampling import load_backend

    dtype = "float32" if tiny else "bfloat16"
    model = random_llama(TINY if tiny else SAMPLER, workdir / "sampler", dtype)
    rng = random.Random(0)
    vocab = (TINY if tiny else SAMPLER)["vocab_size"]
    chats = [[{"role": "user", "content": " ".join(f"w{rng.randrange(4, vocab)}" for _ in range(rng.randrange(16, 256)))}]
             for _ in range(prompts)]
    policy = ModelConfig(name_or_path=str(model), torch_dtype=dtype)
    out = {"model": f"random Llama {'tiny' if tiny else '~0.2B'}, {dtype}", "prompts": prompts,
           "new_tokens": new_tokens}
    greedy = {}
    for name in ("transformers", "vllm"):
        if name == "vllm" and importlib.util.find_spec("vllm") is None:
            out["vllm"] = "not installed (pip install 'simplemix[gpu]')"
            continue
        cfg = SamplingConfig(backend=name, max_new_tokens=new_tokens, num_samples=4, batch_token_budget=262144)
        backend = load_backend(cfg, policy)
        start = time.perf_counter()
        drawn = backend.generate(chats, n=4, temperature=0.7, top_p=0.9, max_new_tokens=new_tokens, seed=0)
        seconds = time.perf_counter() - start
        greedy[name] = [s[0].text for s in backend.generate(chats, n=1, temperature=0.0, top_p=1.0,
                                                             max_new_tokens=new_tokens, seed=0)]
        out[name] = {"samples_per_s": round(sum(map(len, drawn)) / seconds, 1), "seconds": round(seconds, 2)}
        del backend
    if len(greedy) == 2:
        same = [a == b for a, b in zip(greedy["transformers"], greedy["vllm"])]
        out["greedy_identical"] = f"{sum(same)} of {len(same)}"
        out["vllm_over_transformers"] = round(out["vllm"]["samples_per_s"] / out["transformers"]["samples_per_s"], 2)
    return out


def qlora(workdir: Path, tiny: bool) -> dict:
    """bench_qlora_gpu.py in its own process (its peak memory is its own), its printed lines kept."""
    cmd = [sys.executable, str(HERE / "bench_qlora_gpu.py"), "--steps", "3", "--workdir", str(workdir / "qlora")]
    cmd += ["--shape", "tiny", "--max-length", "256"] if tiny else ["--shape", "8b", "--max-length", "2048"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    lines = [line.strip() for line in done.stdout.splitlines() if line.strip() and not line.startswith("{")]
    return {"rc": done.returncode, "report": lines if done.returncode == 0 else done.stderr.splitlines()[-5:]}


def mfu(tiny: bool, steps: int) -> dict:
    """bf16 full fine-tuning steps (forward, backward, AdamW) on a ~1B Llama: tokens/s and MFU."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    device, dtype = ("cuda", torch.bfloat16) if cuda else ("cpu", torch.float32)
    shape, batch, length = (TINY, 2, 128) if tiny else (ONE_B, 8, 2048)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**shape, max_position_embeddings=length)).to(device, dtype)
    if not tiny:
        model.gradient_checkpointing_enable()
    params = sum(p.numel() for p in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=cuda)
    ids = torch.randint(4, shape["vocab_size"], (batch, length), device=device)
    times = []
    for step in range(steps + 1):  # the first step warms up kernels and allocator
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if step:
            times.append(time.perf_counter() - start)
    tokens_per_s = batch * length / (sum(times) / len(times))
    # 6 N per token (forward 2N, backward 4N), plus the recomputed forward under gradient checkpointing (2N), which
    # counts as hardware work but not as model FLOPs: MFU uses 6N only
    name = torch.cuda.get_device_name() if cuda else platform.processor() or "cpu"
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    return {"device": name, "parameters": params, "batch": batch, "length": length, "tokens_per_s": round(tokens_per_s),
            "peak_allocated_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
            "mfu": round(6 * params * tokens_per_s / peak, 3) if peak and cuda else None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="toy shapes: check the script on any machine")
    parser.add_argument("--only", nargs="*", choices=["backends", "qlora", "mfu"], default=None)
    parser.add_argument("--out", default=None, help="also write the JSON here")
    parser.add_argument("--workdir", default=None, help="where random checkpoints go (default: a temp dir)")
    args = parser.parse_args(argv)
    parts = args.only or ["backends", "qlora", "mfu"]
    if len(parts) > 1:  # each part in its own process: vLLM keeps most of the GPU's memory until its process ends
        report = {"host": platform.node(), "tiny": args.tiny}
        with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
            for part in parts:
                one = Path(tmp) / f"{part}.json"
                cmd = [sys.executable, __file__, "--only", part, "--out", str(one)] + (["--tiny"] if args.tiny else [])
                cmd += ["--workdir", args.workdir] if args.workdir else []
                done = subprocess.run(cmd)
                report[part] = json.loads(one.read_text())[part] if one.exists() else {"rc": done.returncode}
        text = json.dumps(report, indent=1)
        print(text)
        if args.out:
            Path(args.out).write_text(text + "\n")
        return 0 if all(not isinstance(v, dict) or v.get("rc", 0) == 0 for v in report.values()) else 1
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        report = {"host": platform.node(), "tiny": args.tiny}
        for part in parts:
            start = time.perf_counter()
            if part == "backends":
                report[part] = backends(work, args.tiny, 8 if args.tiny else 256, 16 if args.tiny else 128)
            elif part == "qlora":
                report[part] = qlora(work, args.tiny)
            else:
                report[part] = mfu(args.tiny, 2 if args.tiny else 5)
            report[part]["wall_s"] = round(time.perf_counter() - start, 1)
            print(json.dumps({part: report[part]}), flush=True)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return 0 if all(not isinstance(v, dict) or v.get("rc", 0) == 0 for v in report.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
