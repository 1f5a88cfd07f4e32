"""The SimpleMix mixer and the off-policy filters of paper section 5.3.

``mix`` draws a fixed budget of pairs from the on- and off-policy sources in a given ratio; the filters score
off-policy pairs (quality, contrastiveness, on-policiness, dissimilarity) and ``filter_top`` keeps the best.
Owns the mixer and the filters; imports config and data.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Sequence

from simplemix.config import MixingConfig

if TYPE_CHECKING:
    from datasets import Dataset

CRITERIA = ("none", "quality", "on_policiness", "contrastiveness", "dissimilarity")
MODEL_CRITERIA = ("on_policiness", "dissimilarity")


def _round(x: float) -> int:
    """Round half up (Python's ``round`` rounds half to even, so 2.5 and 3.5 would both give an even count)."""
    return math.floor(x + 0.5)


def _split(total: int, on_fraction: float) -> tuple[int, int]:
    k_on = _round(on_fraction * total)
    return k_on, total - k_on


def largest_total(n_on: int, n_off: int, on_fraction: float) -> int:
    """The largest N that both sources fill without replacement: floor(min(n_on / r, n_off / (1 - r))),
    i.e. n_off when r = 0 and n_on when r = 1 (then checked against the half-up rounding of r * N)."""
    if on_fraction == 0:
        return n_off
    if on_fraction == 1:
        return n_on
    total = math.floor(min(n_on / on_fraction, n_off / (1 - on_fraction)) + 1e-9)
    while total > 0 and any(k > n for k, n in zip(_split(total, on_fraction), (n_on, n_off))):
        total -= 1
    return total


def mix(on: Dataset, off: Dataset, total: int | None, on_fraction: float, seed: int,
        with_replacement: bool = False) -> Dataset:
    """round(r * N) on-policy and N - round(r * N) off-policy pairs (r = ``on_fraction``, half up), drawn with a
    seeded generator and shuffled together, all columns kept; ``total=None`` takes ``largest_total``."""
    import numpy as np
    from datasets import concatenate_datasets

    if not 0 <= on_fraction <= 1:
        raise ValueError(f"on_fraction must be in [0, 1], got {on_fraction}")
    if total is None:
        total = largest_total(len(on), len(off), on_fraction)
        if total < 1:
            raise ValueError(f"no pairs to mix at on_fraction={on_fraction:g}: "
                             f"{len(on)} on-policy and {len(off)} off-policy pairs exist")
    elif total < 1:
        raise ValueError(f"total must be at least 1, got {total}")
    rng = np.random.default_rng(seed)
    parts = []
    for name, ds, k in (("on-policy", on, _split(total, on_fraction)[0]),
                        ("off-policy", off, _split(total, on_fraction)[1])):
        if k > len(ds) and (not with_replacement or len(ds) == 0):
            hint = " (set mixing.with_replacement=true to sample with replacement)" if len(ds) else ""
            raise ValueError(f"{name} pairs: {k} requested at on_fraction={on_fraction:g} of total={total}, "
                             f"but only {len(ds)} exist{hint}")
        parts.append(ds.select(rng.choice(len(ds), size=k, replace=with_replacement).tolist()))
    mixed = concatenate_datasets(parts)
    return mixed.select(rng.permutation(len(mixed)).tolist()).flatten_indices()


def mix_from_config(on: Dataset, off: Dataset, cfg: MixingConfig, model=None, tokenizer=None,
                    batch_size: int = 16, progress: bool = False) -> Dataset:
    """``mix`` as a MixingConfig says, after filtering the off-policy pairs by ``cfg.off_policy_filter``."""
    flt = cfg.off_policy_filter
    off, _ = off_policy_filter(off, flt.criterion, flt.keep_fraction, model=model, tokenizer=tokenizer,
                               batch_size=batch_size, progress=progress)
    return mix(on, off, cfg.total_pairs, cfg.on_policy_fraction, cfg.seed, cfg.with_replacement)


def _scores(ds: Dataset) -> list[tuple[float, float]]:
    out = []
    for i, (c, r) in enumerate(zip(ds["score_chosen"], ds["score_rejected"])):
        for key, value in (("score_chosen", c), ("score_rejected", r)):
            if value is None:
                raise ValueError(f"row {i} (pair_id {ds[i]['pair_id']}): {key} is None; score the pairs with a "
                                 "reward model first")
        out.append((c, r))
    return out


def quality(ds: Dataset) -> list[float]:
    """Quality: score_chosen + score_rejected (the reward model's scores)."""
    return [c + r for c, r in _scores(ds)]


def contrastiveness(ds: Dataset) -> list[float]:
    """Contrastiveness: score_chosen - score_rejected."""
    return [c - r for c, r in _scores(ds)]


def filter_top(ds: Dataset, scores: Sequence[float], keep_fraction: float) -> Dataset:
    """The round(p * n) highest-scored rows (half up; at least one when p > 0), ties to the earlier row, kept in
    their original order."""
    if not 0 <= keep_fraction <= 1:
        raise ValueError(f"keep_fraction must be in [0, 1], got {keep_fraction}")
    if len(scores) != len(ds):
        raise ValueError(f"{len(scores)} scores for {len(ds)} rows")
    k = max(_round(keep_fraction * len(ds)), 1 if keep_fraction > 0 and len(ds) else 0)
    top = sorted(range(len(ds)), key=lambda i: -scores[i])[:k]  # sorted() is stable: ties keep row order
    return ds.select(sorted(top))


def tokenize_pair(tokenizer, prompt: list[dict], chosen: str, rejected: str) -> tuple[list[int], list[int], list[int]]:
    """(prompt, chosen, rejected) ids as TRL's DPOTrainer cuts them: the chosen/rejected ids are what the chat
    template renders after the prompt, end-of-turn token included; the prompt is the common prefix of both."""
    from simplemix.sampling import render

    prompt_ids = render(tokenizer, prompt)
    full = [tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": text}], tokenize=True,
                                          return_dict=False) for text in (chosen, rejected)]
    n = min(_common_prefix(prompt_ids, ids) for ids in full)
    return prompt_ids[:n], full[0][n:], full[1][n:]


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _sequences(ds: Dataset, tokenizer, max_length: int | None) -> tuple[list[list[int]], list[int]]:
    """Prompt+response ids for every chosen then every rejected response, and where each response starts."""
    seqs: list[list[int]] = [[] for _ in range(2 * len(ds))]
    starts = [0] * (2 * len(ds))
    for i, row in enumerate(ds):
        p, c, r = tokenize_pair(tokenizer, row["prompt"], row["chosen"], row["rejected"])
        for j, response in ((i, c), (len(ds) + i, r)):
            seqs[j], starts[j] = (p + response)[:max_length], len(p)  # TRL's default "keep_start" truncation
    return seqs, starts


def _forward(model, tokenizer, seqs: list[list[int]], batch_size: int, progress: bool, desc: str, reduce,
             hidden: bool = False):
    """``reduce(outputs, input_ids, attention_mask, rows)`` over right-padded batches, shortest sequences first."""
    import torch
    from tqdm import tqdm

    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    results: list = [None] * len(seqs)
    with torch.no_grad():
        for b in tqdm(range(0, len(order), batch_size), desc=desc, disable=not progress):
            rows = order[b:b + batch_size]
            width = max(len(seqs[i]) for i in rows)
            ids = torch.tensor([seqs[i] + [pad] * (width - len(seqs[i])) for i in rows], device=model.device)
            mask = torch.tensor([[1] * len(seqs[i]) + [0] * (width - len(seqs[i])) for i in rows],
                                device=model.device)
            out = model(input_ids=ids, attention_mask=mask, output_hidden_states=hidden)
            for i, value in zip(rows, reduce(out, ids, mask, rows)):
                results[i] = value
    return results


def response_logps(ds: Dataset, model, tokenizer, batch_size: int = 16, max_length: int | None = None,
                   progress: bool = False, per_token: bool = False) -> tuple[list[float], list[float]]:
    """Summed token log-probs of the chosen and of the rejected responses under ``model`` given the prompt
    (``per_token``: divided by the response's number of tokens)."""
    import torch

    seqs, starts = _sequences(ds, tokenizer, max_length)

    def reduce(out, ids, mask, rows):
        logps = torch.log_softmax(out.logits[:, :-1].float(), dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        position = torch.arange(1, ids.shape[1], device=ids.device)
        response = (position[None] >= torch.tensor([starts[i] for i in rows], device=ids.device)[:, None]) & (
            mask[:, 1:] == 1)
        total = (logps * response).sum(dim=1)
        return (total / response.sum(dim=1).clamp(min=1) if per_token else total).tolist()

    values = _forward(model, tokenizer, seqs, batch_size, progress, "on-policiness", reduce)
    return values[:len(ds)], values[len(ds):]


def on_policiness(ds: Dataset, model, tokenizer, batch_size: int = 16, max_length: int | None = None,
                  progress: bool = False) -> list[float]:
    """On-policiness: log pi_SFT(chosen | x) + log pi_SFT(rejected | x)."""
    chosen, rejected = response_logps(ds, model, tokenizer, batch_size, max_length, progress)
    return [c + r for c, r in zip(chosen, rejected)]


def dissimilarity(ds: Dataset, model, tokenizer, batch_size: int = 16, max_length: int | None = None,
                  progress: bool = False) -> list[float]:
    """Dissimilarity: minus the cosine of chosen and rejected embeddings, each the last hidden layer of the policy
    mean-pooled over the whole prompt+response sequence (pad excluded); the least similar pairs score highest."""
    import torch

    seqs, _ = _sequences(ds, tokenizer, max_length)

    def reduce(out, ids, mask, rows):
        m = mask[..., None].to(out.hidden_states[-1].dtype)
        return list(((out.hidden_states[-1] * m).sum(dim=1) / m.sum(dim=1)).float())

    pooled = _forward(model, tokenizer, seqs, batch_size, progress, "dissimilarity", reduce, hidden=True)
    return [-torch.nn.functional.cosine_similarity(c, r, dim=0).item()
            for c, r in zip(pooled[:len(ds)], pooled[len(ds):])]


def off_policy_filter(ds: Dataset, criterion: str, keep_fraction: float, model=None, tokenizer=None,
                      batch_size: int = 16, progress: bool = False,
                      max_length: int | None = None) -> tuple[Dataset, list[float] | None]:
    """(the top ``keep_fraction`` of ``ds`` by ``criterion``, every row's score); "none" returns ``ds`` as is."""
    if criterion not in CRITERIA:
        raise ValueError(f"unknown filter criterion {criterion!r}; valid criteria: {', '.join(CRITERIA)}")
    if criterion == "none":
        return ds, None
    if criterion in MODEL_CRITERIA:
        if model is None or tokenizer is None:
            raise ValueError(f"the {criterion!r} filter needs the SFT policy: pass model and tokenizer")
        fn = on_policiness if criterion == "on_policiness" else dissimilarity
        scores = fn(ds, model, tokenizer, batch_size=batch_size, max_length=max_length, progress=progress)
    else:
        scores = quality(ds) if criterion == "quality" else contrastiveness(ds)
    return filter_top(ds, scores, keep_fraction), scores
