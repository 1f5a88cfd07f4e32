"""The DPO-Mix-P sampler: each token drawn from per-token fused logits of the policy and the reference model.

At every step ``fused = w_p * policy_logits + w_r * reference_logits`` (float32, last position), then
temperature, then top-p, then one draw. Each model keeps its own KV cache, so a step costs one token's
forward pass per model. Prompts are rendered, sorted and left-padded as in :func:`simplemix.sampling.generate`.

Seeding: prompts are sorted by rendered length and cut into batches of ``batch_size`` prompts; the batch whose
first prompt sits at position ``start`` of that order draws from ``torch.Generator(device).manual_seed(seed +
start)``, with one ``torch.multinomial`` over all of the batch's rows per step (rows that have finished
included, rows ordered prompt-major as ``repeat_interleave`` gives). That is the draw sequence of transformers'
sampling loop, so a one-batch call with identical models and weights summing to one draws the same tokens as
``torch.manual_seed(seed); model.generate(do_sample=True, top_k=0, ...)``, up to float rounding of the fusion.
Owns the fused sampler; imports sampling.
"""

from __future__ import annotations

from dataclasses import dataclass

from simplemix.sampling import Sample, render, to_sample

DPO_MIX_P_WEIGHTS = ((1.5, -0.5), (0.5, 0.5))  # (policy, reference): extrapolation, then interpolation


@dataclass(frozen=True)
class MixedSample:
    """A fused sample and the (policy, reference) weights that drew it."""

    sample: Sample
    weights: tuple[float, float]


def fused_next_token_distribution(logits_p, logits_r, weights, temperature: float, top_p: float):
    """Next-token probabilities from fused logits: temperature (one-hot argmax at 0), then nucleus filtering.

    Top-p keeps the smallest most-probable set whose mass reaches ``top_p``: a token stays when the mass of
    the tokens ranked above it is below ``top_p``; the kept mass is renormalised.
    """
    import torch

    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0 and 0 < top_p <= 1, got {temperature} and {top_p}")
    w_p, w_r = weights
    fused = w_p * logits_p.float() + w_r * logits_r.float()
    if temperature == 0:
        return torch.nn.functional.one_hot(fused.argmax(-1), fused.shape[-1]).float()
    probs = torch.softmax(fused / temperature, dim=-1)
    if top_p < 1:
        ranked, order = probs.sort(dim=-1, descending=True)
        above = ranked.cumsum(-1) - ranked
        drop = torch.zeros_like(probs, dtype=torch.bool).scatter(-1, order, above >= top_p)
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def _device(model):
    return next(model.parameters()).device


def fused_sample_ids(policy, reference, input_ids, attention_mask, *, weights, max_new_tokens: int,
                     temperature: float = 1.0, top_p: float = 1.0, generator=None, eos_token_id: int | None = None,
                     pad_token_id: int = 0):
    """New token ids (rows x at most ``max_new_tokens``) for left-padded prompts; pad after a row's eos.

    Stops early once every row has produced ``eos_token_id``. ``generator`` must live on the policy's device.
    ``reference=None`` samples from the policy alone (its logits times ``weights[0]``), one forward per token.
    """
    import torch

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be at least 1, got {max_new_tokens}")
    models = (policy,) if reference is None else (policy, reference)
    devices = [_device(m) for m in models]
    mask = attention_mask.long().to(devices[0])
    tokens = input_ids.to(devices[0])
    # left padding: the first real token of every row sits at position 0
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    caches = [None, None]
    unfinished = torch.ones(len(tokens), dtype=torch.bool, device=devices[0])
    new = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            logits = []
            for k, (model, device) in enumerate(zip(models, devices)):
                out = model(input_ids=tokens.to(device), attention_mask=mask.to(device),
                            position_ids=positions.to(device), past_key_values=caches[k], use_cache=True,
                            logits_to_keep=1)
                caches[k] = out.past_key_values
                logits.append(out.logits[:, -1].to(devices[0], torch.float32))
            if reference is None:
                logits.append(torch.zeros_like(logits[0]))
            probs = fused_next_token_distribution(*logits, weights, temperature, top_p)
            if temperature == 0:
                nxt = probs.argmax(-1)
            else:
                nxt = torch.multinomial(probs, 1, generator=generator).squeeze(1)
            nxt = torch.where(unfinished, nxt, pad_token_id)
            new.append(nxt)
            if eos_token_id is not None:
                unfinished &= nxt != eos_token_id
            if not unfinished.any():
                break
            tokens = nxt[:, None]
            mask = torch.cat([mask, mask.new_ones(len(mask), 1)], dim=-1)
            positions = positions[:, -1:] + 1
    return torch.stack(new, dim=1)


def fused_generate(policy, reference, tokenizer, prompts: list[list[dict]], *, weights: tuple[float, float],
                   max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0, num_return_sequences: int = 1,
                   seed: int = 0, batch_size: int = 8, progress: bool = False) -> list[list[Sample]]:
    """``num_return_sequences`` fused samples per prompt, in prompt order; seeding as in the module docstring."""
    import torch
    from tqdm import tqdm

    encoded = [render(tokenizer, p) for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    results: list[list[Sample]] = [[] for _ in prompts]
    eos = tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    device = _device(policy)
    bar = tqdm(total=len(prompts) * num_return_sequences, desc="fused", unit="sample", disable=not progress)
    for start in range(0, len(order), batch_size):
        batch = order[start:start + batch_size]
        width = len(encoded[batch[-1]])
        ids = torch.tensor([[pad] * (width - len(encoded[i])) + encoded[i] for i in batch])
        mask = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in batch])
        out = fused_sample_ids(
            policy, reference, ids.repeat_interleave(num_return_sequences, dim=0),
            mask.repeat_interleave(num_return_sequences, dim=0), weights=weights, max_new_tokens=max_new_tokens,
            temperature=temperature, top_p=top_p, generator=torch.Generator(device).manual_seed(seed + start),
            eos_token_id=eos, pad_token_id=pad)
        for row, new in enumerate(out.tolist()):
            results[batch[row // num_return_sequences]].append(to_sample(tokenizer, new))
        bar.update(len(batch) * num_return_sequences)
    bar.close()
    return results


def dpo_mix_p_samples(policy, reference, tokenizer, prompts: list[list[dict]], *, num_samples: int,
                      fused_weights=DPO_MIX_P_WEIGHTS, max_new_tokens: int, temperature: float = 1.0,
                      top_p: float = 1.0, seed: int = 0, batch_size: int = 8,
                      progress: bool = False) -> list[list[MixedSample]]:
    """``num_samples`` per prompt split over ``fused_weights``; earlier weights take the remainder (ceil, floor).

    Group ``k`` is seeded with ``seed + k * len(prompts)``, so no two groups' batches share a seed.
    """
    groups = len(fused_weights)
    results: list[list[MixedSample]] = [[] for _ in prompts]
    for k, weights in enumerate(fused_weights):
        count = num_samples // groups + (k < num_samples % groups)
        if count == 0:
            continue
        weights = (float(weights[0]), float(weights[1]))
        drawn = fused_generate(policy, reference, tokenizer, prompts, weights=weights, max_new_tokens=max_new_tokens,
                               temperature=temperature, top_p=top_p, num_return_sequences=count,
                               seed=seed + k * len(prompts), batch_size=batch_size, progress=progress)
        for mine, samples in zip(results, drawn):
            mine.extend(MixedSample(s, weights) for s in samples)
    return results
