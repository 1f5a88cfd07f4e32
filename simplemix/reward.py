"""Reward scorers and best/worst pair building.

A scorer maps (prompt messages, response) to a scalar: a `transformers` sequence-classification RM here, or
whatever a world provides behind the same :class:`RewardScorer` interface. On-policy pairs take the best and the
worst of N scored samples per prompt (the paper's recipe); off-policy pairs can be re-labelled by the same scorer.
Owns RewardScorer, HFRewardModel, build_pairs and rescore_pairs; imports only config and store.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from typing import Any, Iterable, Mapping, Protocol, Sequence

from simplemix.config import ConfigError, RewardConfig
from simplemix.store import canonical_json, stable_hash

logger = logging.getLogger(__name__)

PAIR_COUNTS = ("prompts", "pairs", "tied", "below_margin", "identical_texts")


class RewardScorer(Protocol):
    """Anything that scores one response per prompt; prompts are chat messages ending with the user turn."""

    name: str

    def score(self, prompts: list[list[dict]], responses: list[str], progress: bool = False) -> list[float]: ...


def resolve_dtype(name: str):
    """The torch dtype for a config name; "auto" is bfloat16 where CUDA supports it, else float32."""
    import torch

    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return getattr(torch, name)


def attn_implementation(model_type: str, requested: str | None) -> str | None:
    """The attention kernel to load: Gemma-2 soft-caps attention logits, which sdpa cannot, so it gets eager."""
    if model_type == "gemma2" and requested in (None, "sdpa"):
        if requested == "sdpa":
            warnings.warn("attn_implementation='sdpa' was requested for a Gemma-2 reward model, but sdpa cannot "
                          "apply Gemma-2's attention-logit soft-capping (scores would be wrong); using 'eager' "
                          "instead (or set 'flash_attention_2')", UserWarning, stacklevel=3)
        return "eager"
    return requested


def batch_by_tokens(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Indices grouped longest first so that rows x longest length <= budget; a longer sequence rides alone."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    batch: list[int] = []
    for i in order:
        if batch and (len(batch) + 1) * lengths[batch[0]] > budget:
            batches.append(batch)
            batch = []
        batch.append(i)
    if batch:
        batches.append(batch)
    return batches


class HFRewardModel:
    """A `transformers` sequence-classification RM, scored through its own tokenizer and chat template."""

    def __init__(self, cfg: RewardConfig):
        import torch
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

        m = cfg.model
        self.name, self.cfg = m.name_or_path, cfg
        common = {"revision": m.revision, "trust_remote_code": m.trust_remote_code}
        config = AutoConfig.from_pretrained(m.name_or_path, **common)
        attn = attn_implementation(config.model_type, m.attn_implementation)
        self.tokenizer = AutoTokenizer.from_pretrained(m.name_or_path, **common)
        kwargs: dict[str, Any] = {"attn_implementation": attn} if attn else {}
        if torch.cuda.is_available():
            kwargs["device_map"] = "auto"
        self.model, loading = AutoModelForSequenceClassification.from_pretrained(
            m.name_or_path, dtype=resolve_dtype(m.torch_dtype), output_loading_info=True, **common, **kwargs)
        self.model.eval()
        head = [k for k in loading.get("missing_keys", ()) if k.split(".")[0] in ("score", "classifier", "v_head")]
        if head:
            raise ConfigError(f"reward.model.name_or_path {m.name_or_path!r} has no trained score head (missing "
                              f"{', '.join(sorted(head))}): it is not a reward model ({', '.join(config.architectures or [])})")
        if self.model.config.pad_token_id is None:
            # Batches need a pad id; the model pools on the rightmost non-pad token and we pad on the right.
            pad = self.tokenizer.pad_token_id
            self.model.config.pad_token_id = self.tokenizer.eos_token_id if pad is None else pad
        self.pad_token_id = self.model.config.pad_token_id

    def encode(self, prompt: list[dict], response: str) -> list[int]:
        """Token ids of the conversation by the RM's chat template, with exactly the BOS the template gives."""
        text = self.tokenizer.apply_chat_template(prompt + [{"role": "assistant", "content": response}],
                                                  tokenize=False)
        bos = self.tokenizer.bos_token
        # A template that writes the BOS itself plus a tokenizer that adds one would give two (Llama, Gemma).
        add_special = not (bos and text.startswith(bos))
        return self.tokenizer(text, add_special_tokens=add_special)["input_ids"]

    def score(self, prompts: list[list[dict]], responses: list[str], progress: bool = False) -> list[float]:
        """One reward per (prompt, response), in input order."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses; need one response per prompt")
        ids = [self.encode(p, r) for p, r in zip(prompts, responses)]
        limit = self.cfg.max_length
        truncated = sum(len(x) > limit for x in ids)
        if truncated:
            logger.warning("%s: %d of %d inputs are longer than max_length=%d tokens and were cut at the end",
                           self.name, truncated, len(ids), limit)
        return self.score_ids([x[:limit] for x in ids], progress=progress)

    def score_ids(self, ids: list[list[int]], progress: bool = False) -> list[float]:
        """Rewards of already tokenized inputs, batched by the token budget, returned in input order."""
        import torch
        from tqdm import tqdm

        scores: list[float] = [math.nan] * len(ids)
        device = self.model.device
        bar = tqdm(total=len(ids), desc=f"reward {self.name}", unit="seq", disable=not progress)
        with torch.inference_mode():
            for batch in batch_by_tokens([len(x) for x in ids], self.cfg.batch_token_budget):
                width = len(ids[batch[0]])
                input_ids = torch.full((len(batch), width), self.pad_token_id, dtype=torch.long)
                mask = torch.zeros((len(batch), width), dtype=torch.long)
                for row, i in enumerate(batch):
                    input_ids[row, :len(ids[i])] = torch.tensor(ids[i])
                    mask[row, :len(ids[i])] = 1
                logits = self.model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits
                for i, value in zip(batch, logits[:, 0].float().tolist()):
                    scores[i] = value
                bar.update(len(batch))
        bar.close()
        return scores


def build_pairs(prompts: list[list[dict]], samples_per_prompt: list[list[str]], scores: list[list[float]], *,
                min_margin: float = 0.0, prompt_ids: list[str] | None = None, sampler: dict | None = None,
                origin: str = "on-policy") -> tuple[list[dict], dict[str, int]]:
    """On-policy pairs in the normalized schema: chosen = best sample, rejected = worst.

    The first sample wins a tie for best or for worst (as in ``simplemix.data.binarize_ultrafeedback``).
    No pair when all scores are equal ("tied"), when best - worst < ``min_margin`` ("below_margin") or when
    the best and worst texts are the same ("identical_texts"); ``counts`` tallies each outcome.
    """
    if not len(prompts) == len(samples_per_prompt) == len(scores):
        raise ValueError(f"{len(prompts)} prompts, {len(samples_per_prompt)} sample lists and {len(scores)} score "
                         "lists; need one of each per prompt")
    if prompt_ids is not None and len(prompt_ids) != len(prompts):
        raise ValueError(f"{len(prompt_ids)} prompt_ids for {len(prompts)} prompts")
    counts = dict.fromkeys(PAIR_COUNTS, 0) | {"prompts": len(prompts)}
    rows = []
    for i, (prompt, samples, values) in enumerate(zip(prompts, samples_per_prompt, scores)):
        if len(samples) != len(values) or len(samples) < 2:
            raise ValueError(f"prompt {i}: {len(samples)} samples and {len(values)} scores; need the same number, "
                             "at least 2")
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"prompt {i}: scores must be finite numbers, got {values}")
        best, worst = values.index(max(values)), values.index(min(values))
        if values[best] == values[worst]:
            counts["tied"] += 1
        elif values[best] - values[worst] < min_margin:
            counts["below_margin"] += 1
        elif samples[best] == samples[worst]:
            counts["identical_texts"] += 1
        else:
            metadata = {"prompt_index": i, "prompt_id": prompt_ids[i] if prompt_ids is not None else None,
                        "chosen_index": best, "rejected_index": worst, "scores": [float(v) for v in values],
                        "sampler": sampler or {}}
            rows.append(_row(prompt, samples[best], samples[worst], values[best], values[worst], "on", origin,
                             metadata))
    counts["pairs"] = len(rows)
    return rows, counts


def rescore_pairs(ds: Iterable[Mapping[str, Any]], scorer: RewardScorer, *,
                  progress: bool = False) -> tuple[list[dict], dict[str, int]]:
    """Re-label normalized pairs by ``scorer``: swap where it prefers the rejected, drop exact ties.

    The dataset's own scores and whether the pair was swapped go to ``metadata["rescore"]``, as the
    paper re-labels UltraFeedback with its oracle RM.
    """
    pairs = list(ds)
    start = time.monotonic()
    prompts = [p["prompt"] for p in pairs]
    new = scorer.score(prompts + prompts, [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs],
                       progress=progress)
    counts = {"pairs": len(pairs), "kept": 0, "swapped": 0, "tied": 0}
    rows = []
    for pair, sc, sr in zip(pairs, new[:len(pairs)], new[len(pairs):]):
        if sc == sr:
            counts["tied"] += 1
            continue
        swapped = sr > sc
        metadata = json.loads(pair["metadata"]) if pair.get("metadata") else {}
        metadata["rescore"] = {"scorer": scorer.name, "swapped": swapped,
                               "original_score_chosen": pair.get("score_chosen"),
                               "original_score_rejected": pair.get("score_rejected")}
        chosen, rejected = (pair["rejected"], pair["chosen"]) if swapped else (pair["chosen"], pair["rejected"])
        rows.append(_row(pair["prompt"], chosen, rejected, max(sc, sr), min(sc, sr), pair["source"],
                         pair["origin"], metadata))
        counts["swapped"] += swapped
    counts["kept"] = len(rows)
    logger.info("rescored %d pairs with %s in %.1fs: %s", len(pairs), scorer.name, time.monotonic() - start, counts)
    return rows, counts


def _row(prompt: list[dict], chosen: str, rejected: str, score_chosen: float, score_rejected: float,
         source: str, origin: str, metadata: dict) -> dict:
    """A row of the normalized preference schema, with the ids ``simplemix.data`` computes for it."""
    return {"pair_id": stable_hash([origin, prompt, chosen, rejected]), "prompt_id": stable_hash(prompt),
            "prompt": prompt, "chosen": chosen, "rejected": rejected,
            "score_chosen": float(score_chosen), "score_rejected": float(score_rejected),
            "source": source, "origin": origin, "metadata": canonical_json(metadata)}
