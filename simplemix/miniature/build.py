"""Build the miniature world through the run store: tasks, tokenizer and two SFT policies, off-policy data.

Every piece is a store stage keyed by the world's config and code, so the same seed gives the same bytes and a
second build is a cache hit: the tasks of each split, the tokenizer with two SFT policies of different strength
(the same run saved early and at the end: they play Tulu-3-8B-SFT and Llama-3.1-8B-Instruct), and the off-policy
data in the layouts of the paper's two datasets (an UltraFeedback-like file of two responses with scalar scores,
a HelpSteer2-like file of two responses with five attribute ratings) with the baseline's responses.
Owns the world's stages; imports the other miniature modules, store and data, so that an edit to the
rest of the package never rebuilds the world.
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
from simplemix.miniature.tasks import VERIFIABLE, Task, make_splits
from simplemix.data import read_jsonl, write_jsonl
from simplemix.store import Entry, RunStore, default_code_version

POLICY_NAME = "miniature:sft-policy"  # the stronger SFT policy
WEAK_POLICY_NAME = "miniature:sft-weak"  # the same SFT run, saved after policy.weak_sft_steps steps
ORACLE_NAME = "miniature:oracle"
DATASETS = {"miniature:ultrafeedback": "ultrafeedback.jsonl", "miniature:helpsteer2": "helpsteer2.jsonl"}
SPLITS = ("sft", "train", "dev", "eval", "train_hs2")


@dataclass(frozen=True)
class WorldConfig:
    """Sizes (prompts per category per split) and the seed of the miniature world."""

    seed: int = 0
    sft_prompts: int = 400
    train_prompts: int = 100  # the UltraFeedback-like dataset's prompts
    dev_prompts: int = 100  # held out for choosing training settings (the dev sweep), never evaluated on
    eval_prompts: int = 200  # the evaluation prompts: unique, unseen by SFT and by either dataset
    train_hs2_prompts: int = 100  # the HelpSteer2-like dataset's own prompts
    sft_verifiable_demos: int = 3  # demonstrations per verifiable SFT prompt (the skills take more examples)
    policy: policy.PolicyConfig = field(default_factory=policy.PolicyConfig)


@dataclass(frozen=True)
class Built:
    """Handles to a built world: where its pieces are, and how to read them."""

    tasks_dir: Path
    policy_dir: Path
    pool_dir: Path
    entries: dict
    baseline_dir: Path | None = None

    def tasks(self, split: str) -> list[Task]:
        return [Task(d["category"], d["prompt"], d["meta"]) for d in read_jsonl(self.tasks_dir / f"{split}.jsonl")]

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
        return read_jsonl(self.baseline_dir / "baseline.jsonl")


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


def _requests(cfg: WorldConfig, control: bool) -> dict[str, dict]:
    """Each world stage's config: the tasks by sizes and seed, the policy by the whole policy config, the pool by
    seed and whether it is the control pool, the baseline by seed; so the control world shares tasks and policy."""
    return {"miniature-tasks": {"sizes": _sizes(cfg), "seed": cfg.seed},
            "miniature-policy": dataclasses.asdict(cfg),
            "miniature-pool": {"seed": cfg.seed, "control": control},
            "miniature-baseline": {"seed": cfg.seed}}


def stored_world(run_dir: str | Path, control: bool = False) -> Built | None:
    """The run directory's world if all of it is already in the store, else None; computes nothing."""
    run_dir = Path(run_dir)
    if not (run_dir / WORLD_FILE).exists():
        return None
    cfg, store, code = _world_config(run_dir), RunStore(run_dir), default_code_version(__name__)
    requests = _requests(cfg, control)
    tasks = store.get("miniature-tasks", store.key_for("miniature-tasks", requests["miniature-tasks"], None, code))
    if tasks is None:
        return None
    entries = {"tasks": tasks}
    for stage in ("miniature-policy", "miniature-pool", "miniature-baseline"):
        inputs = {"tasks": tasks, **({"policy": entries["policy"]} if stage == "miniature-pool" and control else {})}
        entry = store.get(stage, store.key_for(stage, requests[stage], inputs, code))
        if entry is None:
            return None
        entries[stage.split("-")[1]] = entry
    return Built(tasks.path, entries["policy"].path, entries["pool"].path, entries, entries["baseline"].path)


def _sizes(cfg: WorldConfig) -> dict[str, int]:
    return {"sft": cfg.sft_prompts, "train": cfg.train_prompts, "dev": cfg.dev_prompts, "eval": cfg.eval_prompts,
            "train_hs2": cfg.train_hs2_prompts}


def build_world(run_dir: str | Path, cfg: WorldConfig | None = None, progress: bool = True,
                control: bool = False) -> Built:
    """Build (or fetch from the store) every piece of the world; a second or so on a hit, a minute or two cold.

    Without ``cfg`` the run directory's own world is used (the config it was last built with, recorded
    in ``miniature-world.json``), else the default; so ``miniature:*`` names resolve to one world per run.
    ``control`` builds the control world's pool instead (same tasks, policy and baseline).
    """
    run_dir = Path(run_dir)
    cfg = cfg or _world_config(run_dir)
    store = RunStore(run_dir)
    requests = _requests(cfg, control)
    pool_styles = generators.CONTROL_POOL if control else generators.POOL

    def make_tasks(out: Path) -> dict:
        splits = make_splits(requests["miniature-tasks"]["sizes"], cfg.seed)
        return {split: write_jsonl(out / f"{split}.jsonl", (t.to_dict() for t in ts)) for split, ts in splits.items()}

    tasks_entry = store.run("miniature-tasks", make_tasks, requests["miniature-tasks"])
    world = Built(tasks_entry.path, Path(), Path(), {})

    def make_policy(out: Path) -> dict:
        from simplemix.miniature.policy import single_threaded

        rng = random.Random(cfg.seed)
        names, weights = list(generators.DEMONSTRATOR_WEIGHTS), list(generators.DEMONSTRATOR_WEIGHTS.values())
        sft = world.tasks("sft")
        demos = [(t.messages(), generators.respond(generators.DEMONSTRATORS[rng.choices(names, weights)[0]], t, rng))
                 for t in sft for _ in range(cfg.sft_verifiable_demos if t.category in VERIFIABLE else 1)]
        # The tokenizer sees every style, so off-policy text is as representable as the policy's own.
        corpus = [t.prompt for t in sft] + [r for _, r in demos]
        corpus += [generators.respond(s, t, rng) for s in generators.STYLES.values() for t in sft]
        with single_threaded():
            tokenizer = policy.train_tokenizer(corpus, cfg.policy.vocab_size, out)
            return policy.train_sft(tokenizer, demos, cfg.policy, out, progress=progress, weak_dir=out / "weak")

    policy_entry = store.run("miniature-policy", make_policy, requests["miniature-policy"],
                             inputs={"tasks": tasks_entry})

    def make_pool(out: Path) -> dict:
        rng = random.Random(cfg.seed + 1)
        own = _own_errors(world.tasks("train") + world.tasks("train_hs2"), policy_entry.path, cfg.seed) \
            if control else None
        uf, uf_skipped = _ultrafeedback_like(world.tasks("train"), rng, pool_styles, own)
        hs2, hs2_skipped = _helpsteer2_like(world.tasks("train_hs2"), rng, pool_styles, own)
        return {"ultrafeedback_pairs": write_jsonl(out / DATASETS["miniature:ultrafeedback"], uf),
                "ultrafeedback_skipped": uf_skipped, "helpsteer2_rows": write_jsonl(
                    out / DATASETS["miniature:helpsteer2"], hs2), "helpsteer2_skipped": hs2_skipped,
                "generators": [s.name for s in pool_styles], "control": control}

    def make_baseline(out: Path) -> dict:
        rng = random.Random(cfg.seed + 2)
        baseline = [{"instruction": t.prompt, "output": generators.respond(generators.BASELINE, t, rng),
                     "generator": "baseline", "category": t.category} for t in world.tasks("eval")]
        return {"baseline": write_jsonl(out / "baseline.jsonl", baseline)}

    pool_inputs = {"tasks": tasks_entry, **({"policy": policy_entry} if control else {})}
    pool_entry = store.run("miniature-pool", make_pool, requests["miniature-pool"], inputs=pool_inputs)
    baseline_entry = store.run("miniature-baseline", make_baseline, requests["miniature-baseline"],
                               inputs={"tasks": tasks_entry})
    tmp = run_dir / f".{WORLD_FILE}.{os.getpid()}"
    tmp.write_text(json.dumps(dataclasses.asdict(cfg), sort_keys=True))
    os.replace(tmp, run_dir / WORLD_FILE)
    entries = {"tasks": tasks_entry, "policy": policy_entry, "pool": pool_entry, "baseline": baseline_entry}
    return Built(tasks_entry.path, policy_entry.path, pool_entry.path, entries, baseline_entry.path)


REDRAWS = 20  # a generator answers again when its two responses tie: every prompt keeps a pair, in both worlds


def _ultrafeedback_like(tasks: list[Task], rng: random.Random, styles, own_errors=None) -> tuple[list[dict], dict]:
    """Two responses of two different pool generators per prompt, the better by the oracle as chosen, in
    HuggingFaceH4/ultrafeedback_binarized's layout (whole conversations in chosen/rejected, scalar scores). A tie
    or an identical text is redrawn (so the control world's prompts are the same), and skipped if it persists."""
    rows, skipped = [], {"identical": 0, "tied": 0}
    for i, t in enumerate(tasks):
        a, b = rng.sample(styles, 2)  # two different generators, as in UltraFeedback
        ra = generators.respond(a, t, rng, own_errors)
        for _ in range(REDRAWS):
            rb = generators.respond(b, t, rng, own_errors)
            sa, sb = judge(t, ra).reward, judge(t, rb).reward
            if ra != rb and sa != sb:
                break
        else:  # no preference to learn; counted in the manifest
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


def _helpsteer2_like(tasks: list[Task], rng: random.Random, styles, own_errors=None) -> tuple[list[dict], dict]:
    """Two responses per prompt from one pool generator (HelpSteer2's come from one model family), one row per
    response with its five attribute ratings, in nvidia/HelpSteer2's layout; the loader binarizes them with the
    project's HelpSteer2 weighting. A second response that ties the first (text, weighted rating or oracle) is
    redrawn, and the prompt skipped if it persists."""
    from simplemix.config import HELPSTEER2_WEIGHTS

    def rating(text: str) -> float:
        attributes = _attributes(t, text)
        return sum(w * attributes[a] for a, w in HELPSTEER2_WEIGHTS.items())

    rows, skipped = [], {"identical": 0}
    weights = [4, 2, 2, 3, 1]  # HelpSteer2's responses are mostly from capable models
    for t in tasks:
        style = rng.choices(styles, weights)[0]
        first = generators.respond(style, t, rng, own_errors)
        for _ in range(REDRAWS):
            second = generators.respond(style, t, rng, own_errors)
            if (second != first and abs(rating(first) - rating(second)) > 1e-9
                    and judge(t, first).reward != judge(t, second).reward):
                break
        else:
            skipped["identical"] += 1
            continue
        for text in (first, second):
            rows.append({"prompt": t.prompt, "response": text, **_attributes(t, text), "generator": style.name,
                         "category": t.category})
    return rows, skipped


def _own_errors(tasks: list[Task], policy_dir: Path, seed: int) -> dict[str, list[str]]:
    """Prompt -> the wrong answers among the (stronger) SFT policy's samples for its verifiable tasks: the mistakes
    the control world's pool makes, so that its off-policy negatives are the policy's own."""
    from simplemix.miniature.oracle import extract_answer

    verifiable = [t for t in tasks if t.category in VERIFIABLE]
    with policy.single_threaded():
        drawn = policy.sample(policy_dir, [t.messages() for t in verifiable], n=4, temperature=0.7, top_p=0.9,
                              max_new_tokens=48, seed=seed)
    own = {}
    for t, texts in zip(verifiable, drawn):
        wrong = {extract_answer(t.category, x) for x in texts} - {t.meta["answer"], None}
        own[t.prompt] = sorted(wrong)
    return own


def entry_summary(entries: dict[str, Entry]) -> list[dict]:
    """One row per world stage: key, whether it came from the store, wall time, and what it recorded."""
    return [{"stage": e.stage, "key": e.key, "cached": e.hit, "wall_s": e.manifest["wall_s"],
             "recorded": ", ".join(f"{k}={v}" for k, v in e.manifest["info"].items())} for e in entries.values()]


