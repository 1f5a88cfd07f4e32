"""Generation from a policy: model loading (hub, local or miniature) and the `transformers` backend.

Prompts are rendered with the policy's own chat template (``add_generation_prompt``), sorted by
length and batched by a token budget with left padding, so padding waste stays small.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from simplemix.config import ModelConfig

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


@dataclass(frozen=True)
class Sample:
    """One generated response and how it ended."""

    text: str
    num_tokens: int
    finish_reason: str  # "stop" (end-of-sequence token) or "length" (max_new_tokens reached)


def resolve_model_path(name_or_path: str, run_dir: str | Path | None = None) -> str:
    """A hub id or local path as is; ``miniature:sft-policy`` built (or fetched) in ``run_dir``."""
    if not name_or_path.startswith("miniature:"):
        return name_or_path
    from simplemix.miniature.world import POLICY_NAME, build_world

    if name_or_path != POLICY_NAME:
        raise ValueError(f"unknown miniature model '{name_or_path}'; the miniature world has '{POLICY_NAME}'")
    if run_dir is None:
        raise ValueError(f"'{name_or_path}' lives in a run directory: pass run_dir")
    return str(build_world(run_dir).policy_dir)


def load_policy(cfg: ModelConfig, run_dir: str | Path | None = None):
    """(model, tokenizer) through ``from_pretrained``: the same path for the hub and the miniature world."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model_path(cfg.name_or_path, run_dir)
    tokenizer = AutoTokenizer.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = "auto" if cfg.torch_dtype == "auto" else getattr(torch, DTYPES[cfg.torch_dtype])
    kwargs = {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}
    model = AutoModelForCausalLM.from_pretrained(path, revision=cfg.revision, dtype=dtype,
                                                 trust_remote_code=cfg.trust_remote_code, **kwargs)
    return model.eval(), tokenizer


def render(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a conversation ready for the assistant's turn, by the model's own chat template."""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)


def generate(model, tokenizer, prompts: list[list[dict]], *, max_new_tokens: int, temperature: float = 0.0,
             top_p: float = 1.0, num_return_sequences: int = 1, seed: int = 0, batch_token_budget: int = 8192,
             progress: bool = False) -> list[list[Sample]]:
    """``num_return_sequences`` samples per prompt (greedy when temperature is 0), in prompt order."""
    import torch
    from tqdm import tqdm

    encoded = [render(tokenizer, p) for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    results: list[list[Sample]] = [[] for _ in prompts]
    eos = tokenizer.eos_token_id
    bar = tqdm(total=len(prompts) * num_return_sequences, desc="generate", unit="sample", disable=not progress)
    start = 0
    while start < len(order):
        # the longest prompt of a batch comes last (sorted), so width = its length + new tokens
        stop = start + 1
        while stop < len(order) and (stop - start + 1) * num_return_sequences * (
                len(encoded[order[stop]]) + max_new_tokens) <= batch_token_budget:
            stop += 1
        batch = order[start:stop]
        width = len(encoded[batch[-1]])
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(encoded[i])) + encoded[i] for i in batch])
        mask = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in batch])
        torch.manual_seed(seed + start)  # per batch, so results do not depend on what ran before
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {
            "do_sample": False}
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                 num_return_sequences=num_return_sequences, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=eos, **sampling)
        for row, new in enumerate(out[:, width:].tolist()):
            n = new.index(eos) + 1 if eos in new else len(new)
            text = tokenizer.decode(new[:n], skip_special_tokens=True).strip()
            results[batch[row // num_return_sequences]].append(
                Sample(text, n, "stop" if eos in new else "length"))
        bar.update(len(batch) * num_return_sequences)
        start = stop
    bar.close()
    return results
