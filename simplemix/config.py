"""Profiles and stage configs: typed dataclasses, YAML recipes, validation before any compute.

A profile (``recipes/<name>.yaml``) holds one section per stage. Keys equal the dataclass fields
below; the training keys equal TRL's ``DPOConfig`` names, LoRA keys PEFT's ``LoraConfig`` names and
quantization keys transformers' ``BitsAndBytesConfig`` names, so a recipe reads like the libraries.
Owns the recipe schema; imports nothing else of simplemix.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from simplemix import resources

# Paper, Appendix H (Figure 9): the request appended to the conversation to elicit responses 2..N.
PAPER_DIVERSITY_PROMPT = (
    "Please generate another response that is different from all the previous ones. It can differ in "
    "aspects such as but not limited to tone, formality, strategy, judgment, conciseness, structure. "
    "It can also involve asking for clarity if the input prompt is unclear."
)
# The paper authors' HelpSteer2 binarization weights (attribute -> weight).
HELPSTEER2_WEIGHTS = {
    "helpfulness": 0.65, "correctness": 0.8, "coherence": 0.45, "complexity": 0.55, "verbosity": -0.4,
}


class ConfigError(ValueError):
    """A recipe or override is invalid; the message names the file and the dotted key."""


def _range(lo: float | None = None, hi: float | None = None, **kw: Any) -> dict:
    return {"min": lo, "max": hi, **kw}


def fraction(default: float) -> Any:
    """A field holding a ratio or fraction, validated to lie in [0, 1]."""
    return field(default=default, metadata=_range(0.0, 1.0))


def at_least(default: Any, lo: float) -> Any:
    return field(default=default, metadata=_range(lo))


@dataclass
class ModelConfig:
    """A model to load: a hub id, a local directory, or a name the profile's world resolves (``<world>:<name>``)."""

    name_or_path: str = field(default="", metadata={"required": True})
    revision: Optional[str] = None
    torch_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    attn_implementation: Optional[Literal["eager", "sdpa", "flash_attention_2"]] = None
    trust_remote_code: bool = False


@dataclass
class PolicyConfig(ModelConfig):
    """An SFT policy of the grid: the model, its short ``label`` (cell ids, tables) and the paper's model it
    stands for (``paper_name``, a ``base_model`` of the paper's Table 2; empty: the label)."""

    label: str = ""
    paper_name: str = ""


@dataclass
class DataConfig:
    """An off-policy preference dataset of the grid, with its short ``label``, the paper's dataset it stands
    for (``paper_name``: UltraFeedback or HelpSteer2) and the policy for rows that fail validation."""

    label: str = ""
    paper_name: str = ""
    format: Literal["ultrafeedback_raw", "ultrafeedback_binarized", "helpsteer2", "local"] = "local"
    path: str = field(default="", metadata={"required": True})
    split: Optional[str] = None
    max_rows: Optional[int] = at_least(None, 1)
    on_invalid: dict[str, Literal["error", "drop", "keep"]] = field(default_factory=dict)  # reason -> action
    helpsteer2_weights: dict[str, float] = field(default_factory=lambda: dict(HELPSTEER2_WEIGHTS))


@dataclass
class SamplingConfig:
    """On-policy generation: N samples per prompt from the SFT policy."""

    backend: Literal["transformers", "vllm"] = "transformers"
    num_samples: int = at_least(5, 2)
    temperature: float = at_least(0.7, 0.0)
    top_p: float = field(default=0.9, metadata=_range(0.0, 1.0, exclusive_min=True))
    max_new_tokens: int = at_least(512, 1)
    seed: int = 0
    tensor_parallel_size: int = at_least(1, 1)
    diversity: Literal["none", "prompting"] = "none"
    diversity_prompt: str = PAPER_DIVERSITY_PROMPT
    batch_token_budget: int = at_least(16384, 1)


@dataclass
class RewardConfig:
    """The reward model that labels pairs (the paper's oracle RM)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    batch_token_budget: int = at_least(16384, 1)
    max_length: int = at_least(4096, 1)
    rescore_off_policy: bool = True


@dataclass
class PairsConfig:
    """How N scored samples become one (chosen, rejected) pair."""

    selection: Literal["best_worst"] = "best_worst"
    min_margin: float = at_least(0.0, 0.0)


@dataclass
class FilterConfig:
    """Off-policy filtering (paper section 5.3): keep the top fraction by a criterion."""

    criterion: Literal["none", "quality", "on_policiness", "contrastiveness", "dissimilarity"] = "none"
    keep_fraction: float = fraction(1.0)


@dataclass
class MixingConfig:
    """SimpleMix: a fixed pair budget drawn from on- and off-policy pairs in a given ratio."""

    total_pairs: Optional[int] = at_least(None, 1)  # None: as many as the sources allow at this ratio
    on_policy_fraction: float = fraction(0.5)
    with_replacement: bool = False
    seed: int = 0
    off_policy_filter: FilterConfig = field(default_factory=FilterConfig)


@dataclass
class LoraConfig:
    """PEFT ``LoraConfig`` fields used for LoRA and QLoRA."""

    r: int = at_least(16, 1)
    lora_alpha: int = at_least(32, 1)
    lora_dropout: float = fraction(0.05)
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class QuantizationConfig:
    """transformers ``BitsAndBytesConfig`` fields for the 4-bit QLoRA base."""

    load_in_4bit: bool = True
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = "nf4"
    bnb_4bit_use_double_quant: bool = True
    bnb_4bit_compute_dtype: Literal["bfloat16", "float16", "float32"] = "bfloat16"


@dataclass
class HypoConfig:
    """HyPO: off-policy DPO plus kl_coef * KL(pi_theta || pi_ref) on num_samples online samples."""

    kl_coef: float = at_least(0.1, 0.0)
    num_samples: int = at_least(2, 2)
    max_new_tokens: int = at_least(256, 1)


@dataclass
class DpoMixPConfig:
    """DPO-Mix-P: iterative online DPO with samples from fused policy/reference logits."""

    rounds: int = at_least(2, 1)
    fused_weights: list[list[float]] = field(default_factory=lambda: [[1.5, -0.5], [0.5, 0.5]])


@dataclass
class TrainingConfig:
    """DPO training; every key from ``beta`` to ``seed`` is a TRL ``DPOConfig`` field of that name."""

    finetuning: Literal["full", "lora", "qlora"] = "full"
    beta: float = at_least(0.1, 0.0)
    learning_rate: float = field(default=5e-7, metadata=_range(0.0, exclusive_min=True))
    num_train_epochs: float = field(default=1.0, metadata=_range(0.0, exclusive_min=True))
    per_device_train_batch_size: int = at_least(8, 1)
    gradient_accumulation_steps: int = at_least(1, 1)
    lr_scheduler_type: str = "linear"
    warmup_steps: float = at_least(0.1, 0.0)
    max_length: int = at_least(2048, 1)
    loss_type: list[str] = field(default_factory=lambda: ["sigmoid"])
    bf16: bool = False
    gradient_checkpointing: bool = False
    precompute_ref_log_probs: bool = True
    logging_steps: int = at_least(10, 1)
    seed: int = 0
    lora: LoraConfig = field(default_factory=LoraConfig)
    quantization: QuantizationConfig = field(default_factory=QuantizationConfig)
    hypo: HypoConfig = field(default_factory=HypoConfig)
    dpo_mix_p: DpoMixPConfig = field(default_factory=DpoMixPConfig)
    accelerate_config: Optional[str] = None  # a file under recipes/accelerate/, for multi-GPU launches
    num_processes: int = at_least(1, 1)  # in all, over every machine (accelerate's num_processes)
    # machines of a multi-node launch; each runs `simplemix train` with MACHINE_RANK (or SLURM_NODEID) and
    # MAIN_PROCESS_IP / MAIN_PROCESS_PORT (or MASTER_ADDR / MASTER_PORT) in its environment
    num_machines: int = at_least(1, 1)
    # a killed run resumes from its newest checkpoint: ten per run, but none sooner than this after the last, so
    # a run of a few seconds writes none (checkpointing cost it more than its training) and a long one loses little
    checkpoint_min_interval_s: float = at_least(30.0, 0.0)
    dpo_args: dict[str, Any] = field(default_factory=dict)  # further trl.DPOConfig fields, by their TRL names


@dataclass
class EvaluationConfig:
    """AlpacaEval-style generation and judging, plus lm-evaluation-harness benchmarks."""

    max_new_tokens: int = at_least(2048, 1)
    # None: every evaluation prompt; N: a subset of N drawn in proportion to each category (at least one each), the
    # same subset for every model, so a quick evaluation still has every category its chapters plot
    num_prompts: Optional[int] = at_least(None, 1)
    judge: Literal["oracle", "reward_model", "alpaca_eval_gpt4_turbo"] = "oracle"
    bootstrap_samples: int = at_least(1000, 1)
    benchmarks: list[str] = field(default_factory=list)


@dataclass
class CellConfig:
    """One experiment of the grid: an SFT policy and a preference dataset, by their labels."""

    policy: str = field(default="", metadata={"required": True})
    dataset: str = field(default="", metadata={"required": True})


@dataclass
class GridConfig:
    """The profile's experiment grid (the paper's Table 2 is 2 policies x 2 datasets). ``cells`` empty: every
    policy with every dataset. ``primary``: the cell of the single-cell chapters (the paper's Figures 2-6 and
    Table 3 use Llama-3.1-8B-Instruct with UltraFeedback); empty: the first policy with the first dataset."""

    cells: list[CellConfig] = field(default_factory=list)
    primary: Optional[CellConfig] = None


@dataclass
class HardwareConfig:
    """What the profile expects to run on; printed by the book and the README."""

    device: Literal["cpu", "cuda"] = "cpu"
    num_gpus: int = at_least(0, 0)
    gpu_memory_gb: Optional[float] = at_least(None, 0.0)
    description: str = ""


@dataclass
class Profile:
    """One scale of the whole experiment: the same code path from a CPU to a GPU node.

    ``seeds`` lists the replicates every comparison of a chapter with a ``seeds`` parameter runs (chapters 02-06;
    each replicate its own sampling, mixing and training): replicate ``s`` offsets ``sampling.seed``,
    ``mixing.seed`` and ``training.seed`` by ``s`` together, so replicate 0 is the profile as written
    (``simplemix.experiments.replicate``). Non-empty, unique, >= 0."""

    name: str = field(default="", metadata={"required": True})
    description: str = ""
    seed: int = 0
    seeds: list[int] = field(default_factory=lambda: [0], metadata={"min_items": 1, "unique": True, "min": 0})
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    world: str = "hub"  # where models, data, judge and evaluation prompts come from: a name simplemix.world knows
    policies: list[PolicyConfig] = field(default_factory=list, metadata={"min_items": 1})
    datasets: list[DataConfig] = field(default_factory=list, metadata={"min_items": 1})
    grid: GridConfig = field(default_factory=GridConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    mixing: MixingConfig = field(default_factory=MixingConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------- building and checking


def build(cls: type, data: Any, *, source: str = "<dict>", key: str = "") -> Any:
    """Build dataclass ``cls`` from plain data, checking keys, types, ranges and required fields."""
    where = f"{source}: {key or '<top level>'}"
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping of {cls.__name__} fields, got {type(data).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}
    for k in data:
        if k not in names:
            hint = difflib.get_close_matches(str(k), names, n=1)
            did_you_mean = f"; did you mean '{hint[0]}'?" if hint else ""
            raise ConfigError(f"{source}: {_join(key, k)}: unknown key for {cls.__name__}{did_you_mean}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in names.items():
        path = _join(key, name)
        if name in data:
            values[name] = _coerce(hints[name], data[name], source, path)
        _check_field(f, values.get(name, _default(f)), source, path)
    return cls(**values)


def _default(f: dataclasses.Field) -> Any:
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _join(key: str, name: Any) -> str:
    return f"{key}.{name}" if key else str(name)


def _check_field(f: dataclasses.Field, value: Any, source: str, path: str) -> None:
    meta = f.metadata
    if meta.get("required") and value in ("", None):
        what = "model path" if f.name == "name_or_path" else "value"
        raise ConfigError(f"{source}: {path}: missing {what} (required)")
    if "min_items" in meta and len(value) < meta["min_items"]:
        raise ConfigError(f"{source}: {path}: needs at least {meta['min_items']} item(s)")
    if isinstance(value, list):
        if meta.get("unique") and len(set(value)) < len(value):
            repeated = sorted({v for v in value if value.count(v) > 1})
            raise ConfigError(f"{source}: {path}: items must be unique, {repeated} repeated in {value}")
        for i, item in enumerate(value):  # a list field's range applies to each item
            _check_field(dataclasses.field(metadata={k: meta[k] for k in ("min", "max") if k in meta}), item,
                         source, f"{path}[{i}]")
        return
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return
    lo, hi = meta.get("min"), meta.get("max")
    too_low = lo is not None and (value <= lo if meta.get("exclusive_min") else value < lo)
    if too_low or (hi is not None and value > hi):
        low = f"({lo}" if meta.get("exclusive_min") else f"[{lo}"
        bounds = f"{low}, {hi}]" if hi is not None else ("> " if meta.get("exclusive_min") else ">= ") + str(lo)
        raise ConfigError(f"{source}: {path}: {value!r} is outside {bounds}")


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _coerce(tp: Any, value: Any, source: str, path: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, source, path)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, source=source, key=path)
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{source}: {path}: {value!r} is not one of {list(args)}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {path}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(args[0], v, source, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {path}: expected a mapping, got {type(value).__name__} {value!r}")
        return {_coerce(args[0], k, source, path): _coerce(args[1], v, source, f"{path}.{k}") for k, v in value.items()}
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is float and isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 reads "1e-4" (no dot) as a string
    if not isinstance(value, tp) or (tp is int and isinstance(value, bool)):
        raise ConfigError(f"{source}: {path}: expected {tp.__name__}, got {type(value).__name__} {value!r}")
    return value


# --------------------------------------------------------------------------- recipes


def recipes_dir() -> Path:
    """Where named profiles live: $SIMPLEMIX_RECIPES, else the checkout's ``recipes/``."""
    env = os.environ.get("SIMPLEMIX_RECIPES")
    return Path(env) if env else resources.path("recipes")


def runs_root() -> Path:
    """Where run directories live: $SIMPLEMIX_RUNS, else the checkout's ``runs/`` (a source tree or an editable
    install), else ``./runs`` (an installed package has no checkout)."""
    if base := os.environ.get("SIMPLEMIX_RUNS"):
        return Path(base).expanduser().resolve()
    return resources.CHECKOUT / "runs" if resources.is_checkout() else Path.cwd().resolve() / "runs"


def profile_name(profile: str | os.PathLike) -> str:
    """A profile's name: its recipe's ``name`` key, else the recipe file's stem."""
    path = resolve_recipe(profile)
    try:
        name = (yaml.safe_load(path.read_text()) or {}).get("name")
    except yaml.YAMLError:
        name = None
    return str(name or path.stem)


def default_run_dir(profile: str | os.PathLike, runs: str | os.PathLike | None = None) -> Path:
    """The run directory of a profile for every command and chapter: ``<runs>/<profile name>``, ``runs`` defaulting
    to :func:`runs_root`."""
    return (Path(runs).expanduser().resolve() if runs else runs_root()) / profile_name(profile)


def profile_names() -> list[str]:
    return sorted(p.stem for p in recipes_dir().glob("*.yaml"))


def resolve_recipe(profile: str | os.PathLike) -> Path:
    """A profile name (``smoke``) or a path to a YAML file."""
    p = Path(profile)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ConfigError(f"{p}: recipe file not found")
        return p
    path = recipes_dir() / f"{profile}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown profile '{profile}'; known profiles: {', '.join(profile_names()) or 'none'} "
                          f"(in {recipes_dir()})")
    return path


def parse_overrides(items: list[str] | dict | None) -> dict:
    """``["training.beta=0.2", ...]`` (values parsed as YAML) or a flat dotted dict -> nested dict."""
    if not items:
        return {}
    flat = items if isinstance(items, dict) else {}
    if not isinstance(items, dict):
        for item in items:
            if "=" not in item:
                raise ConfigError(f"override '{item}': expected KEY=VALUE, e.g. training.beta=0.2")
            k, v = item.split("=", 1)
            flat[k.strip()] = yaml.safe_load(v)
    nested: dict = {}
    for dotted, v in flat.items():
        node = nested
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = v
    return nested


def _merge(base: dict | list, over: dict, where: str = "") -> dict | list:
    """``over`` merged into ``base``; in a list, a key that is an index (``datasets.0.max_rows``) reaches one item."""
    if isinstance(base, list):
        out = list(base)
        for k, v in over.items():
            if not (isinstance(k, str) and k.isdigit() or isinstance(k, int)) or int(k) >= len(out):
                raise ConfigError(f"override '{where}.{k}': {where} is a list of {len(out)} item(s); give an index "
                                  f"from 0 to {len(out) - 1}, e.g. {where}.0")
            i = int(k)
            out[i] = _merge(out[i], v, f"{where}.{i}") if isinstance(v, dict) and isinstance(out[i], (dict, list)) else v
        return out
    out = dict(base)
    for k, v in over.items():
        key = f"{where}.{k}" if where else str(k)
        out[k] = _merge(out[k], v, key) if isinstance(v, dict) and isinstance(out.get(k), (dict, list)) else v
    return out


def load_profile(profile: str | os.PathLike = "smoke", overrides: list[str] | dict | None = None) -> Profile:
    """Read, merge overrides into, and validate a profile; raises ConfigError before any compute."""
    path = resolve_recipe(profile)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    source = str(path)
    _absolute_paths(data, path.parent)  # a recipe's relative paths are relative to its own folder
    over = parse_overrides(overrides)
    if over:
        data = _merge(data, _absolute_paths(over, Path.cwd()))  # a command line's, to the current directory
        source += " (with overrides)"
    prof = build(Profile, data, source=source)
    _label(prof, source)
    _check_paths(prof, source)
    return prof


def _label(prof: Profile, source: str) -> None:
    """Give every policy and dataset a label (default: the last part of its path) and check the grid's cells
    name them; labels must be unique, since cell ids and stage keys are made of them."""
    for kind, items in (("policies", prof.policies), ("datasets", prof.datasets)):
        for item in items:
            item.label = item.label or Path(item.name_or_path if kind == "policies" else item.path).name.split(":")[-1]
            item.paper_name = item.paper_name or item.label
            if not _NAME.fullmatch(item.label):
                raise ConfigError(f"{source}: {kind}: label {item.label!r} must be letters, digits, '.', '_', '-'")
        labels = [i.label for i in items]
        if len(set(labels)) < len(labels):
            raise ConfigError(f"{source}: {kind}: labels must be unique, got {labels} (set 'label' to tell them apart)")
    known = {"policy": [p.label for p in prof.policies], "dataset": [d.label for d in prof.datasets]}
    cells = [("grid.cells", i, c) for i, c in enumerate(prof.grid.cells)]
    cells += [("grid.primary", None, prof.grid.primary)] if prof.grid.primary else []
    for key, index, cell in cells:
        for part in ("policy", "dataset"):
            if getattr(cell, part) not in known[part]:
                where = f"{key}[{index}].{part}" if index is not None else f"{key}.{part}"
                raise ConfigError(f"{source}: {where}: {getattr(cell, part)!r} is not a {part} label of this "
                                  f"profile; known: {known[part]}")


_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


DATA_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv", ".arrow")


def _local(value: str, base: Path) -> bool:
    """Whether a model or data location names a local path rather than a hub id or a world name (``<world>:``):
    it starts like a path, ends like a data file, or exists under ``base``."""
    if not isinstance(value, str) or not value or ":" in value.split("/")[0]:
        return False
    return (value.startswith(("/", "./", "../", "~")) or value.endswith(DATA_SUFFIXES)
            or (base / value).exists())


def _absolute_paths(data: dict, base: Path) -> dict:
    """Make the local model and data paths of raw recipe ``data`` absolute against ``base``, in place."""
    def fix(node: dict, key: str) -> None:
        value = node.get(key) if isinstance(node, dict) else None
        if _local(value, base):
            node[key] = str((base / Path(value).expanduser()).resolve())

    for item in data.get("policies") or []:
        fix(item, "name_or_path")
    for item in data.get("datasets") or []:
        fix(item, "path")
    if isinstance(data.get("reward"), dict):
        fix(data["reward"].get("model"), "name_or_path")
    for key in ("policies", "datasets"):  # --set datasets.0.path=... arrives as {"0": {...}}
        if isinstance(data.get(key), dict):
            for item in data[key].values():
                fix(item, "name_or_path" if key == "policies" else "path")
    return data


def _check_paths(prof: Profile, source: str) -> None:
    """Local model and data paths (made absolute at load) must exist; hub ids and world names are resolved later."""
    checks = [(f"policies[{i}].name_or_path", m.name_or_path) for i, m in enumerate(prof.policies)]
    checks.append(("reward.model.name_or_path", prof.reward.model.name_or_path))
    checks += [(f"datasets[{i}].path", d.path) for i, d in enumerate(prof.datasets)]
    for key, value in checks:
        if _local(value, Path("/")) and not Path(value).expanduser().exists():
            raise ConfigError(f"{source}: {key}: path '{value}' does not exist (a recipe's relative paths resolve "
                              "against the recipe's folder, a --set value's against the current directory; the "
                              "tiny-hub profile's artifacts are built by `python -m simplemix.tinyhub`)")
    if prof.training.accelerate_config:
        acc = Path(prof.training.accelerate_config)
        if not (acc.exists() or (recipes_dir() / "accelerate" / acc).exists()):
            raise ConfigError(f"{source}: training.accelerate_config: '{acc}' not found "
                              f"(looked in . and {recipes_dir() / 'accelerate'})")


def dump(prof: Profile) -> str:
    """The resolved profile as YAML, in field order."""
    return yaml.safe_dump(prof.to_dict(), sort_keys=False, width=110)
