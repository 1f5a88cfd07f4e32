"""Reward scoring throughput: length-sorted token-budget batches (simplemix.reward) vs fixed-size unsorted batches.

Random-initialised Llama RMs (a small one and a ~100M-parameter one) score random token ids whose lengths
follow a log-normal spread like chat responses. Both ways run on the same inputs in one process, alternating
rounds so that background load hits both alike; the best round of each is reported. Run:
``python benchmarks/bench_reward.py``.
"""

from __future__ import annotations

import os
import platform
import random
import tempfile
import time

import torch
import transformers
from tokenizers import Tokenizer, models
from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast

from simplemix.config import ModelConfig, RewardConfig
from simplemix.reward import HFRewardModel

SEED = 0
MIN_LEN, MAX_LEN = 20, 600
NAIVE_BATCH = 8
BUDGET = NAIVE_BATCH * 512  # about the padded tokens of one naive batch, so peak memory is alike
ROUNDS = 2
MODELS = {
    "small (4 x 128)": dict(vocab_size=4096, hidden_size=128, intermediate_size=352, num_hidden_layers=4,
                            num_attention_heads=4, sequences=160),
    "~100M (12 x 768)": dict(vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12,
                             num_attention_heads=12, sequences=40),
}


def lengths(n: int, rng: random.Random) -> list[int]:
    """Log-normal lengths (median ~110 tokens) clipped to [MIN_LEN, MAX_LEN]."""
    return [min(MAX_LEN, max(MIN_LEN, round(rng.lognormvariate(4.7, 0.8)))) for _ in range(n)]


def save_rm(directory: str, spec: dict) -> RewardConfig:
    """A random Llama RM and a stub tokenizer (inputs are token ids) saved as a local checkpoint."""
    torch.manual_seed(SEED)
    config = LlamaConfig(num_labels=1, pad_token_id=0, max_position_embeddings=1024, **spec)
    LlamaForSequenceClassification(config).save_pretrained(directory)
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")), pad_token="<pad>",
                            bos_token="<s>", eos_token="</s>", unk_token="<unk>").save_pretrained(directory)
    return RewardConfig(model=ModelConfig(name_or_path=directory, torch_dtype="float32"), batch_token_budget=BUDGET)


def naive_scores(rm: HFRewardModel, ids: list[list[int]]) -> list[float]:
    """Fixed-size batches in input order, each right-padded to its longest sequence."""
    scores = []
    with torch.inference_mode():
        for start in range(0, len(ids), NAIVE_BATCH):
            batch = ids[start:start + NAIVE_BATCH]
            width = max(map(len, batch))
            input_ids = torch.tensor([x + [rm.pad_token_id] * (width - len(x)) for x in batch])
            mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in batch])
            scores += rm.model(input_ids=input_ids, attention_mask=mask).logits[:, 0].float().tolist()
    return scores


def timed(fn, ids):
    start = time.perf_counter()
    scores = fn(ids)
    return time.perf_counter() - start, scores


def bench(name: str, spec: dict, rng: random.Random) -> None:
    spec = dict(spec)
    n = spec.pop("sequences")
    with tempfile.TemporaryDirectory() as directory:
        rm = HFRewardModel(save_rm(directory, spec))
        params = sum(p.numel() for p in rm.model.parameters())
        ids = [[rng.randrange(4, spec["vocab_size"]) for _ in range(k)] for k in lengths(n, rng)]
        ways = {"naive fixed-size": lambda x: naive_scores(rm, x), "sorted token-budget": rm.score_ids}
        for fn in ways.values():  # warm-up
            fn(ids[:NAIVE_BATCH])
        best = {way: float("inf") for way in ways}
        scores = {}
        for _ in range(ROUNDS):
            for way, fn in ways.items():
                seconds, scores[way] = timed(fn, ids)
                best[way] = min(best[way], seconds)
    real = sum(map(len, ids))
    padded = sum(max(map(len, ids[s:s + NAIVE_BATCH])) * len(ids[s:s + NAIVE_BATCH]) for s in range(0, n, NAIVE_BATCH))
    diff = max(abs(a - b) for a, b in zip(*scores.values()))
    spread = max(scores["naive fixed-size"]) - min(scores["naive fixed-size"])
    print(f"\n{name}: {params / 1e6:.1f}M parameters, {n} sequences, {real} tokens "
          f"(naive batches pad to {padded}, {padded / real:.2f}x)")
    for way in ways:
        print(f"  {way:<22}{n / best[way]:>9.1f} seq/s  ({best[way]:.2f} s, best of {ROUNDS})")
    ratio = best["naive fixed-size"] / best["sorted token-budget"]
    print(f"  speed-up {ratio:.2f}x (goal >= 1.3x: {'met' if ratio >= 1.3 else 'NOT met'}); "
          f"max |score difference| {diff:.2e} (scores span {spread:.3f})")
    assert diff <= 1e-5, f"{name}: the two ways disagree by {diff:.2e} > 1e-5"


def main() -> None:
    print(f"bench_reward: torch {torch.__version__}, transformers {transformers.__version__}, "
          f"python {platform.python_version()}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}")
    print(f"lengths: log-normal in [{MIN_LEN}, {MAX_LEN}] tokens; naive batch {NAIVE_BATCH}, "
          f"token budget {BUDGET}; float32")
    rng = random.Random(SEED)
    for name, spec in MODELS.items():
        bench(name, spec, rng)


if __name__ == "__main__":
    main()
