"""The on-policy data engine: N samples per prompt from a cell's SFT policy, reward scores, best/worst pairs.

Three run-store stages, each sharded so that a kill loses at most the shard in flight and a rerun
continues from there: ``samples`` (policy + prompts + sampling config), ``scores`` (+ reward model) and
``pairs`` (+ pair rules). Every notebook that needs on-policy pairs of the same configuration gets
the same entries, computed once. Owns those stages; imports config, store, data, sampling, reward and world.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

from simplemix.config import PairsConfig, SamplingConfig
from simplemix.data import read_jsonl, write_jsonl
from simplemix.sampling import Policy, load_backend, sample_prompts, sample_settings
from simplemix.store import Entry, RunStore, default_code_version

if TYPE_CHECKING:
    from simplemix.world import Cell, PromptSet, World

SHARD_SIZE = 64  # prompts per shard: small enough to lose little to a kill, large enough to batch well


def _shards(n: int, size: int) -> list[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def _samples_request(policy: Policy, cfg: SamplingConfig, prompts: PromptSet):
    return "samples", {"policy": policy.key, "sampling": dataclasses.asdict(cfg)}, {"prompts": prompts.key}


def sample_stage(store: RunStore, policy: Policy, cfg: SamplingConfig, prompts: PromptSet,
                 shard_size: int = SHARD_SIZE, progress: bool = True) -> Entry:
    """``samples.jsonl``: per prompt its id, messages, N samples (text, tokens, finish reason) and the
    sampling settings they were drawn with."""
    stage, config, inputs = _samples_request(policy, cfg, prompts)

    def compute(out: Path, shards) -> dict:
        from tqdm import tqdm

        backend = None
        rows, start, settings = [], time.monotonic(), sample_settings(cfg)
        bar = tqdm(total=len(prompts), desc="samples", unit="prompt", disable=not progress)
        for i, part in enumerate(_shards(len(prompts), shard_size)):
            def draw(part=part, i=i):
                nonlocal backend
                backend = backend or load_backend(cfg, policy)
                shard_cfg = dataclasses.replace(cfg, seed=cfg.seed + 100_003 * i)  # independent noise per shard
                drawn = sample_prompts(backend, [prompts.messages[j] for j in part], shard_cfg)
                return [[dataclasses.asdict(s) for s in group] for group in drawn]

            for j, group in zip(part, shards.get_or_compute(i, draw)):
                rows.append({"prompt_id": prompts.ids[j], "prompt": prompts.messages[j],
                             "category": prompts.categories[j], "samples": group, "settings": settings})
            bar.update(len(part))
            bar.set_postfix_str(f"{len(rows) * cfg.num_samples / (time.monotonic() - start):.1f} samples/s")
        bar.close()
        write_jsonl(out / "samples.jsonl", rows)
        finished = [s["finish_reason"] for r in rows for s in r["samples"]]
        return {"prompts": len(rows), "samples": len(finished), "truncated": finished.count("length"),
                "settings": settings}

    return store.run(stage, compute, config, inputs)


def score_stage(store: RunStore, samples: Entry, world: World, shard_size: int = SHARD_SIZE,
                progress: bool = True) -> Entry:
    """``scores.jsonl``: per prompt the reward of each of its samples, by the world's reward model."""
    rows = read_jsonl(samples.path / "samples.jsonl")

    def compute(out: Path, shards) -> dict:
        scorer = None
        scored = []
        for i, part in enumerate(_shards(len(rows), shard_size)):
            def score(part=part):
                nonlocal scorer
                scorer = scorer or world.reward()
                flat = [(rows[j]["prompt"], s["text"]) for j in part for s in rows[j]["samples"]]
                values = scorer.score([p for p, _ in flat], [t for _, t in flat], progress=progress)
                it = iter(values)
                return [[next(it) for _ in rows[j]["samples"]] for j in part]

            for j, values in zip(part, shards.get_or_compute(i, score)):
                scored.append({"prompt_id": rows[j]["prompt_id"], "scores": values})
        write_jsonl(out / "scores.jsonl", scored)
        flat = [v for r in scored for v in r["scores"]]
        return {"prompts": len(scored), "samples": len(flat), "mean_reward": sum(flat) / max(1, len(flat))}

    return store.run("scores", compute, {"reward": world.reward_key()}, {"samples": samples})


def pairs_stage(store: RunStore, samples: Entry, scores: Entry, cfg: PairsConfig) -> Entry:
    """``pairs.jsonl``: best/worst pairs in the normalized preference schema, with the counts of prompts that
    gave none (all samples tied, below the margin, identical texts).

    Scores belong to samples by row, not by prompt id (a prompt set may repeat a prompt); before the entry is
    committed, every written pair is checked against its own row's texts and scores."""
    from simplemix.data import validate_rows
    from simplemix.reward import build_pairs

    def compute(out: Path) -> dict:
        rows, values = _aligned(samples, scores)
        texts = [[s["text"] for s in r["samples"]] for r in rows]
        settings = samples.manifest["info"]["settings"]
        pairs, counts = build_pairs([r["prompt"] for r in rows], texts, values, min_margin=cfg.min_margin,
                                    prompt_ids=[r["prompt_id"] for r in rows], sampler=settings)
        # An empty sample is a real (bad) response of the policy: kept, and counted in the report.
        ds, report = validate_rows(pairs, file=str(out / "pairs.jsonl"), origin="on-policy", source="on",
                                   on_invalid={"empty_response": "keep"})
        # Written by write_jsonl, not Dataset.to_json: pandas would round the scores to 10 significant digits.
        write_jsonl(out / "pairs.jsonl", ds)
        _check_pairs(read_jsonl(out / "pairs.jsonl"), rows, values, out / "pairs.jsonl")
        return {**counts, "report": report.to_dict()}

    return store.run("pairs", compute, dataclasses.asdict(cfg), {"samples": samples, "scores": scores})


def _aligned(samples: Entry, scores: Entry) -> tuple[list[dict], list[list[float]]]:
    """The rows of ``samples.jsonl`` and, row by row, their scores from ``scores.jsonl``.

    Row i of one file belongs to row i of the other: a prompt set may repeat a prompt (same text, same id), so
    the id alone cannot say which occurrence a score list belongs to. Raises ValueError, naming both files and
    the first mismatching row, unless the files have the same number of rows, the same prompt id in each row and
    one score per sample."""
    samples_path, scores_path = samples.path / "samples.jsonl", scores.path / "scores.jsonl"
    rows, scored = read_jsonl(samples_path), read_jsonl(scores_path)
    where = f"{scores_path} does not align with {samples_path}"
    for i, (r, s) in enumerate(zip(rows, scored)):
        if s.get("prompt_id") != r["prompt_id"]:
            raise ValueError(f"{where}: row {i} has prompt_id {s.get('prompt_id')!r} in the scores but "
                             f"{r['prompt_id']!r} in the samples")
        if len(s["scores"]) != len(r["samples"]):
            raise ValueError(f"{where}: row {i} has {len(s['scores'])} scores for {len(r['samples'])} samples")
    if len(rows) != len(scored):
        raise ValueError(f"{where}: {len(scored)} score rows for {len(rows)} sample rows (first unmatched row: "
                         f"{min(len(rows), len(scored))})")
    return rows, [s["scores"] for s in scored]


def _check_pairs(pairs: list[dict], rows: list[dict], values: list[list[float]], path: Path) -> None:
    """The invariant of a pairs entry before it is committed: each pair is its own row's samples at its recorded
    ``chosen_index``/``rejected_index``, with those samples' scores (raises RuntimeError if not)."""
    for n, pair in enumerate(pairs):
        meta = json.loads(pair["metadata"])
        i, best, worst = meta["prompt_index"], meta["chosen_index"], meta["rejected_index"]
        row, texts = rows[i], [s["text"] for s in rows[i]["samples"]]
        problems = [
            meta["prompt_id"] != row["prompt_id"] and f"prompt_id {meta['prompt_id']!r} != {row['prompt_id']!r}",
            pair["prompt"] != [{"role": m["role"], "content": m["content"]} for m in row["prompt"]] and "prompt",
            pair["chosen"] != texts[best] and f"chosen text != sample {best}",
            pair["rejected"] != texts[worst] and f"rejected text != sample {worst}",
            pair["score_chosen"] != values[i][best] and f"score_chosen {pair['score_chosen']!r} != {values[i][best]!r}",
            pair["score_rejected"] != values[i][worst]
            and f"score_rejected {pair['score_rejected']!r} != {values[i][worst]!r}",
            meta["scores"] != values[i] and "metadata scores",
            not pair["score_chosen"] > pair["score_rejected"] and "score_chosen <= score_rejected",
        ]
        problems = [p for p in problems if p]
        if problems:
            raise RuntimeError(f"{path}: pair {n} does not match row {i} of its samples and scores "
                               f"({'; '.join(problems)}); the pairs stage is not committed")


def on_policy_pairs(world: World, cell: Cell, sampling: SamplingConfig | None = None,
                    progress: bool = True) -> dict[str, Entry]:
    """Run (or fetch) the three stages for a cell: its SFT policy on its dataset's prompts; ``sampling``
    overrides the profile's sampling config."""
    prof = world.profile
    prompts = world.training_prompts(cell)
    samples = sample_stage(world.store, world.sft_policy(cell), sampling or prof.sampling, prompts,
                           progress=progress)
    scores = score_stage(world.store, samples, world, progress=False)
    pairs = pairs_stage(world.store, samples, scores, prof.pairs)
    return {"samples": samples, "scores": scores, "pairs": pairs}


def load_pairs(pairs: Entry):
    """The on-policy pairs of a ``pairs`` entry as a normalized ``datasets.Dataset`` (empty samples kept)."""
    from simplemix.data import load_stored_pairs

    return load_stored_pairs(pairs.path / "pairs.jsonl", "on")


def load_samples(samples: Entry, scores: Entry | None = None) -> list[dict]:
    """One row per sample (prompt id, category, index, text, tokens, finish reason, reward if scored); scores
    align with samples by row (see :func:`pairs_stage`)."""
    if scores is None:
        rows, values = read_jsonl(samples.path / "samples.jsonl"), None
    else:
        rows, values = _aligned(samples, scores)
    out = []
    for i, r in enumerate(rows):
        for k, s in enumerate(r["samples"]):
            reward = values[i][k] if values is not None else None
            out.append({"prompt_id": r["prompt_id"], "category": r["category"], "index": k, **s, "reward": reward})
    return out


def plan(world: World, cell: Cell, sampling: SamplingConfig | None = None,
         shard_size: int = SHARD_SIZE) -> list[dict]:
    """A dry run of the sampling stage: its key, and how much of it is already in the store."""
    store = world.store
    prompts = world.training_prompts(cell)
    cfg = sampling or world.profile.sampling
    stage, config, inputs = _samples_request(world.sft_policy(cell), cfg, prompts)
    key = store.key_for(stage, config, inputs, default_code_version(sample_stage))
    total = len(_shards(len(prompts), shard_size))
    shard_dir = store.root / ".shards" / f"{stage}-{key}"
    done = total if store.get(stage, key) else len(list(shard_dir.glob("*.json"))) if shard_dir.exists() else 0
    return [{"stage": stage, "key": key, "cell": cell.id, "prompts": len(prompts),
             "samples": len(prompts) * cfg.num_samples, "shards": total, "shards_cached": done,
             "state": "cached" if done == total else f"{total - done} of {total} shards to compute"}]
