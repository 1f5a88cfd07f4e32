"""Worlds and the experiment grid: where an experiment's ingredients come from, resolved once per profile.

A :class:`World` provides, for each :class:`Cell` of the profile's grid (an SFT policy x a preference
dataset), the training prompts with stable ids and categories, the off-policy pairs, the SFT policy as a
loadable :class:`~simplemix.sampling.Policy`, the reward scorer, the judge and its baseline, the evaluation
prompts with their categories, the LC instruction difficulty, and the identities that key every stage built
on them. There are two: :class:`HubWorld` (hub or local models and datasets, AlpacaEval) and the miniature
world of the ``smoke`` profile (``simplemix.miniature.world.MiniatureWorld``). :func:`resolve` is the only
place that chooses between them; no other module asks which world it is in.

Owns: Cell, PromptSet, World, HubWorld, resolve, and the ``off-policy`` stage. May import config, store,
data, sampling, reward, evaluation and categories (the primitives it assembles) and, in :func:`resolve` only,
``simplemix.miniature``. Everything downstream (onpolicy, methods, experiments, the notebooks) takes a world.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from simplemix.config import ConfigError, DataConfig, ModelConfig, PolicyConfig, Profile
from simplemix.sampling import Policy
from simplemix.store import RunStore, stable_hash

if TYPE_CHECKING:
    import pandas as pd
    from datasets import Dataset


@dataclass(frozen=True)
class Cell:
    """One experiment of the grid: an SFT policy trained on pairs built from one preference dataset."""

    policy: PolicyConfig
    dataset: DataConfig

    @property
    def id(self) -> str:
        """``<policy label>__<dataset label>``: the cell's name in tables, logs and stage configs."""
        return f"{self.policy.label}__{self.dataset.label}"

    @property
    def paper(self) -> tuple[str, str]:
        """The paper's (base model, dataset) this cell stands for, as in its Table 2."""
        return self.policy.paper_name, self.dataset.paper_name


@dataclass(frozen=True)
class PromptSet:
    """Prompts with stable ids (a hash of the messages) and categories (None where unknown)."""

    ids: list[str]
    messages: list[list[dict]]
    categories: list[str | None]

    @property
    def key(self) -> str:
        return stable_hash(self.ids)

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, indices) -> "PromptSet":
        return PromptSet([self.ids[i] for i in indices], [self.messages[i] for i in indices],
                         [self.categories[i] for i in indices])


class World:
    """The ingredients of a profile's experiments. Subclasses resolve names, scorers, judges and evaluation
    prompts; the grid, the off-policy stage and the training prompts are the same in every world."""

    kind = "world"

    def __init__(self, prof: Profile, run_dir: str | Path):
        self.profile, self.run_dir = prof, Path(run_dir)
        self.store = RunStore(self.run_dir)

    # ---------------------------------------------------------------------------------------------- the grid
    def cells(self, which: str = "grid") -> list[Cell]:
        """``"grid"``: every cell the profile declares (default: each policy with each dataset), in order;
        ``"primary"``: the one cell of the single-cell chapters."""
        prof = self.profile
        policies, datasets = {p.label: p for p in prof.policies}, {d.label: d for d in prof.datasets}
        if which == "primary":
            first = prof.grid.primary
            return [Cell(policies[first.policy], datasets[first.dataset]) if first else
                    Cell(prof.policies[0], prof.datasets[0])]
        if which != "grid":
            raise ValueError(f"cells({which!r}): expected 'grid' or 'primary'")
        if prof.grid.cells:
            return [Cell(policies[c.policy], datasets[c.dataset]) for c in prof.grid.cells]
        return [Cell(p, d) for p in prof.policies for d in prof.datasets]

    def cell(self, cell_id: str | None = None) -> Cell:
        """A cell by id (None: the primary cell)."""
        if cell_id is None:
            return self.cells("primary")[0]
        known = {c.id: c for c in self.cells("grid") + self.cells("primary")}
        if cell_id not in known:
            raise ConfigError(f"profile {self.profile.name!r} has no cell {cell_id!r}; its cells: {sorted(known)}")
        return known[cell_id]

    # -------------------------------------------------------------------------------- what subclasses provide
    def policy(self, model: ModelConfig) -> Policy:
        """The loadable, keyed policy for a model of the profile."""
        raise NotImplementedError

    def dataset(self, data: DataConfig) -> tuple[str, dict]:
        """(a path ``data.load_preferences`` reads, the identity the dataset's stages are keyed on)."""
        raise NotImplementedError

    def reward(self):
        """The scorer that labels pairs (a ``simplemix.reward.RewardScorer``)."""
        raise NotImplementedError

    def reward_key(self) -> dict:
        """The reward scorer's identity, with the code version of its implementation: stages keyed on it (scores,
        relabelled pairs) see a change to the scorer even though their own modules do not import it."""
        raise NotImplementedError

    def baseline(self) -> list[dict]:
        """The baseline's outputs on the evaluation prompts, in alpaca_eval's format (``dataset``: category)."""
        raise NotImplementedError

    def eval_key(self) -> dict:
        """The identity of the evaluation prompts and the baseline's outputs."""
        raise NotImplementedError

    def categories(self, instructions: list[str]) -> list[str]:
        """The category of each evaluation instruction."""
        raise NotImplementedError

    def shown_categories(self) -> dict[str, str]:
        """The four categories the paper reports, as {category: short label}, in this world's prompts."""
        raise NotImplementedError

    def difficulty(self) -> "tuple[pd.Series, str]":
        """LC instruction difficulty of the evaluation prompts and where it came from."""
        raise NotImplementedError

    def control_world(self) -> "World | None":
        """The same world with the paper's mechanism removed from its off-policy data, where the world has one."""
        return None

    def ready(self) -> bool:
        """Whether the world's own inputs exist without compute (a dry run must not build anything)."""
        return True

    def expected_prompts(self, data: DataConfig, known: dict) -> int | None:
        """How many training prompts a dataset has, without downloading it: ``max_rows``, else ``known[(path,
        split)]`` (published sizes), else the file's pairs when it is local; None when it cannot be known here."""
        published = known.get((data.path, data.split or "train"))
        rows = data.max_rows and data.max_rows // (2 if data.format == "helpsteer2" else 1)  # HelpSteer2: 2 rows a prompt
        if published is not None or rows:
            return min(x for x in (published, rows) if x)
        if not Path(self.dataset(data)[0]).is_file():
            return None
        return len(set(self.raw_pairs(data)["prompt_id"]))

    def expected_eval_prompts(self, default: int) -> int:
        return default

    def oracle_judge(self):
        raise ConfigError(f"{self.profile.name}: evaluation.judge 'oracle' exists only in the miniature world; use "
                          "'reward_model' or 'alpaca_eval_gpt4_turbo'")

    def prompt_categories(self, messages: list[list[dict]]) -> list[str | None]:
        """Categories of training prompts: the last user turn's read label if it is an AlpacaEval instruction,
        else the keyword rules' label."""
        from simplemix.categories import ReadLabels

        return ReadLabels().classify([_last_user(m) for m in messages])

    # ------------------------------------------------------------------------------------ built on the above
    def sft_policy(self, cell: Cell) -> Policy:
        return dataclasses.replace(self.policy(cell.policy), label=cell.policy.label)

    def judge(self):
        """The judge ``evaluation.judge`` names: the oracle, the reward model (a proxy) or alpaca_eval's."""
        from simplemix.evaluation import AlpacaEvalJudge, ScoreJudge

        name = self.profile.evaluation.judge
        if name == "oracle":
            return self.oracle_judge()
        if name == "reward_model":
            model = self.profile.reward.model.name_or_path
            return ScoreJudge(self.reward(), name=f"reward-model proxy ({model}; not leaderboard-comparable)")
        return AlpacaEvalJudge()

    def judge_key(self) -> dict:
        """The judge's identity: its name, the scorer it uses, and the code of the judges."""
        from simplemix.store import default_code_version

        judge = self.profile.evaluation.judge
        return {"judge": judge, "reward": self.reward_key() if judge in ("oracle", "reward_model") else None,
                "code": default_code_version("simplemix.evaluation")}

    def lc(self, table):
        """The LC win rate of an annotation table, with this world's instruction difficulty."""
        from simplemix.evaluation import length_controlled

        return length_controlled(table, *self.difficulty())

    def groups(self, table) -> "pd.Series":
        """Instruction -> category for an annotation table."""
        import pandas as pd

        instructions = list(table["instruction"])
        return pd.Series(self.categories(instructions), index=instructions)

    def raw_pairs(self, data: DataConfig) -> "Dataset":
        """The dataset's pairs as the loader normalizes them (before any re-labelling)."""
        path, identity = self.dataset(data)
        return _load(data.format, path, data.split, data.max_rows, json.dumps(data.on_invalid, sort_keys=True),
                     json.dumps(data.helpsteer2_weights, sort_keys=True), stable_hash(identity))

    def training_prompts(self, cell: Cell) -> PromptSet:
        """The unique prompts of the cell's dataset, in first-seen order: on- and off-policy pairs share prompts,
        as in the paper."""
        seen: dict[str, list[dict]] = {}
        ds = self.raw_pairs(cell.dataset)
        for pid, prompt in zip(ds["prompt_id"], ds["prompt"]):
            seen.setdefault(pid, prompt)
        messages = list(seen.values())
        return PromptSet(list(seen), messages, self.prompt_categories(messages))

    def _off_policy_config(self, cell: Cell) -> dict:
        rescore = self.profile.reward.rescore_off_policy
        return {"dataset": self.dataset(cell.dataset)[1], "reward": self.reward_key() if rescore else None}

    def off_policy_key(self, cell: Cell) -> str:
        """The store key of the cell's ``off-policy`` stage (for dry runs)."""
        from simplemix.store import default_code_version

        return self.store.key_for("off-policy", self._off_policy_config(cell), None, default_code_version(__name__))

    def off_policy_pairs(self, cell: Cell, progress: bool = True) -> "Dataset":
        """Stage ``off-policy``: the cell's dataset in the normalized schema, re-labelled by the profile's reward
        model when ``reward.rescore_off_policy`` (the paper scores both responses with its oracle RM)."""
        from simplemix.data import load_stored_pairs, write_jsonl

        data, rescore = cell.dataset, self.profile.reward.rescore_off_policy
        config = self._off_policy_config(cell)

        def compute(out: Path) -> dict:
            from simplemix.reward import rescore_pairs

            rows = list(self.raw_pairs(data))
            counts = {"pairs": len(rows)}
            if rescore:
                rows, counts = rescore_pairs(rows, self.reward(), progress=progress)
            write_jsonl(out / "pairs.jsonl", rows)
            return counts

        entry = self.store.run("off-policy", compute, config)
        return load_stored_pairs(entry.path / "pairs.jsonl", "off")


class HubWorld(World):
    """Hub or local models and datasets, a transformers reward model, AlpacaEval's 805 prompts and baseline."""

    kind = "hub"

    def policy(self, model: ModelConfig) -> Policy:
        policy = Policy.of(model, getattr(model, "label", ""))
        if Path(model.name_or_path).is_dir():  # a local model rebuilt or edited in place is another model
            policy = dataclasses.replace(policy, key=policy.key | {"files": _dir_fingerprint(model.name_or_path)})
        return policy

    def dataset(self, data: DataConfig) -> tuple[str, dict]:
        identity = {k: v for k, v in dataclasses.asdict(data).items() if k not in ("label", "paper_name")}
        if Path(data.path).is_file():  # a local file is known by its content (an edit in place is seen), not its path
            identity["path"], identity["sha256"] = Path(data.path).name, _file_sha256(data.path)
        return data.path, identity

    @functools.cached_property
    def _reward(self):
        from simplemix.reward import HFRewardModel

        return HFRewardModel(self.profile.reward)

    def reward(self):
        return self._reward

    def reward_key(self) -> dict:
        from simplemix.store import default_code_version

        name = self.profile.reward.model.name_or_path
        files = _dir_fingerprint(name) if Path(name).is_dir() else None
        return dataclasses.asdict(self.profile.reward) | {"rescore_off_policy": None, "batch_token_budget": None,
                                                          "code": default_code_version("simplemix.reward"),
                                                          "files": files}

    def baseline(self) -> list[dict]:
        from simplemix.evaluation import alpaca_eval_baseline

        return alpaca_eval_baseline()

    def eval_key(self) -> dict:
        return {"prompts": "alpaca_eval_805", "num_prompts": self.profile.evaluation.num_prompts}

    def categories(self, instructions: list[str]) -> list[str]:
        from simplemix.categories import categories_of

        return categories_of(instructions)

    def shown_categories(self) -> dict[str, str]:
        from simplemix.categories import PAPER_CATEGORIES

        return {category: short for short, category in PAPER_CATEGORIES.items()}

    def difficulty(self):
        from simplemix.evaluation import instruction_difficulty

        return instruction_difficulty()


WORLDS = ("hub", "miniature", "miniature-control")


def resolve(prof: Profile, run_dir: str | Path) -> World:
    """The profile's world, over the run store in ``run_dir``."""
    if prof.world in ("miniature", "miniature-control"):
        from simplemix.miniature.world import MiniatureControlWorld, MiniatureWorld

        return (MiniatureWorld if prof.world == "miniature" else MiniatureControlWorld)(prof, run_dir)
    if prof.world != "hub":
        raise ConfigError(f"profile {prof.name!r}: world {prof.world!r} is not one of {list(WORLDS)}")
    return HubWorld(prof, run_dir)


@functools.lru_cache(maxsize=8)
def _load(fmt: str, path: str, split, max_rows, on_invalid: str, weights: str, identity: str) -> "Dataset":
    from simplemix.data import load_preferences

    ds, _ = load_preferences(fmt, path, split=split, max_rows=max_rows, on_invalid=json.loads(on_invalid),
                             helpsteer2_weights=json.loads(weights))
    return ds


def _last_user(messages: list[dict]) -> str:
    return next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")


def _dir_fingerprint(path: str | Path) -> str:
    """A local model directory's identity without reading its weights: the content of its small files (configs,
    tokenizer, chat template) and the name, size and modification time of the large ones."""
    parts = []
    for f in sorted(p for p in Path(path).rglob("*") if p.is_file()):
        stat = f.stat()
        rel = str(f.relative_to(path))
        parts.append([rel, _file_sha256(f)] if stat.st_size < (1 << 20) else [rel, stat.st_size, stat.st_mtime_ns])
    return stable_hash(parts)


def _file_sha256(path: str | Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
