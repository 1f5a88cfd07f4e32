"""The miniature world: built through the run store, and served behind the :class:`simplemix.world.World` interface.

Every piece is a store stage keyed by the world's config and code, so the same seed gives the same bytes and a
second build is a cache hit: the tasks of each split, the tokenizer with two SFT policies of different strength
(the same run saved early and at the end: they play Tulu-3-8B-SFT and Llama-3.1-8B-Instruct), and the off-policy
data in the formats of the paper's two datasets (an UltraFeedback-like file of two responses with scalar scores,
a HelpSteer2-like file of two responses with five attribute scores) with the baseline's responses.
:class:`MiniatureWorld` resolves the ``miniature:`` names a profile uses to these pieces.
Owns everything the smoke world is; imports the miniature modules, config, store, data, sampling and world.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

from simplemix.miniature import generators, policy
from simplemix.config import ConfigError, DataConfig, ModelConfig
from simplemix.miniature.oracle import OracleScorer, judge
from simplemix.miniature.tasks import VERIFIABLE, Task, make_splits
from simplemix.sampling import Policy
from simplemix.store import Entry, RunStore
from simplemix.world import World as WorldBase

POLICY_NAME = "miniature:sft-policy"  # the stronger SFT policy
WEAK_POLICY_NAME = "miniature:sft-weak"  # the same SFT run, saved after policy.weak_sft_steps steps
ORACLE_NAME = "miniature:oracle"
DATASETS = {"miniature:ultrafeedback": "ultrafeedback.jsonl", "miniature:helpsteer2": "helpsteer2.jsonl"}
SPLITS = ("sft", "train", "eval", "train_hs2")


@dataclass(frozen=True)
class WorldConfig:
    """Sizes (prompts per category per split) and the seed of the miniature world."""

    seed: int = 0
    sft_prompts: int = 450
    train_prompts: int = 150  # the UltraFeedback-like dataset's prompts
    eval_prompts: int = 50
    train_hs2_prompts: int = 150  # the HelpSteer2-like dataset's own prompts
    policy: policy.PolicyConfig = field(default_factory=policy.PolicyConfig)


@dataclass(frozen=True)
class Built:
    """Handles to a built world: where its pieces are, and how to read them."""

    tasks_dir: Path
    policy_dir: Path
    pool_dir: Path
    entries: dict

    def tasks(self, split: str) -> list[Task]:
        lines = (self.tasks_dir / f"{split}.jsonl").read_text().splitlines()
        return [Task(d["category"], d["prompt"], d["meta"]) for d in map(json.loads, lines)]

    @property
    def weak_policy_dir(self) -> Path:
        return self.policy_dir / "weak"

    def off_policy_pairs(self):
        """The UltraFeedback-like pairs in the normalized preference schema (a ``datasets.Dataset``)."""
        from simplemix.data import load_preferences

        ds, _ = load_preferences("ultrafeedback_binarized", str(self.pool_dir / DATASETS["miniature:ultrafeedback"]),
                                 source="off")
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


def build_world(run_dir: str | Path, cfg: WorldConfig | None = None, progress: bool = True) -> Built:
    """Build (or fetch from the store) every piece of the world; a second or so on a hit, ~2 minutes cold.

    Without ``cfg`` the run directory's own world is used (the config it was last built with, recorded
    in ``miniature-world.json``), else the default; so ``miniature:*`` names resolve to one world per run.
    """
    run_dir = Path(run_dir)
    cfg = cfg or _world_config(run_dir)
    store = RunStore(run_dir)
    conf = dataclasses.asdict(cfg)
    sizes = {"sft": cfg.sft_prompts, "train": cfg.train_prompts, "eval": cfg.eval_prompts,
             "train_hs2": cfg.train_hs2_prompts}

    def make_tasks(out: Path) -> dict:
        splits = make_splits(sizes, cfg.seed)
        return {split: _write_jsonl(out / f"{split}.jsonl", (t.to_dict() for t in ts)) for split, ts in splits.items()}

    tasks_entry = store.run("miniature-tasks", make_tasks, {"sizes": sizes, "seed": cfg.seed})
    world = Built(tasks_entry.path, Path(), Path(), {})

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
        return policy.train_sft(tokenizer, demos, cfg.policy, out, progress=progress, weak_dir=out / "weak")

    policy_entry = store.run("miniature-policy", make_policy, conf, inputs={"tasks": tasks_entry})

    def make_pool(out: Path) -> dict:
        rng = random.Random(cfg.seed + 1)
        uf, uf_skipped = _ultrafeedback_like(world.tasks("train"), rng)
        hs2, hs2_skipped = _helpsteer2_like(world.tasks("train_hs2"), rng)
        baseline = [{"instruction": t.prompt, "output": generators.respond(generators.BASELINE, t, rng),
                     "generator": "baseline", "category": t.category} for t in world.tasks("eval")]
        return {"ultrafeedback_pairs": _write_jsonl(out / DATASETS["miniature:ultrafeedback"], uf),
                "ultrafeedback_skipped": uf_skipped, "helpsteer2_rows": _write_jsonl(
                    out / DATASETS["miniature:helpsteer2"], hs2), "helpsteer2_skipped": hs2_skipped,
                "baseline": _write_jsonl(out / "baseline.jsonl", baseline)}

    pool_entry = store.run("miniature-pool", make_pool, {"seed": cfg.seed}, inputs={"tasks": tasks_entry})
    tmp = run_dir / f".{WORLD_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(conf, sort_keys=True))
    os.replace(tmp, run_dir / WORLD_FILE)
    return Built(tasks_entry.path, policy_entry.path, pool_entry.path,
                 {"tasks": tasks_entry, "policy": policy_entry, "pool": pool_entry})


def _ultrafeedback_like(tasks: list[Task], rng: random.Random) -> tuple[list[dict], dict]:
    """Two responses of two different pool generators per prompt, the better by the oracle as chosen, in
    HuggingFaceH4/ultrafeedback_binarized's layout (whole conversations in chosen/rejected, scalar scores)."""
    rows, skipped = [], {"identical": 0, "tied": 0}
    for i, t in enumerate(tasks):
        a, b = rng.sample(generators.POOL, 2)  # two different generators, as in UltraFeedback
        ra, rb = generators.respond(a, t, rng), generators.respond(b, t, rng)
        sa, sb = judge(t, ra).reward, judge(t, rb).reward
        if ra == rb or sa == sb:  # no preference to learn; counted in the manifest
            skipped["identical" if ra == rb else "tied"] += 1
            continue
        (cw, cs, cm), (rw, rs, rm) = sorted([(ra, sa, a.name), (rb, sb, b.name)], key=lambda x: -x[1])
        chosen, rejected = (t.messages() + [{"role": "assistant", "content": x}] for x in (cw, rw))
        rows.append({"prompt": t.prompt, "chosen": chosen, "rejected": rejected, "messages": chosen,
                     "score_chosen": cs, "score_rejected": rs, "category": t.category, "task_index": i,
                     "chosen_model": cm, "rejected_model": rm})
    return rows, skipped


def _attributes(task: Task, response: str) -> dict[str, int]:
    """HelpSteer2's five 0-4 ratings of a response, as a rater would give them: helpfulness and correctness
    follow the oracle, coherence falls with filler, complexity and verbosity grow with length."""
    verdict = judge(task, response)
    fillers = sum(response.count(f) for f in generators.FILLERS)
    return {"helpfulness": max(0, min(4, round(2 + 2.5 * (verdict.reward - 0.6)))),
            "correctness": 4 if verdict.correct else (0 if task.category in VERIFIABLE else 2),
            "coherence": max(0, 4 - fillers), "complexity": min(4, len(response.split()) // 6),
            "verbosity": min(4, len(response) // 40)}


def _helpsteer2_like(tasks: list[Task], rng: random.Random) -> tuple[list[dict], dict]:
    """Two responses per prompt from one pool generator (HelpSteer2's come from one model family), one row per
    response with its five attribute ratings, in nvidia/HelpSteer2's layout; the loader binarizes them with the
    project's HelpSteer2 weighting."""
    rows, skipped = [], {"identical": 0}
    weights = [4, 2, 2, 3, 1]  # HelpSteer2's responses are mostly from capable models
    for t in tasks:
        style = rng.choices(generators.POOL, weights)[0]
        first, second = generators.respond(style, t, rng), generators.respond(style, t, rng)
        if first == second:
            skipped["identical"] += 1
            continue
        for text in (first, second):
            rows.append({"prompt": t.prompt, "response": text, **_attributes(t, text), "generator": style.name,
                         "category": t.category})
    return rows, skipped


def entry_summary(entries: dict[str, Entry]) -> list[dict]:
    """One row per world stage: key, whether it came from the store, wall time, and what it recorded."""
    return [{"stage": e.stage, "key": e.key, "cached": e.hit, "wall_s": e.manifest["wall_s"],
             "recorded": ", ".join(f"{k}={v}" for k, v in e.manifest["info"].items())} for e in entries.values()]


class MiniatureWorld(WorldBase):
    """The ``smoke`` profile's world: ``miniature:`` models and datasets, the oracle as reward model and judge,
    the held-out split as the evaluation prompts, the baseline generator as the baseline."""

    kind = "miniature"
    # the four categories stand in for the paper's four (WildChat's math, coding, creative writing, recommendation)
    SHOWN = {"math": "Math", "coding": "Coding", "creative": "Creative writing", "recommendation": "Recommendation"}

    @functools.cached_property
    def built(self) -> Built:
        return build_world(self.run_dir, progress=False)

    @functools.cached_property
    def _tasks(self) -> dict[str, Task]:
        return {t.prompt: t for split in SPLITS for t in self.built.tasks(split)}

    def ready(self) -> bool:
        return (self.run_dir / WORLD_FILE).exists()

    def expected_prompts(self, data: DataConfig, known: dict) -> int:
        if self.ready():
            return super().expected_prompts(data, known)
        cfg = WorldConfig()
        return 4 * (cfg.train_prompts if data.path == "miniature:ultrafeedback" else cfg.train_hs2_prompts)

    def expected_eval_prompts(self, default: int) -> int:
        return len(self.baseline()) if self.ready() else 4 * WorldConfig().eval_prompts

    def policy(self, model: ModelConfig) -> Policy:
        plain = ModelConfig(**{f.name: getattr(model, f.name) for f in dataclasses.fields(ModelConfig)})
        name = model.name_or_path
        if not name.startswith("miniature:"):
            return Policy.of(plain, getattr(model, "label", ""))
        dirs = {POLICY_NAME: self.built.policy_dir, WEAK_POLICY_NAME: self.built.weak_policy_dir}
        if name not in dirs:
            raise ConfigError(f"unknown miniature model {name!r}; the miniature world has {sorted(dirs)}")
        loadable = dataclasses.replace(plain, name_or_path=str(dirs[name]))
        key = {"miniature": name, "world": self.built.entries["policy"].key, "torch_dtype": model.torch_dtype}
        return Policy(loadable, key, getattr(model, "label", "") or name)

    def dataset(self, data: DataConfig) -> tuple[str, dict]:
        if data.path not in DATASETS:
            raise ConfigError(f"unknown miniature dataset {data.path!r}; the miniature world has {sorted(DATASETS)}")
        identity = {k: v for k, v in dataclasses.asdict(data).items() if k not in ("label", "paper_name", "path")}
        return str(self.built.pool_dir / DATASETS[data.path]), identity | {
            "miniature": data.path, "pool": self.built.entries["pool"].key}

    def reward(self):
        name = self.profile.reward.model.name_or_path
        if name != ORACLE_NAME:
            raise ConfigError(f"reward.model: the miniature world's reward model is {ORACLE_NAME!r}, not {name!r}")
        return OracleScorer(self._tasks)

    def reward_key(self) -> dict:
        return {"oracle": ORACLE_NAME, "tasks": self.built.entries["tasks"].key}

    def oracle_judge(self):
        from simplemix.evaluation import ScoreJudge

        return ScoreJudge(OracleScorer(self._tasks), name="miniature oracle")

    def judge_key(self) -> dict:
        return {"judge": self.profile.evaluation.judge, "reward": self.reward_key()}

    def baseline(self) -> list[dict]:
        # the held-out split can draw an open-ended prompt twice; tables are keyed by instruction: keep the first
        first: dict[str, dict] = {}
        for r in self.built.baseline_responses():
            first.setdefault(r["instruction"], r | {"dataset": r["category"]})
        return list(first.values())

    def eval_key(self) -> dict:
        return {"prompts": "miniature-eval", "pool": self.built.entries["pool"].key,
                "num_prompts": self.profile.evaluation.num_prompts}

    def categories(self, instructions: list[str]) -> list[str]:
        return [self._tasks[i].category for i in instructions]

    def prompt_categories(self, messages: list[list[dict]]) -> list[str | None]:
        return [self._tasks[m[-1]["content"]].category for m in messages]

    def shown_categories(self) -> dict[str, str]:
        return dict(self.SHOWN)

    @functools.cache
    def difficulty(self):
        from simplemix.evaluation import derive_difficulty

        instructions = [b["instruction"] for b in self.baseline()]
        return (derive_difficulty(self.pool_annotations(), instructions=instructions),
                "derived from the miniature pool's generators (oracle judge)")

    def pool_annotations(self, seed: int = 0):
        """Every pool generator's answer to every held-out prompt, judged by the oracle against the baseline
        (preference 1 + sigmoid of the reward gap): the counterpart of AlpacaEval's 50 bundled generators."""
        import math

        import pandas as pd

        rng, rows = random.Random(seed), []
        for style in generators.POOL:
            for index, base in enumerate(self.baseline()):
                task = self._tasks[base["instruction"]]
                answer = generators.respond(style, task, rng)
                gap = judge(task, answer).reward - judge(task, base["output"]).reward
                rows.append({"generator_2": style.name, "instruction_index": index, "instruction": base["instruction"],
                             "len_1": len(base["output"]), "len_2": len(answer),
                             "preference": 1 + 1 / (1 + math.exp(-gap))})
        return pd.DataFrame(rows)
