"""The miniature world behind the :class:`simplemix.world.World` interface: the ``smoke`` profile's ingredients.

:class:`MiniatureWorld` resolves the ``miniature:`` names a profile uses (two SFT policies, the UltraFeedback-like
and HelpSteer2-like datasets, the oracle) to the pieces :mod:`simplemix.miniature.build` stores, and gives the
held-out split as the evaluation prompts with the baseline generator's answers. Owns MiniatureWorld; imports the
other miniature modules, config, store, sampling, world and (lazily) evaluation.
"""

from __future__ import annotations

import dataclasses
import functools
import random

from simplemix.config import ConfigError, DataConfig, ModelConfig
from simplemix.miniature import generators
from simplemix.miniature.build import (DATASETS, ORACLE_NAME, POLICY_NAME, SPLITS, WEAK_POLICY_NAME, WORLD_FILE,
                                       Built, WorldConfig, build_world, entry_summary, stored_world)
from simplemix.miniature.oracle import OracleScorer, judge
from simplemix.miniature.tasks import Task
from simplemix.sampling import Policy, plain_model
from simplemix.store import default_code_version
from simplemix.world import World as WorldBase

__all__ = ["DATASETS", "ORACLE_NAME", "POLICY_NAME", "SPLITS", "WEAK_POLICY_NAME", "WORLD_FILE", "Built",
           "MiniatureControlWorld", "MiniatureWorld", "WorldConfig", "build_world", "entry_summary", "stored_world"]


class MiniatureWorld(WorldBase):
    """The ``smoke`` profile's world: ``miniature:`` models and datasets, the oracle as reward model and judge,
    the held-out split as the evaluation prompts, the baseline generator as the baseline."""

    kind = "miniature"
    control = False  # the control world (MiniatureControlWorld) has the mechanism removed from its pool
    # the four categories stand in for the paper's four (WildChat's math, coding, creative writing, recommendation)
    SHOWN = {"math": "Math", "coding": "Coding", "creative": "Creative writing", "recommendation": "Recommendation"}

    @functools.cached_property
    def built(self) -> Built:
        return build_world(self.run_dir, progress=False, control=self.control)

    def control_world(self) -> "MiniatureControlWorld":
        return MiniatureControlWorld(self.profile, self.run_dir)

    def dev_tasks(self) -> list[Task]:
        """The dev split: prompts for choosing training settings, disjoint from every other split."""
        return self.built.tasks("dev")

    def task(self, prompt: str) -> Task:
        return self._tasks[prompt]

    @functools.cached_property
    def _tasks(self) -> dict[str, Task]:
        return {t.prompt: t for split in SPLITS for t in self.built.tasks(split)}

    def ready(self) -> bool:
        return stored_world(self.run_dir, self.control) is not None

    def expected_prompts(self, data: DataConfig, known: dict) -> int:
        if self.ready():
            return super().expected_prompts(data, known)
        cfg = WorldConfig()
        return 4 * (cfg.train_prompts if data.path == "miniature:ultrafeedback" else cfg.train_hs2_prompts)

    def expected_eval_prompts(self, default: int) -> int:
        return len(self.baseline()) if self.ready() else 4 * WorldConfig().eval_prompts

    def policy(self, model: ModelConfig) -> Policy:
        name = model.name_or_path
        if not name.startswith("miniature:"):
            return Policy.of(model, getattr(model, "label", ""))
        dirs = {POLICY_NAME: self.built.policy_dir, WEAK_POLICY_NAME: self.built.weak_policy_dir}
        if name not in dirs:
            raise ConfigError(f"unknown miniature model {name!r}; the miniature world has {sorted(dirs)}")
        loadable = dataclasses.replace(plain_model(model), name_or_path=str(dirs[name]))
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
        return {"oracle": ORACLE_NAME, "tasks": self.built.entries["tasks"].key,
                "code": default_code_version("simplemix.miniature.oracle")}

    def oracle_judge(self):
        from simplemix.evaluation import ScoreJudge

        return ScoreJudge(OracleScorer(self._tasks), name="miniature oracle")

    def judge_key(self) -> dict:
        return {"judge": self.profile.evaluation.judge, "reward": self.reward_key(),
                "code": default_code_version("simplemix.evaluation")}

    def baseline(self) -> list[dict]:
        # the held-out split can draw an open-ended prompt twice; tables are keyed by instruction: keep the first
        first: dict[str, dict] = {}
        for r in self.built.baseline_responses():
            first.setdefault(r["instruction"], r | {"dataset": r["category"]})
        return list(first.values())

    def eval_key(self) -> dict:
        return {"prompts": "miniature-eval", "baseline": self.built.entries["baseline"].key,
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


class MiniatureControlWorld(MiniatureWorld):
    """The miniature world with the paper's mechanism removed from the off-policy pool: its generators err with the
    SFT policy's own wrong answers and know no mode the policy's samples do not reach. Tasks, SFT policies, oracle,
    baseline and evaluation are the miniature world's own; its datasets may skip a different tied prompt, so its
    on-policy samples are a fresh draw."""

    kind = "miniature-control"
    control = True

    def control_world(self) -> None:
        return None
