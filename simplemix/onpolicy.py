"""The on-policy data engine: N samples per prompt from the SFT policy, reward scores, best/worst pairs.

Three run-store stages, each sharded so that a kill loses at most the shard in flight and a rerun
continues from there: ``samples`` (policy + sampling config), ``scores`` (+ reward model) and
``pairs`` (+ pair rules). Every notebook that needs on-policy pairs of the same configuration gets
the same entries, computed once.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

from simplemix.config import ModelConfig, PairsConfig, Profile, RewardConfig, SamplingConfig
from simplemix.sampling import load_backend, sample_prompts, sample_settings
from simplemix.store import Entry, RunStore, default_code_version, stable_hash

SHARD_SIZE = 64  # prompts per shard: small enough to lose little to a kill, large enough to batch well


@dataclass(frozen=True)
class PromptSet:
    """The prompts on-policy data is sampled for, with stable ids and (where known) categories."""

    ids: list[str]
    messages: list[list[dict]]
    categories: list[str | None]

    @property
    def key(self) -> str:
        return stable_hash(self.ids)

    def __len__(self) -> int:
        return len(self.ids)


def prompt_set(prof: Profile, run_dir: str | Path) -> PromptSet:
    """The training prompts of a profile: the miniature world's ``train`` split, or the unique prompts of
    the profile's off-policy datasets (so on- and off-policy pairs share prompts, as in the paper)."""
    if prof.datasets[0].format == "miniature":
        from simplemix.miniature.world import build_world

        tasks = build_world(run_dir, progress=False).tasks("train")
        messages = [t.messages() for t in tasks]
        return PromptSet([stable_hash(m) for m in messages], messages, [t.category for t in tasks])
    from simplemix.data import load_preferences

    seen: dict[str, list[dict]] = {}
    for d in prof.datasets:
        ds, _ = load_preferences(d.format, d.path, split=d.split, max_rows=d.max_rows, on_invalid=d.on_invalid,
                                 helpsteer2_weights=d.helpsteer2_weights)
        for pid, prompt in zip(ds["prompt_id"], ds["prompt"]):
            seen.setdefault(pid, prompt)
    return PromptSet(list(seen), list(seen.values()), [None] * len(seen))


def _shards(n: int, size: int) -> list[range]:
    return [range(i, min(i + size, n)) for i in range(0, n, size)]


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines()]


def _world_inputs(name: str, run_dir: str | Path) -> dict:
    """A ``miniature:`` model is named, not versioned: key its stages on the world entries behind the name."""
    if not name.startswith("miniature:"):
        return {}
    from simplemix.miniature.world import build_world

    entries = build_world(run_dir, progress=False).entries
    return {"world_policy": entries["policy"], "world_tasks": entries["tasks"]}


def _samples_request(policy: ModelConfig, cfg: SamplingConfig, prompts: PromptSet, run_dir: str | Path):
    config = {"policy": dataclasses.asdict(policy), "sampling": dataclasses.asdict(cfg)}
    return "samples", config, {"prompts": prompts.key, **_world_inputs(policy.name_or_path, run_dir)}


def sample_stage(store: RunStore, policy: ModelConfig, cfg: SamplingConfig, prompts: PromptSet,
                 run_dir: str | Path, shard_size: int = SHARD_SIZE, progress: bool = True) -> Entry:
    """``samples.jsonl``: per prompt its id, messages, N samples (text, tokens, finish reason) and the
    sampling settings they were drawn with."""
    stage, config, inputs = _samples_request(policy, cfg, prompts, run_dir)

    def compute(out: Path, shards) -> dict:
        from tqdm import tqdm

        backend = None
        rows, start, settings = [], time.monotonic(), sample_settings(cfg)
        bar = tqdm(total=len(prompts), desc="samples", unit="prompt", disable=not progress)
        for i, part in enumerate(_shards(len(prompts), shard_size)):
            def draw(part=part, i=i):
                nonlocal backend
                backend = backend or load_backend(cfg, policy, run_dir)
                shard_cfg = dataclasses.replace(cfg, seed=cfg.seed + 100_003 * i)  # independent noise per shard
                drawn = sample_prompts(backend, [prompts.messages[j] for j in part], shard_cfg)
                return [[dataclasses.asdict(s) for s in group] for group in drawn]

            for j, group in zip(part, shards.get_or_compute(i, draw)):
                rows.append({"prompt_id": prompts.ids[j], "prompt": prompts.messages[j],
                             "category": prompts.categories[j], "samples": group, "settings": settings})
            bar.update(len(part))
            bar.set_postfix_str(f"{len(rows) * cfg.num_samples / (time.monotonic() - start):.1f} samples/s")
        bar.close()
        _write_jsonl(out / "samples.jsonl", rows)
        finished = [s["finish_reason"] for r in rows for s in r["samples"]]
        return {"prompts": len(rows), "samples": len(finished), "truncated": finished.count("length"),
                "settings": settings}

    return store.run(stage, compute, config, inputs, code_version=default_code_version(sample_stage))


def score_stage(store: RunStore, samples: Entry, reward: RewardConfig, run_dir: str | Path,
                shard_size: int = SHARD_SIZE, progress: bool = True) -> Entry:
    """``scores.jsonl``: per prompt the reward of each of its samples, by the configured reward model."""
    from simplemix.reward import load_reward_model

    rows = read_jsonl(samples.path / "samples.jsonl")

    def compute(out: Path, shards) -> dict:
        scorer = None
        scored = []
        for i, part in enumerate(_shards(len(rows), shard_size)):
            def score(part=part):
                nonlocal scorer
                scorer = scorer or load_reward_model(reward, run_dir)
                flat = [(rows[j]["prompt"], s["text"]) for j in part for s in rows[j]["samples"]]
                values = scorer.score([p for p, _ in flat], [t for _, t in flat], progress=progress)
                it = iter(values)
                return [[next(it) for _ in rows[j]["samples"]] for j in part]

            for j, values in zip(part, shards.get_or_compute(i, score)):
                scored.append({"prompt_id": rows[j]["prompt_id"], "scores": values})
        _write_jsonl(out / "scores.jsonl", scored)
        flat = [v for r in scored for v in r["scores"]]
        return {"prompts": len(scored), "samples": len(flat), "mean_reward": sum(flat) / max(1, len(flat))}

    config = {"reward": dataclasses.asdict(reward)}
    inputs = {"samples": samples, **_world_inputs(reward.model.name_or_path, run_dir)}
    return store.run("scores", compute, config, inputs, code_version=default_code_version(score_stage))


def pairs_stage(store: RunStore, samples: Entry, scores: Entry, cfg: PairsConfig) -> Entry:
    """``pairs.jsonl``: best/worst pairs in the normalized preference schema, with the counts of prompts that
    gave none (all samples tied, below the margin, identical texts)."""
    from simplemix.data import validate_rows
    from simplemix.reward import build_pairs

    def compute(out: Path) -> dict:
        rows = read_jsonl(samples.path / "samples.jsonl")
        values = {r["prompt_id"]: r["scores"] for r in read_jsonl(scores.path / "scores.jsonl")}
        settings = samples.manifest["info"]["settings"]
        pairs, counts = build_pairs([r["prompt"] for r in rows], [[s["text"] for s in r["samples"]] for r in rows],
                                    [values[r["prompt_id"]] for r in rows], min_margin=cfg.min_margin,
                                    prompt_ids=[r["prompt_id"] for r in rows], sampler=settings)
        # An empty sample is a real (bad) response of the policy: kept, and counted in the report.
        ds, report = validate_rows(pairs, file=str(out / "pairs.jsonl"), origin="on-policy", source="on",
                                   on_invalid={"empty_response": "keep"})
        ds.to_json(out / "pairs.jsonl", lines=True, force_ascii=False)
        return {**counts, "report": report.to_dict()}

    return store.run("pairs", compute, dataclasses.asdict(cfg), {"samples": samples, "scores": scores},
                     code_version=default_code_version(pairs_stage))


def on_policy_pairs(prof: Profile, run_dir: str | Path, sampling: SamplingConfig | None = None,
                    policy: ModelConfig | None = None, progress: bool = True) -> dict[str, Entry]:
    """Run (or fetch) the three stages for a profile; ``sampling`` overrides the profile's sampling config."""
    store = RunStore(run_dir)
    prompts = prompt_set(prof, run_dir)
    policy = policy or prof.policies[0]
    samples = sample_stage(store, policy, sampling or prof.sampling, prompts, run_dir, progress=progress)
    scores = score_stage(store, samples, prof.reward, run_dir, progress=False)
    pairs = pairs_stage(store, samples, scores, prof.pairs)
    return {"samples": samples, "scores": scores, "pairs": pairs}


def load_pairs(pairs: Entry):
    """The on-policy pairs of a ``pairs`` entry as a normalized ``datasets.Dataset`` (empty samples kept)."""
    from simplemix.data import load_preferences

    ds, _ = load_preferences("local", pairs.path / "pairs.jsonl", source="on", on_invalid={"empty_response": "keep"})
    return ds


def load_samples(samples: Entry, scores: Entry | None = None) -> list[dict]:
    """One row per sample (prompt id, category, index, text, tokens, finish reason, reward if scored)."""
    values = {r["prompt_id"]: r["scores"] for r in read_jsonl(scores.path / "scores.jsonl")} if scores else {}
    out = []
    for r in read_jsonl(samples.path / "samples.jsonl"):
        for k, s in enumerate(r["samples"]):
            reward = values[r["prompt_id"]][k] if values else None
            out.append({"prompt_id": r["prompt_id"], "category": r["category"], "index": k, **s, "reward": reward})
    return out


def plan(prof: Profile, run_dir: str | Path, sampling: SamplingConfig | None = None,
         shard_size: int = SHARD_SIZE) -> list[dict]:
    """A dry run of the sampling stage: its key, and how much of it is already in the store."""
    store = RunStore(run_dir)
    prompts = prompt_set(prof, run_dir)
    cfg = sampling or prof.sampling
    stage, config, inputs = _samples_request(prof.policies[0], cfg, prompts, run_dir)
    key = store.key_for(stage, config, inputs, default_code_version(sample_stage))
    total = len(_shards(len(prompts), shard_size))
    shard_dir = Path(run_dir) / ".shards" / f"{stage}-{key}"
    done = total if store.get(stage, key) else len(list(shard_dir.glob("*.json"))) if shard_dir.exists() else 0
    return [{"stage": stage, "key": key, "prompts": len(prompts), "samples": len(prompts) * cfg.num_samples,
             "shards": total, "shards_cached": done, "state": "cached" if done == total else
             f"{total - done} of {total} shards to compute"}]
