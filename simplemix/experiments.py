"""The paper's methods end to end: each method's pairs at one shared pair budget, then its training run.

Methods (paper section 4 and table 2): ``off`` (off-policy DPO), ``on`` (on-policy DPO), ``simplemix`` (a
fraction r of on-policy pairs, the rest off-policy), ``hypo`` (off-policy DPO plus the online KL term) and
``dpo_mix_p`` (iterative online DPO whose samples come from fused policy/SFT logits). Every method trains on
the same number of pairs, as in the paper.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from simplemix.config import ConfigError, ModelConfig, Profile
from simplemix.store import Entry, RunStore, default_code_version

METHODS = ("off", "on", "simplemix", "hypo", "dpo_mix_p")
ON_FRACTION = {"off": 0.0, "on": 1.0, "hypo": 0.0}  # simplemix takes its r from the profile (or the caller)


def off_policy_pairs(prof: Profile, run_dir: str | Path, progress: bool = True):
    """The profile's off-policy pairs in the normalized schema: the miniature pool (already judged by the oracle)
    or the profile's datasets, re-labelled by the profile's reward model when ``reward.rescore_off_policy``."""
    from simplemix.data import load_preferences

    if prof.datasets[0].format == "miniature":
        from simplemix.miniature.world import build_world

        return build_world(run_dir, progress=False).off_policy_pairs()

    def compute(out: Path) -> dict:
        from datasets import concatenate_datasets

        from simplemix.onpolicy import _write_jsonl
        from simplemix.reward import load_reward_model, rescore_pairs

        parts = [load_preferences(d.format, d.path, split=d.split, max_rows=d.max_rows, on_invalid=d.on_invalid,
                                  helpsteer2_weights=d.helpsteer2_weights)[0] for d in prof.datasets]
        ds = concatenate_datasets(parts)
        counts = {"pairs": len(ds)}
        rows = list(ds)
        if prof.reward.rescore_off_policy:
            rows, counts = rescore_pairs(rows, load_reward_model(prof.reward, run_dir), progress=progress)
        _write_jsonl(out / "pairs.jsonl", rows)
        return counts

    config = {"datasets": [dataclasses.asdict(d) for d in prof.datasets],
              "reward": dataclasses.asdict(prof.reward) if prof.reward.rescore_off_policy else None}
    entry = RunStore(run_dir).run("off-policy", compute, config, code_version=default_code_version(off_policy_pairs))
    ds, _ = load_preferences("local", entry.path / "pairs.jsonl", source="off", on_invalid={"empty_response": "keep"})
    return ds


def pair_budget(prof: Profile, n_on: int, n_off: int) -> int:
    """The number of pairs every method trains on: ``mixing.total_pairs``, or as many as both sources have."""
    total = prof.mixing.total_pairs or min(n_on, n_off)
    if not prof.mixing.with_replacement and total > min(n_on, n_off):
        raise ConfigError(f"mixing.total_pairs={total}, but pure on- and off-policy DPO need that many pairs of "
                          f"each source: {n_on} on-policy and {n_off} off-policy pairs exist")
    return total


def _filtered_off(prof: Profile, off, run_dir, progress: bool):
    from simplemix.curation import off_policy_filter

    flt = prof.mixing.off_policy_filter
    model = tokenizer = None
    if flt.criterion in ("on_policiness", "dissimilarity"):
        from simplemix.sampling import load_policy

        model, tokenizer = load_policy(prof.policies[0], run_dir)
    return off_policy_filter(off, flt.criterion, flt.keep_fraction, model=model, tokenizer=tokenizer,
                             progress=progress)[0]


def method_pairs(prof: Profile, run_dir: str | Path, method: str, on_fraction: float | None = None,
                 progress: bool = True):
    """The training pairs of ``method`` (not DPO-Mix-P, which makes its own each round) at the shared budget."""
    from simplemix.curation import mix
    from simplemix.onpolicy import load_pairs, on_policy_pairs

    if method not in ("off", "on", "simplemix", "hypo"):
        raise ValueError(f"method {method!r} has no fixed pair set; expected off, on, simplemix or hypo")
    on = load_pairs(on_policy_pairs(prof, run_dir, progress=progress)["pairs"])
    off = _filtered_off(prof, off_policy_pairs(prof, run_dir, progress), run_dir, progress)
    total = pair_budget(prof, len(on), len(off))
    r = ON_FRACTION.get(method, prof.mixing.on_policy_fraction if on_fraction is None else on_fraction)
    return mix(on, off, total, r, prof.mixing.seed, prof.mixing.with_replacement)


def _round_pairs(prof: Profile, run_dir, policy: ModelConfig, prompts, round_index: int, progress: bool) -> Entry:
    """Stage ``dpo-mix-p-pairs``: fused samples from ``policy`` and the SFT model for ``prompts``, scored by the
    reward model, as best/worst pairs."""
    from simplemix.onpolicy import _world_inputs, _write_jsonl

    sft = prof.policies[0]
    mp, s = prof.training.dpo_mix_p, prof.sampling
    config = {"policy": dataclasses.asdict(policy), "sft": dataclasses.asdict(sft), "round": round_index,
              "fused_weights": mp.fused_weights, "num_samples": s.num_samples, "max_new_tokens": s.max_new_tokens,
              "temperature": s.temperature, "top_p": s.top_p, "seed": s.seed, "reward": dataclasses.asdict(prof.reward),
              "pairs": dataclasses.asdict(prof.pairs)}
    inputs = {"prompts": prompts.key, **_world_inputs(sft.name_or_path, run_dir)}

    def compute(out: Path) -> dict:
        from simplemix.fused import dpo_mix_p_samples
        from simplemix.reward import build_pairs, load_reward_model
        from simplemix.sampling import load_policy

        model, tokenizer = load_policy(policy, run_dir)
        reference, _ = load_policy(sft, run_dir)
        drawn = dpo_mix_p_samples(model, reference, tokenizer, prompts.messages, num_samples=s.num_samples,
                                  fused_weights=mp.fused_weights, max_new_tokens=s.max_new_tokens,
                                  temperature=s.temperature, top_p=s.top_p, seed=s.seed + 1000 * round_index,
                                  progress=progress)
        del model, reference
        texts = [[m.sample.text for m in row] for row in drawn]
        scorer = load_reward_model(prof.reward, run_dir)
        flat = scorer.score([p for p, row in zip(prompts.messages, texts) for _ in row], sum(texts, []))
        scores, at = [], 0
        for row in texts:
            scores.append(flat[at:at + len(row)])
            at += len(row)
        rows, counts = build_pairs(prompts.messages, texts, scores, min_margin=prof.pairs.min_margin,
                                   prompt_ids=prompts.ids, origin=f"dpo-mix-p-round{round_index}",
                                   sampler={"method": "dpo_mix_p", "round": round_index,
                                            "fused_weights": mp.fused_weights})
        _write_jsonl(out / "pairs.jsonl", rows)
        return counts

    return RunStore(run_dir).run("dpo-mix-p-pairs", compute, config, inputs,
                                 code_version=default_code_version(_round_pairs))


def dpo_mix_p(prof: Profile, run_dir: str | Path, *, total_pairs: int | None = None, max_steps: int | None = None,
              progress: bool = True, train_fn=None, upto_round: int | None = None) -> list[Entry]:
    """DPO-Mix-P for ``training.dpo_mix_p.rounds`` rounds; the train entry of each round, the last is the result.

    The training prompts are shuffled once (``mixing.seed``) and cut into one disjoint slice per round. Round t
    samples from the current policy fused with the SFT model, keeps ``total_pairs`` / T of its best/worst pairs
    and runs DPO from the current policy, which is also that round's reference (iterative DPO as in Shi et al.),
    so the whole loop trains on the same number of pairs as the other methods. ``train_fn`` replaces
    :func:`simplemix.training.train` (the multi-GPU launcher's hook); ``upto_round`` stops after that round.
    """
    import numpy as np

    from simplemix.data import load_preferences
    from simplemix.onpolicy import PromptSet, load_pairs, on_policy_pairs, prompt_set
    from simplemix.training import train

    train_fn = train_fn or train
    rounds = prof.training.dpo_mix_p.rounds
    if total_pairs is None:
        n_on = len(load_pairs(on_policy_pairs(prof, run_dir, progress=progress)["pairs"]))
        total_pairs = pair_budget(prof, n_on, len(off_policy_pairs(prof, run_dir, progress)))
    prompts = prompt_set(prof, run_dir)
    order = np.random.default_rng(prof.mixing.seed).permutation(len(prompts)).tolist()
    slices = np.array_split(order, rounds)
    policy, entries = prof.policies[0], []
    for t, part in enumerate(slices):
        want = total_pairs // rounds + (t < total_pairs % rounds)
        subset = PromptSet([prompts.ids[i] for i in part], [prompts.messages[i] for i in part],
                           [prompts.categories[i] for i in part])
        made = _round_pairs(prof, run_dir, policy, subset, t, progress)
        pairs, _ = load_preferences("local", made.path / "pairs.jsonl", source="on",
                                    on_invalid={"empty_response": "keep"})
        if len(pairs) < want:
            raise ValueError(f"DPO-Mix-P round {t}: {len(pairs)} pairs from {len(subset)} prompts, {want} needed for "
                             f"a budget of {total_pairs} pairs over {rounds} rounds; lower mixing.total_pairs or "
                             "raise sampling.num_samples")
        pairs = pairs.shuffle(seed=prof.mixing.seed + t).select(range(want))
        entry = train_fn(pairs, prof.training, policy, run_dir, name=f"dpo_mix_p-round{t}", max_steps=max_steps,
                         progress=progress)
        entries.append(entry)
        policy = dataclasses.replace(prof.policies[0], name_or_path=str(entry.path))
        if upto_round is not None and t >= upto_round:
            break
    return entries


def run_method(prof: Profile, run_dir: str | Path, method: str, *, on_fraction: float | None = None,
               max_steps: int | None = None, progress: bool = True, train_fn=None,
               upto_round: int | None = None) -> Entry:
    """Train ``method`` as the profile says; the train entry of the aligned policy. ``train_fn`` replaces
    :func:`simplemix.training.train` (see :mod:`simplemix.launch`)."""
    from simplemix.training import train

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    if method == "dpo_mix_p":
        return dpo_mix_p(prof, run_dir, max_steps=max_steps, progress=progress, train_fn=train_fn,
                         upto_round=upto_round)[-1]
    pairs = method_pairs(prof, run_dir, method, on_fraction, progress)
    name = f"simplemix-r{on_fraction if on_fraction is not None else prof.mixing.on_policy_fraction:g}" \
        if method == "simplemix" else method
    return (train_fn or train)(pairs, prof.training, prof.policies[0], run_dir, name=name,
                               method="hypo" if method == "hypo" else "dpo", max_steps=max_steps, progress=progress)


def oracle_rewards(policy: ModelConfig, run_dir: str | Path, *, split: str = "eval", max_new_tokens: int = 64,
                   progress: bool = False) -> list[dict]:
    """Greedy answers of ``policy`` to the miniature world's ``split`` prompts, judged by the oracle: one row per
    prompt (category, reward, correct, length)."""
    from simplemix.miniature.oracle import judge
    from simplemix.miniature.world import build_world
    from simplemix.sampling import generate, load_policy

    tasks = build_world(run_dir, progress=False).tasks(split)
    model, tokenizer = load_policy(policy, run_dir)
    answers = generate(model, tokenizer, [t.messages() for t in tasks], max_new_tokens=max_new_tokens,
                       progress=progress)
    rows = []
    for task, samples in zip(tasks, answers):
        verdict = judge(task, samples[0].text)
        rows.append({"category": task.category, "reward": verdict.reward, "correct": verdict.correct,
                     "tokens": samples[0].num_tokens})
    return rows


def miniature_results(prof: Profile, run_dir: str | Path, methods=METHODS, *, on_fraction: float | None = None,
                      progress: bool = False):
    """Mean oracle reward per category on the held-out split for the SFT policy and each trained method
    (a pandas table: rows are methods, columns categories plus ``all``)."""
    import pandas as pd

    policies = {"sft": prof.policies[0]}
    for method in methods:
        entry = run_method(prof, run_dir, method, on_fraction=on_fraction, progress=progress)
        policies[method] = dataclasses.replace(prof.policies[0], name_or_path=str(entry.path))
    frames = []
    for name, policy in policies.items():
        rows = pd.DataFrame(oracle_rewards(policy, run_dir, max_new_tokens=prof.evaluation.max_new_tokens))
        means = rows.groupby("category")["reward"].mean()
        means["all"] = rows["reward"].mean()
        frames.append(means.rename(name))
    return pd.DataFrame(frames)


# -------------------------------------------------------------------------------------------------- evaluation
def make_judge(prof: Profile, run_dir: str | Path):
    """The judge ``evaluation.judge`` names: the miniature oracle, a local reward model (a proxy), or
    alpaca_eval's official GPT-4-turbo annotator."""
    from simplemix.config import RewardConfig
    from simplemix.evaluation import AlpacaEvalJudge, ScoreJudge
    from simplemix.reward import load_reward_model

    judge = prof.evaluation.judge
    if judge == "oracle":
        oracle = RewardConfig(model=ModelConfig(name_or_path="miniature:oracle"))
        return ScoreJudge(load_reward_model(oracle, run_dir), name="miniature oracle")
    if judge == "reward_model":
        return ScoreJudge(load_reward_model(prof.reward, run_dir),
                          name=f"reward-model proxy ({prof.reward.model.name_or_path}; not leaderboard-comparable)")
    return AlpacaEvalJudge()


def evaluate_policy(prof: Profile, run_dir: str | Path, policy: ModelConfig, name: str, *,
                    progress: bool = True) -> Entry:
    """Stage ``evaluation``: greedy outputs of ``policy`` on the evaluation prompts (AlpacaEval's 805, or the
    miniature world's held-out split) in alpaca_eval's ``model_outputs.json``, and the judge's
    ``annotations.json`` against the baseline."""
    import json

    from simplemix.config import SamplingConfig
    from simplemix.evaluation import baseline_outputs, model_outputs, win_rate, write_model_outputs
    from simplemix.onpolicy import _world_inputs
    from simplemix.sampling import load_backend

    miniature = prof.datasets[0].format == "miniature"
    ev = prof.evaluation
    sampling = dataclasses.replace(SamplingConfig(), backend=prof.sampling.backend,
                                   batch_token_budget=prof.sampling.batch_token_budget,
                                   tensor_parallel_size=prof.sampling.tensor_parallel_size, seed=prof.sampling.seed)
    config = {"policy": dataclasses.asdict(policy), "max_new_tokens": ev.max_new_tokens,
              "num_prompts": ev.num_prompts, "judge": ev.judge, "backend": sampling.backend,
              "prompts": "miniature-eval" if miniature else "alpaca_eval_805",
              "judge_model": dataclasses.asdict(prof.reward.model) if ev.judge == "reward_model" else None}
    inputs = _world_inputs("miniature:sft-policy", run_dir) if miniature else {}

    def compute(out: Path) -> dict:
        baseline = baseline_outputs(run_dir, miniature=miniature)
        backend = load_backend(sampling, policy, run_dir)
        outputs = model_outputs(backend, name, baseline, max_new_tokens=ev.max_new_tokens,
                                num_prompts=ev.num_prompts, seed=sampling.seed, progress=progress)
        del backend
        write_model_outputs(outputs, out / "model_outputs.json")
        judge = make_judge(prof, run_dir)
        table = judge.annotate(outputs, baseline)
        (out / "annotations.json").write_text(table.to_json(orient="records", force_ascii=False, indent=1))
        wr = win_rate(table)
        return {"name": name, "judge": judge.name, "leaderboard_comparable": judge.comparable_with_leaderboard,
                "prompts": len(outputs), "win_rate": wr.win_rate, "standard_error": wr.standard_error}

    import simplemix.evaluation as evaluation_module

    code = f"{default_code_version(evaluate_policy)}+{default_code_version(evaluation_module).split('+')[-1]}"
    return RunStore(run_dir).run("evaluation", compute, config, inputs, code_version=code)


def load_evaluation(entry: Entry):
    """The annotation table of an ``evaluation`` entry."""
    import pandas as pd

    return pd.read_json(entry.path / "annotations.json", orient="records")


def is_miniature(prof: Profile) -> bool:
    return prof.datasets[0].format == "miniature"


def prompt_groups(prof: Profile, table):
    """Instruction -> category for an annotation table: the miniature task category, or the shipped WildChat
    label of the AlpacaEval prompt."""
    import pandas as pd

    if is_miniature(prof):
        return pd.Series(table["dataset"].to_numpy(), index=table["instruction"].to_numpy())
    from simplemix.categories import categories_of

    return pd.Series(categories_of(list(table["instruction"])), index=table["instruction"].to_numpy())


def shown_categories(prof: Profile) -> dict[str, str]:
    """The four categories the paper reports, as {category: short label}, in the profile's prompt world."""
    if is_miniature(prof):
        from simplemix.plotting import CATEGORY_LABELS

        return dict(CATEGORY_LABELS)
    from simplemix.categories import PAPER_CATEGORIES

    return {category: short for short, category in PAPER_CATEGORIES.items()}


def miniature_pool_annotations(run_dir: str | Path, seed: int = 0):
    """Every pool generator's answer to every held-out miniature prompt, judged by the oracle against the baseline
    (preference 1 + sigmoid of the reward gap): the miniature counterpart of AlpacaEval's 50 bundled generators."""
    import math
    import random

    import pandas as pd

    from simplemix.evaluation import baseline_outputs
    from simplemix.miniature import generators
    from simplemix.miniature.oracle import judge
    from simplemix.miniature.world import build_world

    baseline = baseline_outputs(run_dir, miniature=True)
    tasks = {t.prompt: t for t in build_world(run_dir, progress=False).tasks("eval")}
    rng, rows = random.Random(seed), []
    for style in generators.POOL:
        for index, base in enumerate(baseline):
            task = tasks[base["instruction"]]
            answer = generators.respond(style, task, rng)
            gap = judge(task, answer).reward - judge(task, base["output"]).reward
            rows.append({"generator_2": style.name, "instruction_index": index, "instruction": base["instruction"],
                         "len_1": len(base["output"]), "len_2": len(answer),
                         "preference": 1 + 1 / (1 + math.exp(-gap))})
    return pd.DataFrame(rows)


def miniature_difficulty(run_dir: str | Path, seed: int = 0):
    """Instruction difficulty of the held-out miniature prompts, derived as AlpacaEval's offline one is: the
    instruction effects of the joint model fitted to :func:`miniature_pool_annotations`."""
    from simplemix.evaluation import baseline_outputs, derive_difficulty

    instructions = [b["instruction"] for b in baseline_outputs(run_dir, miniature=True)]
    return derive_difficulty(miniature_pool_annotations(run_dir, seed), instructions=instructions)


def lc_of(prof: Profile, table, run_dir: str | Path | None = None):
    """The LC win rate of an annotation table with the difficulty its prompts have: alpaca_eval's (published or
    derived) for AlpacaEval; for miniature prompts, derived from the pool's generators (:func:`miniature_difficulty`)."""
    from simplemix.evaluation import instruction_difficulty, length_controlled

    if is_miniature(prof):
        if run_dir is None:
            raise ValueError("the LC of miniature prompts needs the run_dir of their world")
        return length_controlled(table, miniature_difficulty(run_dir),
                                 "derived from the miniature pool's generators (oracle judge)")
    return length_controlled(table, *instruction_difficulty())


def evaluate_methods(prof: Profile, run_dir: str | Path, methods: dict[str, str | None], *,
                     on_fraction: float | None = None, progress: bool = False) -> dict:
    """Train (or fetch) and evaluate each method; {label: (evaluation entry, annotation table)}. ``methods`` maps a
    display label to a method name, or to None for the SFT policy itself."""
    out = {}
    for label, method in methods.items():
        policy = prof.policies[0]
        if method is not None:
            trained = run_method(prof, run_dir, method, on_fraction=on_fraction, progress=progress)
            policy = dataclasses.replace(policy, name_or_path=str(trained.path))
        entry = evaluate_policy(prof, run_dir, policy, label, progress=progress)
        out[label] = (entry, load_evaluation(entry))
    return out


def benchmark_policy(prof: Profile, run_dir: str | Path, policy: ModelConfig, *, include_path=None,
                     limit: int | None = None) -> Entry:
    """Stage ``benchmarks``: ``evaluation.benchmarks`` through lm-evaluation-harness for ``policy`` (a LoRA result
    is evaluated as its base plus the adapter); ``results.json`` holds the tidy table and the paper's average."""
    import json

    from simplemix.harness import run_benchmarks, write_results
    from simplemix.onpolicy import _world_inputs
    from simplemix.sampling import resolve_model_path

    tasks = list(prof.evaluation.benchmarks)
    if not tasks:
        raise ValueError(f"profile {prof.name!r} lists no evaluation.benchmarks")
    path = resolve_model_path(policy.name_or_path, run_dir)
    model, model_args = path, {}
    adapter = Path(path) / "adapter_config.json"
    if adapter.exists():  # lm-eval's HF model applies the adapter itself
        model, model_args = json.loads(adapter.read_text())["base_model_name_or_path"], {"peft": path}
    config = {"policy": dataclasses.asdict(policy), "tasks": tasks, "limit": limit,
              "include_path": str(include_path) if include_path else None}

    def compute(out: Path) -> dict:
        result = run_benchmarks(model, tasks, include_path=include_path, limit=limit, model_args=model_args,
                                dtype=policy.torch_dtype if policy.torch_dtype != "auto" else "auto")
        write_results(result, out / "results.json")
        return {"average": result.average, "scores": result.scores()}

    return RunStore(run_dir).run("benchmarks", compute, config, _world_inputs(policy.name_or_path, run_dir),
                                 code_version=default_code_version(benchmark_policy))
