"""The paper's methods: each method's pairs at one shared pair budget, then its training run, in one cell.

Methods (paper section 4 and Table 2): ``off`` (off-policy DPO), ``on`` (on-policy DPO), ``simplemix`` (a
fraction r of on-policy pairs, the rest off-policy), ``hypo`` (off-policy DPO plus the online KL term) and
``dpo_mix_p`` (iterative online DPO whose samples come from fused policy/SFT logits). Every method of a cell
trains on the same number of pairs, as in the paper. Owns the pair budget, the method pair sets and the
DPO-Mix-P loop; imports config, store, data, sampling, reward, fused, world, onpolicy, curation and training.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from simplemix.config import ConfigError, Profile
from simplemix.sampling import Policy
from simplemix.store import Entry

if TYPE_CHECKING:
    from simplemix.world import Cell, World

METHODS = ("off", "on", "simplemix", "hypo", "dpo_mix_p")
FUSED_BATCH = 64  # prompts per batch of DPO-Mix-P's fused sampler (its per-token loop costs the same at any width)
ON_FRACTION = {"off": 0.0, "on": 1.0, "hypo": 0.0}  # simplemix takes its r from the profile (or the caller)


def check(prof: Profile, method: str | None = None) -> None:
    """What can be checked before any expensive work: the method name and the recipe's TRL keys."""
    from simplemix.training import check_dpo_args

    if method is not None and method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
    check_dpo_args(prof.training)


def pair_budget(prof: Profile, n_on: int, n_off: int) -> int:
    """The number of pairs every method trains on: ``mixing.total_pairs``, or as many as both sources have."""
    total = prof.mixing.total_pairs or min(n_on, n_off)
    if not prof.mixing.with_replacement and total > min(n_on, n_off):
        raise ConfigError(f"mixing.total_pairs={total}, but pure on- and off-policy DPO need that many pairs of "
                          f"each source: {n_on} on-policy and {n_off} off-policy pairs exist whose prompt is shorter than "
                          f"training.max_length={prof.training.max_length}")
    return total


def sources(world: World, cell: Cell, progress: bool = True):
    """(on-policy pairs, off-policy pairs after ``mixing.off_policy_filter``) of a cell."""
    from simplemix.curation import off_policy_filter
    from simplemix.onpolicy import load_pairs, on_policy_pairs

    on = load_pairs(on_policy_pairs(world, cell, progress=progress)["pairs"])
    off = world.off_policy_pairs(cell, progress)
    on, off = trainable_only(world, cell, on), trainable_only(world, cell, off)
    flt = world.profile.mixing.off_policy_filter
    if flt.criterion != "none":
        model = tokenizer = None
        if flt.criterion in ("on_policiness", "dissimilarity"):
            from simplemix.sampling import load_policy

            model, tokenizer = load_policy(world.sft_policy(cell))
        off = off_policy_filter(off, flt.criterion, flt.keep_fraction, model=model, tokenizer=tokenizer,
                                progress=progress)[0]
    return on, off


def trainable_only(world: World, cell: Cell, pairs):
    """``pairs`` without those TRL would drop for a prompt that fills ``training.max_length`` (see
    :func:`simplemix.training.trainable`), by the cell's SFT tokenizer."""
    from simplemix.training import trainable

    keep = trainable(pairs, _tokenizer(world.sft_policy(cell)), world.profile.training)
    return pairs if all(keep) else pairs.select([i for i, k in enumerate(keep) if k])


def too_long(world: World, cell: Cell, progress: bool = True) -> dict[str, dict[str, int]]:
    """Per source, the pairs of the cell and those left out of every method for a prompt that fills
    ``training.max_length``: what a chapter reports beside the pair budget."""
    from simplemix.onpolicy import load_pairs, on_policy_pairs
    from simplemix.training import trainable

    tokenizer, cfg = _tokenizer(world.sft_policy(cell)), world.profile.training
    pools = {"on": load_pairs(on_policy_pairs(world, cell, progress=progress)["pairs"]),
             "off": world.off_policy_pairs(cell, progress)}
    return {name: {"pairs": len(ds), "too_long": len(ds) - sum(trainable(ds, tokenizer, cfg))}
            for name, ds in pools.items()}


def _tokenizer(policy: Policy):
    from transformers import AutoTokenizer

    cfg = policy.model
    key = (cfg.name_or_path, cfg.revision)
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = AutoTokenizer.from_pretrained(cfg.name_or_path, revision=cfg.revision,
                                                         trust_remote_code=cfg.trust_remote_code)
    return _TOKENIZERS[key]


_TOKENIZERS: dict = {}


def budget(world: World, cell: Cell, progress: bool = True) -> int:
    """The cell's pair budget (see :func:`pair_budget`)."""
    on, off = sources(world, cell, progress)
    return pair_budget(world.profile, len(on), len(off))


def method_pairs(world: World, cell: Cell, method: str, on_fraction: float | None = None, progress: bool = True):
    """The training pairs of ``method`` (not DPO-Mix-P, which makes its own each round) at the cell's budget."""
    from simplemix.curation import mix

    if method not in ("off", "on", "simplemix", "hypo"):
        raise ValueError(f"method {method!r} has no fixed pair set; expected off, on, simplemix or hypo")
    prof = world.profile
    on, off = sources(world, cell, progress)
    total = pair_budget(prof, len(on), len(off))
    r = ON_FRACTION.get(method, prof.mixing.on_policy_fraction if on_fraction is None else on_fraction)
    return mix(on, off, total, r, prof.mixing.seed, prof.mixing.with_replacement)


def run_name(method: str, on_fraction: float | None, prof: Profile) -> str:
    """The name a method's training run is logged under (``simplemix-r0.5``, ``off``, ...)."""
    if method == "simplemix":
        return f"simplemix-r{on_fraction if on_fraction is not None else prof.mixing.on_policy_fraction:g}"
    return method


def _round_pairs(world: World, cell: Cell, policy: Policy, prompts, round_index: int, progress: bool) -> Entry:
    """Stage ``dpo-mix-p-pairs``: fused samples from ``policy`` and the SFT model for ``prompts``, scored by the
    reward model, as best/worst pairs."""
    from simplemix.data import write_jsonl

    prof, sft = world.profile, world.sft_policy(cell)
    mp, s = prof.training.dpo_mix_p, prof.sampling
    config = {"policy": policy.key, "sft": sft.key, "round": round_index, "fused_weights": mp.fused_weights,
              "num_samples": s.num_samples, "max_new_tokens": s.max_new_tokens, "temperature": s.temperature,
              "top_p": s.top_p, "seed": s.seed, "reward": world.reward_key(), "pairs": dataclasses.asdict(prof.pairs)}

    def compute(out) -> dict:
        from simplemix.fused import dpo_mix_p_samples
        from simplemix.reward import build_pairs
        from simplemix.sampling import load_policy

        model, tokenizer = load_policy(policy)
        reference, _ = load_policy(sft)
        drawn = dpo_mix_p_samples(model, reference, tokenizer, prompts.messages, num_samples=s.num_samples,
                                  fused_weights=mp.fused_weights, max_new_tokens=s.max_new_tokens,
                                  temperature=s.temperature, top_p=s.top_p, seed=s.seed + 1000 * round_index,
                                  batch_size=FUSED_BATCH, progress=progress)
        del model, reference
        texts = [[m.sample.text for m in row] for row in drawn]
        flat = world.reward().score([p for p, row in zip(prompts.messages, texts) for _ in row], sum(texts, []))
        scores, at = [], 0
        for row in texts:
            scores.append(flat[at:at + len(row)])
            at += len(row)
        rows, counts = build_pairs(prompts.messages, texts, scores, min_margin=prof.pairs.min_margin,
                                   prompt_ids=prompts.ids, origin=f"dpo-mix-p-round{round_index}",
                                   sampler={"method": "dpo_mix_p", "round": round_index,
                                            "fused_weights": mp.fused_weights})
        write_jsonl(out / "pairs.jsonl", rows)
        return counts

    return world.store.run("dpo-mix-p-pairs", compute, config, {"prompts": prompts.key})


def dpo_mix_p(world: World, cell: Cell, *, total_pairs: int | None = None, max_steps: int | None = None,
              progress: bool = True, train_fn=None, upto_round: int | None = None) -> list[Entry]:
    """DPO-Mix-P for ``training.dpo_mix_p.rounds`` rounds; the train entry of each round, the last is the result.

    The cell's training prompts are shuffled once (``mixing.seed``) and cut into one disjoint slice per round.
    Round t samples from the current policy fused with the SFT model, keeps ``total_pairs`` / T of its best/worst
    pairs and runs DPO from the current policy, which is also that round's reference (iterative DPO as in Shi et
    al.), so the whole loop trains on the same number of pairs as the other methods. ``train_fn`` replaces
    :func:`simplemix.training.train` (the multi-GPU launcher's hook); ``upto_round`` stops after that round.
    """
    import numpy as np

    from simplemix.onpolicy import load_pairs
    from simplemix.training import train

    prof, train_fn = world.profile, train_fn or train
    rounds = prof.training.dpo_mix_p.rounds
    total_pairs = total_pairs or budget(world, cell, progress)
    prompts = world.training_prompts(cell)
    order = np.random.default_rng(prof.mixing.seed).permutation(len(prompts)).tolist()
    policy, entries = world.sft_policy(cell), []
    for t, part in enumerate(np.array_split(order, rounds)):
        want = total_pairs // rounds + (t < total_pairs % rounds)
        subset = prompts.subset(part)
        made = _round_pairs(world, cell, policy, subset, t, progress)
        pairs = trainable_only(world, cell, load_pairs(made))
        if len(pairs) < want:
            raise ValueError(f"DPO-Mix-P round {t} of cell {cell.id}: {len(pairs)} pairs from {len(subset)} prompts, "
                             f"{want} needed for a budget of {total_pairs} pairs over {rounds} rounds; lower "
                             "mixing.total_pairs or raise sampling.num_samples")
        pairs = pairs.shuffle(seed=prof.mixing.seed + t).select(range(want))
        entry = train_fn(pairs, prof.training, policy, world.run_dir, name=f"dpo_mix_p-round{t}",
                         max_steps=max_steps, progress=progress)
        entries.append(entry)
        policy = Policy.trained(entry, world.sft_policy(cell))
        if upto_round is not None and t >= upto_round:
            break
    return entries


def train_method(world: World, cell: Cell, method: str, *, on_fraction: float | None = None,
                 max_steps: int | None = None, progress: bool = True, train_fn=None,
                 upto_round: int | None = None) -> list[Entry]:
    """Train ``method`` in ``cell`` as the profile says; its train entries (one per DPO-Mix-P round, else one).
    ``train_fn`` replaces :func:`simplemix.training.train` (see :mod:`simplemix.launch`)."""
    from simplemix.training import train

    check(world.profile, method)
    if method == "dpo_mix_p":
        return dpo_mix_p(world, cell, max_steps=max_steps, progress=progress, train_fn=train_fn,
                         upto_round=upto_round)
    pairs = method_pairs(world, cell, method, on_fraction, progress)
    return [(train_fn or train)(pairs, world.profile.training, world.sft_policy(cell), world.run_dir,
                                name=run_name(method, on_fraction, world.profile),
                                method="hypo" if method == "hypo" else "dpo", max_steps=max_steps, progress=progress)]
