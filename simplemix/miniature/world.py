"""Build the miniature world through the run store: tasks, tokenizer + SFT policy, off-policy pool.

Every piece is a store stage keyed by the world's config, so the same seed gives the same bytes
and a second build is a cache hit.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from simplemix.miniature import generators, policy
from simplemix.miniature.oracle import judge
from simplemix.miniature.tasks import Task, make_splits
from simplemix.store import Entry, RunStore

POLICY_NAME = "miniature:sft-policy"
ORACLE_NAME = "miniature:oracle"
POOL_NAME = "miniature:off-policy-pool"
CODE_VERSION = "1"  # bump when the world's generators, oracle or training change meaning


@dataclass(frozen=True)
class WorldConfig:
    """Sizes (prompts per category per split) and the seed of the miniature world."""

    seed: int = 0
    sft_prompts: int = 450
    train_prompts: int = 150
    eval_prompts: int = 50
    policy: policy.PolicyConfig = field(default_factory=policy.PolicyConfig)


@dataclass(frozen=True)
class World:
    """Handles to a built world: where its pieces are, and how to read them."""

    tasks_dir: Path
    policy_dir: Path
    pool_dir: Path
    entries: dict

    def tasks(self, split: str) -> list[Task]:
        lines = (self.tasks_dir / f"{split}.jsonl").read_text().splitlines()
        return [Task(d["category"], d["prompt"], d["meta"]) for d in map(json.loads, lines)]

    def off_policy_pairs(self):
        """The pool's pairs in the normalized preference schema (a ``datasets.Dataset``)."""
        from simplemix.data import load_preferences

        ds, _ = load_preferences("local", str(self.pool_dir / "pairs.jsonl"), source="off")
        return ds

    def baseline_responses(self) -> list[dict]:
        return [json.loads(x) for x in (self.pool_dir / "baseline.jsonl").read_text().splitlines()]


def _write_jsonl(path: Path, rows) -> int:
    rows = list(rows)
    path.write_text("".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows))
    return len(rows)


WORLD_FILE = "miniature-world.json"  # the config of the world a run directory uses


def _world_config(run_dir: Path) -> WorldConfig:
    path = run_dir / WORLD_FILE
    if not path.exists():
        return WorldConfig()
    data = json.loads(path.read_text())
    try:
        return WorldConfig(**{**data, "policy": policy.PolicyConfig(**data["policy"])})
    except TypeError:  # recorded by an older version whose config had other fields: use today's default
        return WorldConfig()


def build_world(run_dir: str | Path, cfg: WorldConfig | None = None, progress: bool = True) -> World:
    """Build (or fetch from the store) every piece of the world; a second or so on a hit, ~2 minutes cold.

    Without ``cfg`` the run directory's own world is used (the config it was last built with, recorded
    in ``miniature-world.json``), else the default; so ``miniature:*`` names resolve to one world per run.
    """
    run_dir = Path(run_dir)
    cfg = cfg or _world_config(run_dir)
    store = RunStore(run_dir)
    conf = dataclasses.asdict(cfg)
    sizes = {"sft": cfg.sft_prompts, "train": cfg.train_prompts, "eval": cfg.eval_prompts}

    def make_tasks(out: Path) -> dict:
        splits = make_splits(sizes, cfg.seed)
        return {split: _write_jsonl(out / f"{split}.jsonl", (t.to_dict() for t in ts)) for split, ts in splits.items()}

    tasks_entry = store.run("miniature-tasks", make_tasks, {"sizes": sizes, "seed": cfg.seed},
                            code_version=CODE_VERSION)
    world = World(tasks_entry.path, Path(), Path(), {})

    def make_policy(out: Path) -> dict:
        rng = random.Random(cfg.seed)
        names, weights = list(generators.DEMONSTRATORS), list(generators.DEMONSTRATORS.values())
        sft = world.tasks("sft")
        demos = [(t.messages(), generators.respond(generators.STYLES[rng.choices(names, weights)[0]], t, rng))
                 for t in sft]
        # The tokenizer sees every style, so off-policy text is as representable as the policy's own.
        corpus = [t.prompt for t in sft] + [r for _, r in demos]
        corpus += [generators.respond(s, t, rng) for s in generators.POOL + (generators.BASELINE,) for t in sft]
        tokenizer = policy.train_tokenizer(corpus, cfg.policy.vocab_size, out)
        return policy.train_sft(tokenizer, demos, cfg.policy, out, progress=progress)

    policy_entry = store.run("miniature-policy", make_policy, conf, inputs={"tasks": tasks_entry},
                             code_version=CODE_VERSION)

    def make_pool(out: Path) -> dict:
        rng = random.Random(cfg.seed + 1)
        pairs, skipped = [], {"identical": 0, "tied": 0}
        for i, t in enumerate(world.tasks("train")):
            a, b = rng.sample(generators.POOL, 2)  # two different generators, as in UltraFeedback
            ra, rb = generators.respond(a, t, rng), generators.respond(b, t, rng)
            sa, sb = judge(t, ra).reward, judge(t, rb).reward
            if ra == rb or sa == sb:  # no preference to learn; counted in the manifest
                skipped["identical" if ra == rb else "tied"] += 1
                continue
            (cw, cs, cm), (rw, rs, rm) = sorted([(ra, sa, a.name), (rb, sb, b.name)], key=lambda x: -x[1])
            pairs.append({"prompt": t.messages(), "chosen": cw, "rejected": rw, "score_chosen": cs,
                          "score_rejected": rs, "metadata": json.dumps(
                              {"category": t.category, "task_index": i, "chosen_model": cm, "rejected_model": rm})})
        baseline = [{"instruction": t.prompt, "output": generators.respond(generators.BASELINE, t, rng),
                     "generator": "baseline", "category": t.category} for t in world.tasks("eval")]
        return {"pairs": _write_jsonl(out / "pairs.jsonl", pairs), "skipped_pairs": skipped,
                "baseline": _write_jsonl(out / "baseline.jsonl", baseline)}

    pool_entry = store.run("miniature-pool", make_pool, {"seed": cfg.seed}, inputs={"tasks": tasks_entry},
                           code_version=CODE_VERSION)
    tmp = run_dir / f".{WORLD_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(conf, sort_keys=True))
    os.replace(tmp, run_dir / WORLD_FILE)
    return World(tasks_entry.path, policy_entry.path, pool_entry.path,
                 {"tasks": tasks_entry, "policy": policy_entry, "pool": pool_entry})


def entry_summary(entries: dict[str, Entry]) -> list[dict]:
    """One row per world stage: key, whether it came from the store, wall time, and what it recorded."""
    return [{"stage": e.stage, "key": e.key, "cached": e.hit, "wall_s": e.manifest["wall_s"],
             "recorded": ", ".join(f"{k}={v}" for k, v in e.manifest["info"].items())} for e in entries.values()]
