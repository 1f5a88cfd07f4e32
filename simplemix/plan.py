"""The batch dry run: every stage each chapter would request, which requests chapters share, and the work.

Stage keys are content-addressed (a training run is keyed on its pairs), so they cannot be known before the data
exists. The plan therefore names each request by what determines it (stage, cell, settings, and the requests it
is built on) with the same identities the pipeline shares by: the SFT policy's evaluation does not depend on the
dataset, a pair set is (sources, fraction r, budget, seed) with r = 0 and r = 1 reading one source only, HyPO
trains on off-policy DPO's pairs. Each chapter's requests are read from its own ``parameters`` cell (which cells,
ratios, criteria, and its replicate ``seeds``: None is the profile's ``seeds``), so the plan follows the notebooks.
A chapter with replicates asks for everything once per seed, in that replicate's world (sampling, mixing and
training seeds offset by the seed, as :func:`simplemix.experiments.replicate`): what a seed changes is a request
of its own, what it does not (the SFT policy's evaluation, the off-policy relabelling, a filtered subset's
reference log-probs) is one request asked for by every replicate. Owns the plan; imports config, store, sampling
and world, and onpolicy and experiments to look up the real keys of what is stored.
"""

from __future__ import annotations

import ast
import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from simplemix.config import Profile
from simplemix.store import stable_hash
from simplemix.world import Cell, World

WORK = ("generations", "sequences_scored", "pair_epochs", "eval_generations")
# Published sizes of the paper's datasets (the hub's dataset viewer: train_prefs 61.1k rows, one pair a prompt;
# HelpSteer2 train 20.3k rows, two responses a prompt), so the dry run needs no download: prompts per split.
KNOWN_PROMPTS = {("HuggingFaceH4/ultrafeedback_binarized", "train_prefs"): 61_135,
                 ("nvidia/HelpSteer2", "train"): 10_162}
ALPACA_EVAL_PROMPTS = 805


@dataclass
class Request:
    """One stage request: what determines it (``what``), its id, the work it represents and who asked."""

    stage: str
    cell: str | None
    label: str
    what: dict
    work: dict
    chapters: list[str] = field(default_factory=list)
    lookup: object = None  # () -> the real store key, for the stages keyed on settings alone
    stored: bool | None = None  # None: keyed on the content of earlier stages, known only once they exist

    @property
    def id(self) -> str:
        return stable_hash({"stage": self.stage, **self.what}, 12)


class Planner:
    """Collects the requests of every chapter over one world."""

    def __init__(self, world: World):
        self.base = world
        self.world, self.prof = world, world.profile
        self.seed = 0  # the replicate seed of the requests being asked for
        self.requests: dict[str, Request] = {}
        self.asked: list[tuple[str, str]] = []  # (chapter, request id), with repeats: the work without sharing
        self.chapter = ""
        self.cells: dict[str, list[str]] = {}  # chapter -> the ids of the cells it runs
        self.seeds: dict[str, list[int]] = {}  # chapter -> its replicate seeds
        self.owners: dict[str, set[str]] = {}  # request id -> every cell (or policy) that asked for it
        self.unknown: set[str] = set()  # datasets whose size (so their work) is unknown without a download

    # ------------------------------------------------------------------------------------------ primitives
    def at(self, seed: int) -> None:
        """Ask for what follows in the world of replicate ``seed`` (0: the profile as written)."""
        from simplemix.experiments import replicate

        self.seed, self.world = seed, replicate(self.base, seed)
        self.prof = self.world.profile

    def ask(self, stage: str, cell: Cell | str | None, label: str, what: dict, lookup=None, **work) -> str:
        """Record a request by the cell it belongs to, or by ``policy:<label>`` / ``dataset:<label>`` when only the
        SFT policy (its evaluation) or only the dataset (its relabelling) determines it: the cells of that policy
        or dataset share it, as the store does."""
        where = cell.id if isinstance(cell, Cell) else cell
        label = f"{label} s{self.seed}" if self.seed else label
        request = Request(stage, where, label, what, {k: work.get(k, 0) for k in WORK}, lookup=lookup)
        known = self.requests.setdefault(request.id, request)
        self.owners.setdefault(request.id, set()).add(where)
        if self.chapter not in known.chapters:
            known.chapters.append(self.chapter)
        self.asked.append((self.chapter, request.id))
        return request.id

    def prompts(self, cell: Cell) -> int:
        """The cell's training prompts; a dataset whose size cannot be known without downloading it counts 0 and
        is named in the report."""
        n = self.world.expected_prompts(cell.dataset, KNOWN_PROMPTS)
        if n is None:
            self.unknown.add(cell.dataset.label)
        return n or 0

    def eval_prompts(self) -> int:
        n = self.world.expected_eval_prompts(ALPACA_EVAL_PROMPTS)
        return min(n, self.prof.evaluation.num_prompts or n)

    # ------------------------------------------------------------------------------------------- the stages
    def on_policy(self, cell: Cell, sampling=None, label: str = "on-policy") -> str:
        s, world = sampling or self.prof.sampling, self.world
        n = self.prompts(cell)
        def lookup():
            from simplemix.onpolicy import plan

            if not Path(world.dataset(cell.dataset)[0]).exists():
                raise LookupError("a hub dataset: its prompts (part of the key) are not read in a dry run")
            return plan(world, cell, s)[0]["key"]

        samples = self.ask("samples", cell, label, {"policy": _model(cell.policy), "dataset": _data(cell.dataset),
                                                    "sampling": dataclasses.asdict(s)}, lookup,
                           generations=n * s.num_samples)
        scores = self.ask("scores", cell, label, {"samples": samples, "reward": self._reward()},
                          sequences_scored=n * s.num_samples)
        return self.ask("pairs", cell, label, {"scores": scores, "pairs": dataclasses.asdict(self.prof.pairs)})

    def off_policy(self, cell: Cell) -> str:
        rescore, world = self.prof.reward.rescore_off_policy, self.world
        return self.ask("off-policy", f"dataset:{cell.dataset.label}", "off-policy", {"dataset": _data(cell.dataset),
                                                          "reward": self._reward() if rescore else None},
                        lambda: world.off_policy_key(cell), sequences_scored=2 * self.prompts(cell) if rescore else 0)

    def budget(self, cell: Cell) -> int:
        return self.prof.mixing.total_pairs or self.prompts(cell)

    def pair_set(self, cell: Cell, r: float, seed: int, off: str | None = None, on: str | None = None,
                 total: int | None = None) -> dict:
        """A mixture of the cell's sources as the mixer draws it; r = 0 and r = 1 read one source only."""
        on = on or self.on_policy(cell) if r > 0 else None
        off = off or self.off_policy(cell) if r < 1 else None
        return {"on": on, "off": off, "r": r, "total": total or self.budget(cell), "seed": seed}

    def train(self, cell: Cell, label: str, pairs: dict, method: str = "dpo", seed: int | None = None,
              policy: dict | None = None) -> str:
        t, n = self.prof.training, pairs["total"]
        policy = policy or _model(cell.policy)
        ref = self.ask("ref-logps", cell, label, {"policy": policy, "pairs": pairs, "max_length": t.max_length},
                       sequences_scored=2 * n)
        epochs = t.num_train_epochs
        hypo = t.hypo.num_samples * n * epochs if method == "hypo" else 0
        return self.ask("train", cell, label, {"ref": ref, "method": method,
                                               "seed": t.seed if seed is None else seed},
                        pair_epochs=n * epochs, generations=hypo)

    def evaluate(self, cell: Cell, label: str, trained: str | None) -> str:
        what = {"policy": trained or _model(cell.policy), "judge": self.prof.evaluation.judge}
        n = self.eval_prompts()
        scored = 2 * n if self.prof.evaluation.judge != "alpaca_eval_gpt4_turbo" else 0
        world = self.world
        def lookup():
            from simplemix.experiments import evaluation_key

            return evaluation_key(world, world.sft_policy(cell))

        return self.ask("evaluation", f"policy:{cell.policy.label}" if trained is None else cell, label, what,
                        lookup if trained is None else None, eval_generations=n, sequences_scored=scored)

    def method(self, cell: Cell, method: str | None, r: float | None = None, seed: int | None = None) -> str | None:
        """The train request of a method (None for the SFT policy), and its evaluation."""
        if method is None:
            self.evaluate(cell, "SFT", None)
            return None
        seed = self.prof.mixing.seed if seed is None else seed
        if method == "dpo_mix_p":
            trained = self._dpo_mix_p(cell)
        else:
            r = {"off": 0.0, "on": 1.0, "hypo": 0.0}.get(method, self.prof.mixing.on_policy_fraction if r is None else r)
            label = f"simplemix r={r:g}" if method == "simplemix" else method
            trained = self.train(cell, label, self.pair_set(cell, r, seed), "hypo" if method == "hypo" else "dpo",
                                 seed=seed if seed != self.prof.mixing.seed else None)
        self.evaluate(cell, method, trained)
        return trained

    def _dpo_mix_p(self, cell: Cell) -> str:
        mp, s, n = self.prof.training.dpo_mix_p, self.prof.sampling, self.prompts(cell)
        policy, total = _model(cell.policy), self.budget(cell)
        for t in range(mp.rounds):
            made = self.ask("dpo-mix-p-pairs", cell, f"DPO-Mix-P round {t}",
                            {"policy": policy, "dataset": _data(cell.dataset), "round": t, "weights": mp.fused_weights,
                             "reward": self._reward(), "seed": s.seed, "order": self.prof.mixing.seed},
                            generations=n // mp.rounds * s.num_samples, sequences_scored=n // mp.rounds * s.num_samples)
            want = total // mp.rounds + (t < total % mp.rounds)
            policy = self.train(cell, f"DPO-Mix-P round {t}", {"on": made, "off": None, "r": 1.0, "total": want,
                                                               "seed": self.prof.mixing.seed}, policy=policy)
        return policy

    def _reward(self) -> dict:
        return dataclasses.asdict(self.prof.reward.model)


def _model(model) -> dict:
    return {"name_or_path": model.name_or_path, "revision": model.revision, "torch_dtype": model.torch_dtype}


def _data(data) -> dict:
    return {k: v for k, v in dataclasses.asdict(data).items() if k not in ("label", "paper_name")}


# ------------------------------------------------------------------------------------------------ chapters
def _chapter_01(p: Planner, cells, params):
    for cell in cells:
        p.method(cell, None)


def _chapter_02(p: Planner, cells, params):
    for cell in cells:
        for m in (None, "off", "on"):
            p.method(cell, m)


def _chapter_03(p: Planner, cells, params):
    bench = p.prof.evaluation.benchmarks
    for cell in cells:
        for m in (None, "off", "on", "hypo", "dpo_mix_p", "simplemix"):
            trained = p.method(cell, m)
            if bench:
                p.ask("benchmarks", cell if trained else f"policy:{cell.policy.label}", f"benchmarks {m or 'SFT'}",
                      {"policy": trained or _model(cell.policy), "tasks": list(bench)})


def _chapter_04(p: Planner, cells, params):
    from simplemix.sampling import diversity_variants

    for cell in cells:
        for name, cfg in diversity_variants(p.prof.sampling, tuple(params.get("temperatures", (1.0, 2.0, 3.0)))).items():
            pairs = p.pair_set(cell, 1.0, p.prof.mixing.seed, on=p.on_policy(cell, cfg, f"on-policy {name}"))
            p.evaluate(cell, f"on-policy {name}", p.train(cell, f"on-policy {name}", pairs))
        p.method(cell, "simplemix")


def _chapter_05(p: Planner, cells, params):
    for cell in cells:
        for r in params.get("ratios", [0.5]):
            p.method(cell, "simplemix", r=r)


def _chapter_06(p: Planner, cells, params):
    for cell in cells:
        p.method(cell, None)
        off, n = p.off_policy(cell), p.prompts(cell)
        for c in params.get("criteria", []):
            for frac in params.get("fractions", []):
                subset = {"on": None, "off": {"filter": c, "keep": frac, "of": off}, "r": 0.0,
                          "total": round(frac * n), "seed": None}
                p.evaluate(cell, f"off {c} p={frac:g}", p.train(cell, f"off {c} p={frac:g}", subset))
        p.method(cell, "simplemix", r=0.5)
        mix = params.get("mix_fraction", 0.4)
        top = {"filter": "quality", "keep": mix, "of": off}
        pairs = p.pair_set(cell, 0.5, p.prof.mixing.seed, off=stable_hash(top), total=2 * round(mix * n))
        p.evaluate(cell, f"on + top {mix:g} off", p.train(cell, f"on + top {mix:g} off", pairs))


CHAPTERS = {"01": _chapter_01, "02": _chapter_02, "03": _chapter_03, "04": _chapter_04, "05": _chapter_05,
            "06": _chapter_06}


def parameters(notebook: Path) -> dict:
    """The literal defaults of a notebook's ``parameters`` cell."""
    nb = json.loads(Path(notebook).read_text())
    for cell in nb["cells"]:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            tree = ast.parse("".join(cell["source"]))
            return {t.id: ast.literal_eval(node.value) for node in tree.body if isinstance(node, ast.Assign)
                    for t in node.targets if isinstance(t, ast.Name)}
    return {}


def chapter_seeds(prof: Profile, params: dict) -> list[int]:
    """The replicate seeds a chapter runs, from its parameters: ``seeds`` (None: the profile's ``seeds``); a
    chapter without a ``seeds`` parameter runs the profile as written (replicate 0)."""
    from simplemix.experiments import check_seeds

    if "seeds" not in params:
        return [0]
    return list(check_seeds(prof.seeds if params["seeds"] is None else params["seeds"]))


def chapter_cells(world: World, params: dict) -> list[Cell]:
    """The cells a chapter runs, from its parameters: ``cells`` ("grid" | "primary") or one ``cell_id``."""
    if "cells" in params:
        return world.cells(params["cells"])
    return [world.cell(params.get("cell_id"))]


def plan(world: World, notebooks: list[Path]) -> Planner:
    """Every request of the book's chapters over ``world``, as the notebooks' own parameters ask for them."""
    planner = Planner(world)
    for nb in notebooks:
        build = CHAPTERS.get(nb.name[:2])
        if build is None:
            continue
        params = parameters(nb)
        planner.chapter, cells = nb.stem, chapter_cells(world, params)
        planner.cells[nb.stem] = [c.id for c in cells]
        planner.seeds[nb.stem] = chapter_seeds(world.profile, params)
        for seed in planner.seeds[nb.stem]:  # each replicate in its own world
            planner.at(seed)
            build(planner, cells, params)
        planner.at(0)
    _mark_stored(planner)
    return planner


def _mark_stored(planner: Planner) -> None:
    """Requests keyed on settings and inputs that exist without compute (sampling, the off-policy relabelling, the
    SFT policy's evaluation) are looked up in the store by their real key; the others are keyed on the content of
    earlier stages, so they are known to be missing when an input is, and otherwise unknown until it exists."""
    store, ready = planner.world.store, planner.world.ready()
    for request in planner.requests.values():
        if not ready:
            request.stored = False  # nothing of a world that was never built can be stored
        elif request.lookup is not None:
            try:
                request.stored = store.get(request.stage, request.lookup()) is not None
            except Exception:  # a hub dataset or model that cannot be read here: its key is unknown
                request.stored = None


def totals(planner: Planner) -> dict:
    """Work with sharing (each request once) and without (every chapter computing all it asks for)."""
    shared = {k: sum(r.work[k] for r in planner.requests.values()) for k in WORK}
    alone = {k: sum(planner.requests[i].work[k] for _, i in planner.asked) for k in WORK}
    return {"shared": shared, "alone": alone,
            "ratio": {k: (shared[k] / alone[k] if alone[k] else None) for k in WORK}}


def report(planner: Planner) -> str:
    """The dry run as text: cells per chapter, one line per request, the work and the sharing ratio."""
    prof: Profile = planner.prof
    lines = [f"dry run of profile {prof.name!r} ({planner.world.kind} world), run {planner.world.run_dir}", ""]
    for chapter, cells in planner.cells.items():
        asked, seeds = sum(c == chapter for c, _ in planner.asked), planner.seeds.get(chapter, [0])
        lines.append(f"{chapter}: {len(cells)} cell(s): {', '.join(cells)}; {len(seeds)} seed(s): "
                     f"{', '.join(map(str, seeds))}; {asked} requests")
    lines += ["", f"{'stage':<16} {'cell':<36} {'request':<24} {'id':<12} {'chapters':<9} {'stored':<7} work"]
    state = {True: "yes", False: "no", None: "?"}
    for r in planner.requests.values():
        work = ", ".join(f"{k} {v:,.0f}" for k, v in r.work.items() if v)
        lines.append(f"{r.stage:<16} {r.cell:<36} {r.label[:24]:<24} {r.id:<12} "
                     f"{len(r.chapters):<9} {state[r.stored]:<7} {work}")
    t = totals(planner)
    shared_n = sum(len(r.chapters) > 1 for r in planner.requests.values())
    if planner.unknown:
        lines += ["", f"the sizes of {', '.join(sorted(planner.unknown))} are unknown without downloading them (set "
                      "max_rows to count them): their work is counted as 0"]
    lines += ["", f"{len(planner.requests)} distinct requests ({len(planner.asked)} as the chapters ask for them; "
                  f"{shared_n} shared by several chapters); stored: "
                  f"{sum(r.stored is True for r in planner.requests.values())} yes, "
                  f"{sum(r.stored is False for r in planner.requests.values())} no, "
                  f"{sum(r.stored is None for r in planner.requests.values())} '?' (keyed on the content of stages "
                  "not yet computed, or on data this machine cannot read).", "",
              f"{'work':<18} {'with sharing':>14} {'without':>14} {'ratio':>7}"]
    for k in WORK:
        ratio = t["ratio"][k]
        lines.append(f"{k:<18} {t['shared'][k]:>14,.0f} {t['alone'][k]:>14,.0f} "
                     f"{'-' if ratio is None else f'{ratio:.2f}':>7}")
    return "\n".join(lines)
