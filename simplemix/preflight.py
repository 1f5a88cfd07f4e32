"""Preflight: everything that can go wrong before any compute, checked at once and reported together.

Every model's config and tokenizer is read (no weights): a policy must be a causal LM, a reward model (and a
reward-model judge) a one-label sequence classifier, each with a chat template; the pair budget must fit the
pairs the data can give; benchmark names must be lm-eval's. ``simplemix run``, ``onpolicy`` and ``train`` call
:func:`check` first, so a typo costs seconds, not a sampling run. Owns these checks; imports config, harness,
plan and world.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import TYPE_CHECKING

from simplemix.config import ConfigError

if TYPE_CHECKING:
    from simplemix.world import World

CAUSAL_LM = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


def _load_config(name: str, revision, trust_remote_code: bool):
    """(config, tokenizer, problem): the model's config and tokenizer from a local folder or the hub cache."""
    from transformers import AutoConfig, AutoTokenizer

    kwargs = {"revision": revision, "trust_remote_code": trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(name, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(name, **kwargs)
    except (OSError, ValueError) as e:
        offline = " (HF_HUB_OFFLINE is set: only models already in the hub cache can be read)" \
            if os.environ.get("HF_HUB_OFFLINE") == "1" else ""
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return None, None, f"cannot be read{offline}: {first}"
    return config, tokenizer, None


def model_problems(model, role: str, key: str) -> list[str]:
    """What is wrong with ``model`` (a ModelConfig) in ``role`` ("policy" or "reward model"), each naming ``key``."""
    name = model.name_or_path
    if role == "policy" and Path(name, "adapter_config.json").is_file():
        return []  # a LoRA result: its base model was checked as the policy it was trained from
    config, tokenizer, problem = _load_config(name, model.revision, model.trust_remote_code)
    if problem:
        return [f"{key} {name!r} {problem}"]
    architectures = list(getattr(config, "architectures", None) or [])
    found = ", ".join(architectures) or "no architectures in its config.json"
    out = []
    if role == "policy" and not any(a.endswith(CAUSAL_LM) for a in architectures):
        out.append(f"{key} {name!r} is not a causal language model ({found}); a policy generates text")
    if role == "reward model":
        if not any(a.endswith("ForSequenceClassification") for a in architectures):
            out.append(f"{key} {name!r} is not a sequence-classification reward model ({found}); loading it as one "
                       "would give it an untrained, random score head")
        elif getattr(config, "num_labels", 1) != 1:
            out.append(f"{key} {name!r} has {config.num_labels} labels; a reward model scores with one")
    if not getattr(tokenizer, "chat_template", None):
        out.append(f"{key} {name!r} has no chat template; conversations cannot be rendered for it (set "
                   "tokenizer.chat_template and save the tokenizer)")
    return out


def problems(world: "World", cells=None) -> list[str]:
    """Every problem preflight finds in ``world``'s profile for ``cells`` (default: the whole grid)."""
    from simplemix.plan import KNOWN_PROMPTS

    prof = world.profile
    cells = list(cells) if cells is not None else world.cells("grid")
    found: list[str] = []
    if world.kind == "hub":
        seen = set()
        for i, p in enumerate(prof.policies):
            if p.name_or_path not in seen and any(c.policy.label == p.label for c in cells):
                seen.add(p.name_or_path)
                found += model_problems(p, "policy", f"policies[{i}].name_or_path")
        # on-policy pairs are always scored by the reward model (and so is the judge "reward_model")
        found += model_problems(prof.reward.model, "reward model", "reward.model.name_or_path")
    if prof.sampling.backend == "vllm" and importlib.util.find_spec("vllm") is None:
        found.append("sampling.backend vllm needs the gpu extra (pip install 'simplemix[gpu]'); or set "
                     "sampling.backend=transformers")
    if prof.evaluation.judge == "alpaca_eval_gpt4_turbo":
        if not os.environ.get("OPENAI_API_KEY"):
            found.append("evaluation.judge alpaca_eval_gpt4_turbo calls the OpenAI API: set OPENAI_API_KEY")
        if importlib.util.find_spec("alpaca_eval") is None:
            found.append("evaluation.judge alpaca_eval_gpt4_turbo needs the eval extra: pip install 'simplemix[eval]'")
    total = prof.mixing.total_pairs
    if total and not prof.mixing.with_replacement:
        for data in {cell.dataset.label: cell.dataset for cell in cells}.values():
            n = world.expected_prompts(data, KNOWN_PROMPTS)
            if n is not None and total > n:
                found.append(f"mixing.total_pairs={total} is more than the {n} prompts of dataset "
                             f"{data.label!r} can give (one on-policy and at most one off-policy pair a prompt)")
    if prof.evaluation.benchmarks:
        from simplemix import harness

        try:
            names = [task for _, task, _ in harness.resolve_tasks(prof.evaluation.benchmarks)]
            manager = harness._task_manager(names, None, None)
            harness._check_known(names, manager.all_tasks, None)
        except (ValueError, ImportError) as e:
            found.append(f"evaluation.benchmarks: {e}")
    return found


def check(world: "World", cells=None) -> None:
    """Raise one ConfigError listing every problem :func:`problems` finds, before any compute."""
    found = problems(world, cells)
    if found:
        listed = "\n".join(f"  - {p}" for p in found)
        raise ConfigError(f"preflight of profile {world.profile.name!r} found {len(found)} problem(s), before any "
                          f"compute:\n{listed}")
