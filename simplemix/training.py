"""DPO training through TRL's ``DPOTrainer``: full fine-tuning, LoRA or QLoRA, as run-store stages.

TRL does the training. This module adds what it lacks: reference log-probs computed once per (policy, pair set,
max_length) and shared by every experiment on those pairs (stage ``ref-logps``); implicit-reward margins and
accuracies split by pair source (``rewards/margins_on``, ``rewards/accuracies_off``, ...); HyPO's online KL
term (:class:`HyPOTrainer`); and a ``train`` stage whose checkpoints live outside the store's temp dir, so a
killed run resumes where it stopped, and which under ``accelerate launch`` trains on every rank and stores once.

A :class:`~simplemix.config.TrainingConfig` reaches ``trl.DPOConfig`` through :data:`DPO_CONFIG_FIELDS` (its
fields that are DPOConfig fields, by their TRL names) and ``dpo_args`` (any further DPOConfig field, checked by
:func:`check_dpo_args`); the fields in :data:`NON_TRL_FIELDS` are ours. Models come in as
:class:`~simplemix.sampling.Policy` objects, and stages are keyed on ``policy.key``.
Owns the DPO/HyPO trainers and the ``ref-logps`` and ``train`` stages; imports config, store, data, sampling
and fused (never a world: the caller hands in resolved policies and pairs).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path

_rng = random.getstate()  # trl's import draws from Python's global RNG (rich seeds itself): put it back below
from simplemix.quiet import quiet  # noqa: E402

with quiet():  # their import-time lines (DeepSpeed's accelerator, tqdm's IProgress) are not the page's
    import torch  # noqa: E402
    from datasets import Features, List, Value  # noqa: E402
    import trl  # noqa: E402
    from trl import DPOConfig, DPOTrainer  # noqa: E402
    from trl.models.utils import unwrap_model_for_generation  # noqa: E402
    from trl.trainer.dpo_trainer import DataCollatorForPreference  # noqa: E402
    from trl.trainer.utils import use_adapter  # noqa: E402
    from transformers import TrainerCallback  # noqa: E402

random.setstate(_rng)

from simplemix.config import ConfigError, HypoConfig, ModelConfig, QuantizationConfig, TrainingConfig
from simplemix.fused import fused_sample_ids
from simplemix.sampling import DTYPES, Policy, as_policy, causal_lm
from simplemix.store import Entry, RunStore, default_code_version, stable_hash

REF_COLUMNS = ("ref_chosen_logps", "ref_rejected_logps")
SOURCE_COLUMN = "is_on_policy"  # 1 for an on-policy pair, 0 for off-policy; numeric so it batches as a tensor
PROMPT_KEYS = ("hypo_prompt_ids", "hypo_prompt_mask")  # left-padded prompts the HyPO collator adds
EXTRA_KEYS = (SOURCE_COLUMN, *PROMPT_KEYS)  # batch entries that are ours, not model inputs
METHODS = ("dpo", "hypo")
_MESSAGES = List({"role": Value("string"), "content": Value("string")})
TRL_FEATURES = Features({"prompt": _MESSAGES, "chosen": _MESSAGES, "rejected": _MESSAGES,
                         "pair_id": Value("string"), SOURCE_COLUMN: Value("int64")})

_DPO_NAMES = frozenset(f.name for f in dataclasses.fields(DPOConfig))
_TRAINING_NAMES = tuple(f.name for f in dataclasses.fields(TrainingConfig))

#: TrainingConfig field -> the ``trl.DPOConfig`` field it sets. transformers 5 renamed gradient_checkpointing
#: to activation_checkpointing (TRL defaults it to True, and the old name warns): the new name where it exists.
DPO_CONFIG_FIELDS: dict[str, str] = {
    "beta": "beta",
    "learning_rate": "learning_rate",
    "num_train_epochs": "num_train_epochs",
    "per_device_train_batch_size": "per_device_train_batch_size",
    "gradient_accumulation_steps": "gradient_accumulation_steps",
    "lr_scheduler_type": "lr_scheduler_type",
    "warmup_steps": "warmup_steps",
    "max_length": "max_length",
    "loss_type": "loss_type",
    "bf16": "bf16",  # on CUDA only: on a CPU it raises or turns on slow bf16 autocast
    "gradient_checkpointing": ("activation_checkpointing" if "activation_checkpointing" in _DPO_NAMES
                               else "gradient_checkpointing"),
    "precompute_ref_log_probs": "precompute_ref_log_probs",
    "logging_steps": "logging_steps",
    "seed": "seed",
}

#: The TrainingConfig fields that are not DPOConfig fields, and what uses them. Every TrainingConfig field is
#: in DPO_CONFIG_FIELDS or here (tests check it), so a new field cannot be silently left out of the DPOConfig.
NON_TRL_FIELDS: dict[str, str] = {
    "finetuning": "load_model: full fine-tuning, or a PEFT LoraConfig on the (4-bit for QLoRA) base",
    "lora": "load_model: the PEFT LoraConfig of LoRA and QLoRA",
    "quantization": "load_model: the BitsAndBytesConfig of the QLoRA base",
    "hypo": "HyPOTrainer: the online KL term of method 'hypo'",
    "dpo_mix_p": "simplemix.methods: the rounds and fused weights of DPO-Mix-P",
    "accelerate_config": "simplemix.launch: the accelerate (DDP or DeepSpeed) config of a multi-GPU launch",
    "num_processes": "simplemix.launch: the number of processes of a multi-GPU launch, over every machine",
    "num_machines": "simplemix.launch: the machines of a multi-node launch",
    "checkpoint_min_interval_s": "train: the least time between two checkpoints (never part of a stage key)",
    "dpo_args": "dpo_config: further DPOConfig fields by their TRL names, passed through after check_dpo_args",
}

#: DPOConfig fields that simplemix sets itself (in dpo_config or train), so dpo_args may not: key -> why.
SET_BY_SIMPLEMIX: dict[str, str] = {
    "output_dir": "checkpoints live in <run_dir>/checkpoints/<key>/ and results in the run store",
    "use_cpu": "set from the device (CUDA when available)",
    "dataloader_pin_memory": "set from the device (CUDA when available)",
    "report_to": "the log history is saved as log_history.json in the train entry",
    "logging_first_step": "step 1 is always logged (its loss is ln 2 at the reference)",
    "save_strategy": "checkpoints are how a killed run resumes: ten per run (see training.checkpoint_min_interval_s)",
    "save_steps": "checkpoints are how a killed run resumes: ten per run (see training.checkpoint_min_interval_s)",
    "save_total_limit": "checkpoints are how a killed run resumes: ten per run, the newest kept",
    "resume_from_checkpoint": "a killed run resumes from its newest complete checkpoint by itself",
    "run_name": "it is the name of the training run (train(name=...))",
    "disable_tqdm": "it follows progress= (train(progress=...))",
    "max_steps": "pass max_steps to train (--max-steps on the command line); it is part of the stage key",
    "model_init_kwargs": "the models are loaded by simplemix from the policy's ModelConfig",
    "trust_remote_code": "set it on the policy's ModelConfig (policies[i].trust_remote_code)",
    "deepspeed": "multi-GPU launches take their DeepSpeed config from training.accelerate_config",
}

#: dpo_args that change the reference log-probs themselves (which tokens are scored, dropout, precision), so
#: they are part of the ``ref-logps`` key; the rest (optimizer, schedule, ...) leave it shared.
REFERENCE_DPO_ARGS = ("truncation_mode", "disable_dropout", "fp16", "tf32", "use_liger_kernel")


def check_dpo_args(cfg: TrainingConfig, source: str = "training.dpo_args") -> None:
    """Raise ConfigError unless every key of ``cfg.dpo_args`` is a ``trl.DPOConfig`` field that neither a recipe
    key (:data:`DPO_CONFIG_FIELDS`) nor simplemix (:data:`SET_BY_SIMPLEMIX`) sets; unknown keys get a
    did-you-mean. Cheap (no model, no DPOConfig is built): call it before any expensive work."""
    if missing := {ours: name for ours, name in DPO_CONFIG_FIELDS.items() if name not in _DPO_NAMES}:
        raise ValueError(f"TrainingConfig fields map to DPOConfig fields this TRL ({trl.__version__}) lacks: {missing}")
    by_trl_name = {name: ours for ours, name in DPO_CONFIG_FIELDS.items()} | {ours: ours for ours in DPO_CONFIG_FIELDS}
    problems = []
    for key in cfg.dpo_args:
        if key in by_trl_name:
            problems.append(f"{source}.{key}: is set by the recipe key training.{by_trl_name[key]}; set that instead")
        elif key in SET_BY_SIMPLEMIX:
            problems.append(f"{source}.{key}: is set by simplemix ({SET_BY_SIMPLEMIX[key]})")
        elif key not in _DPO_NAMES:
            problems.append(f"{source}.{key}: not a trl.DPOConfig field (TRL {trl.__version__}){_did_you_mean(key)}")
    if problems:
        raise ConfigError("; ".join(problems))


def _did_you_mean(key: str) -> str:
    if key in _TRAINING_NAMES:
        return f"; it is a recipe key: set training.{key}"
    hint = difflib.get_close_matches(str(key), sorted(_DPO_NAMES | set(_TRAINING_NAMES)), n=1)
    if not hint:
        return ""
    ours = {name: o for o, name in DPO_CONFIG_FIELDS.items()}.get(hint[0], hint[0])
    if ours in _TRAINING_NAMES:
        return f"; did you mean the recipe key 'training.{ours}'?"
    return f"; did you mean '{hint[0]}'?"


def dpo_config(cfg: TrainingConfig, output_dir: str | Path, **overrides) -> DPOConfig:
    """A ``trl.DPOConfig``: cfg's fields through :data:`DPO_CONFIG_FIELDS`, then ``cfg.dpo_args``, then the
    device, logging and checkpoint settings we want, then ``overrides``."""
    check_dpo_args(cfg)
    kwargs = {name: getattr(cfg, ours) for ours, name in DPO_CONFIG_FIELDS.items()}
    kwargs[DPO_CONFIG_FIELDS["loss_type"]] = list(cfg.loss_type)
    kwargs |= cfg.dpo_args
    cuda = torch.cuda.is_available()
    kwargs |= {
        "output_dir": str(output_dir), "bf16": cfg.bf16 and cuda, "use_cpu": not cuda, "report_to": [],
        "dataloader_pin_memory": cuda, "logging_first_step": True,
        # a fraction: ten checkpoints per run whatever its length; only the newest is kept
        "save_strategy": "steps", "save_steps": 0.1, "save_total_limit": 1,
    }
    return DPOConfig(**{**kwargs, **overrides})


def _compute_dtype(q: QuantizationConfig) -> str:
    if q.bnb_4bit_compute_dtype == "bfloat16" and not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
        # bitsandbytes' CPU path would run bf16 matmuls in slow emulation (or fail): compute in float32 there.
        return "float32"
    return q.bnb_4bit_compute_dtype


def load_model(cfg: TrainingConfig, policy: Policy | ModelConfig):
    """(model, tokenizer, peft_config or None) for ``cfg.finetuning``; with PEFT, TRL's reference is the base
    with adapters disabled, so no second model is loaded."""
    from transformers import AutoTokenizer, BitsAndBytesConfig

    model_cfg = as_policy(policy).model
    path = model_cfg.name_or_path
    common = {"revision": model_cfg.revision, "trust_remote_code": model_cfg.trust_remote_code}
    tokenizer = AutoTokenizer.from_pretrained(path, **common)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    kwargs = {"dtype": "auto" if model_cfg.torch_dtype == "auto" else getattr(torch, DTYPES[model_cfg.torch_dtype])}
    if model_cfg.attn_implementation:
        kwargs["attn_implementation"] = model_cfg.attn_implementation
    if cfg.finetuning == "qlora":
        q = cfg.quantization
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=q.load_in_4bit, bnb_4bit_quant_type=q.bnb_4bit_quant_type,
            bnb_4bit_use_double_quant=q.bnb_4bit_use_double_quant,
            bnb_4bit_compute_dtype=getattr(torch, _compute_dtype(q)))
    model = causal_lm(path, **common, **kwargs)
    if cfg.finetuning == "full":
        return model, tokenizer, None
    from peft import LoraConfig, prepare_model_for_kbit_training

    if cfg.finetuning == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.gradient_checkpointing)
    return model, tokenizer, LoraConfig(**dataclasses.asdict(cfg.lora), task_type="CAUSAL_LM")


# ----------------------------------------------------------------------------------------------- the trainers
@dataclass
class SourceCollator(DataCollatorForPreference):
    """TRL's preference collator that also passes each pair's ``is_on_policy`` flag through and, with
    ``with_prompts`` (HyPO), the prompts alone, left-padded for generation."""

    with_prompts: bool = False

    def torch_call(self, examples):
        batch = super().torch_call(examples)
        if SOURCE_COLUMN in examples[0]:
            batch[SOURCE_COLUMN] = torch.tensor([e[SOURCE_COLUMN] for e in examples])
        if self.with_prompts:
            prompts = [e["prompt_ids"] for e in examples]
            width = max(map(len, prompts))
            batch[PROMPT_KEYS[0]] = torch.tensor([[self.pad_token_id] * (width - len(p)) + p for p in prompts])
            batch[PROMPT_KEYS[1]] = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        return batch


class SimpleMixDPOTrainer(DPOTrainer):
    """``DPOTrainer`` that takes reference log-probs already in the dataset and logs reward margins per source."""

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()  # else remove_unused_columns drops the flag
        if SOURCE_COLUMN not in self._signature_columns:
            self._signature_columns.append(SOURCE_COLUMN)

    def _precompute_ref_logps(self, dataset, name, batch_size):
        if set(REF_COLUMNS) <= set(dataset.column_names):
            return dataset
        return super()._precompute_ref_logps(dataset, name, batch_size)

    def compute_ref_log_probs(self, model, inputs):
        return super().compute_ref_log_probs(model, {k: v for k, v in inputs.items() if k not in EXTRA_KEYS})

    def _compute_loss(self, model, inputs, return_outputs):
        on_policy = inputs.pop(SOURCE_COLUMN, None)
        # TRL keeps per-pair log-probs to itself; forward hooks see the model outputs it computes them from:
        # the policy's first, then (without precomputed ones) the reference's.
        outputs = []
        modules = [model] + ([self.ref_model] if self.ref_model is not None else [])
        hooks = [m.register_forward_hook(lambda _m, _i, out: outputs.append(out)) for m in modules]
        try:
            loss = super()._compute_loss(model, inputs, return_outputs)
        finally:
            for hook in hooks:
                hook.remove()
        if on_policy is not None and self.ld_alpha is None:
            self._log_by_source(outputs, inputs, on_policy)
        return loss

    def _log_by_source(self, outputs, inputs, on_policy) -> None:
        """TRL's rewards/margins and rewards/accuracies, for the on- and the off-policy pairs of the batch apart."""
        seq_len = inputs["completion_mask"].size(1) - 1

        def logps(out):
            return out.log_probs[:, -seq_len:].detach().sum(dim=1).chunk(2)

        chosen, rejected = logps(outputs[0])
        if self.precompute_ref_logps:
            ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            ref_chosen, ref_rejected = logps(outputs[1])
        chosen_rewards, rejected_rewards = self.beta * (chosen - ref_chosen), self.beta * (rejected - ref_rejected)
        chosen_rewards, rejected_rewards, on_policy = self.accelerator.gather(
            (chosen_rewards, rejected_rewards, on_policy))
        metrics = self._metrics["train" if self.model.training else "eval"]
        for flag, suffix in ((1, "on"), (0, "off")):
            rows = on_policy == flag
            if rows.any():
                metrics[f"rewards/margins_{suffix}"].append((chosen_rewards - rejected_rewards)[rows].mean().item())
                metrics[f"rewards/accuracies_{suffix}"].append(
                    (chosen_rewards > rejected_rewards)[rows].float().mean().item())


class HyPOTrainer(SimpleMixDPOTrainer):
    """HyPO (Song et al., 2024): DPO on the batch's pairs plus ``kl_coef`` times KL(pi_theta || pi_ref),
    estimated on ``num_samples`` fresh samples from pi_theta for each of the batch's prompts. Needs a
    :class:`SourceCollator` with ``with_prompts=True`` (see :func:`make_trainer`)."""

    def __init__(self, *args, hypo: HypoConfig, **kwargs):
        self.hypo = hypo
        super().__init__(*args, **kwargs)

    def _compute_loss(self, model, inputs, return_outputs):
        prompt_ids, prompt_mask = (inputs.pop(key) for key in PROMPT_KEYS)
        result = super()._compute_loss(model, inputs, return_outputs)
        loss = result[0] if return_outputs else result
        surrogate, kl, lengths = self._kl_term(model, prompt_ids, prompt_mask)
        metrics = self._metrics["train" if self.model.training else "eval"]
        metrics["hypo/kl"].append(self.accelerator.gather(kl.detach()).mean().item())
        metrics["hypo/sample_length"].append(self.accelerator.gather(lengths.float()).mean().item())
        # value: the KL estimate (so the logged loss reads DPO + lambda * KL); gradient: the surrogate's
        loss = loss + self.hypo.kl_coef * (kl.detach() + surrogate - surrogate.detach())
        return (loss, result[1]) if return_outputs else loss

    def _kl_term(self, model, prompt_ids, prompt_mask):
        eos, pad = self.processing_class.eos_token_id, self.processing_class.pad_token_id
        with torch.no_grad(), unwrap_model_for_generation(model, self.accelerator) as unwrapped:
            new = sample_policy(unwrapped, prompt_ids, prompt_mask, num_samples=self.hypo.num_samples,
                                max_new_tokens=self.hypo.max_new_tokens, eos_token_id=eos, pad_token_id=pad)
        ids, mask, completion = with_samples(prompt_ids, prompt_mask, new, self.hypo.num_samples, eos)
        logps = sequence_logps(model, ids, mask, completion)
        with torch.no_grad():
            if self.ref_model is not None:
                ref_logps = sequence_logps(self.ref_model, ids, mask, completion)
            else:  # PEFT: the base with adapters disabled
                with use_adapter(self.accelerator.unwrap_model(self.model), adapter_name=None):
                    ref_logps = sequence_logps(model, ids, mask, completion)
        surrogate, kl = loo_kl_surrogate(logps, ref_logps, self.hypo.num_samples)
        return surrogate, kl, completion.sum(1)


# ------------------------------------------------------------------------------------------------------- HyPO
def loo_kl_surrogate(logps, ref_logps, num_samples: int):
    """(surrogate, KL estimate) for KL(pi_theta || pi_ref) from ``num_samples`` samples of pi_theta per prompt,
    grouped prompt-major. The surrogate's gradient is REINFORCE with a leave-one-out baseline, an unbiased
    estimate of the gradient of the KL: E[(r - b) grad log pi_theta(y)] with r = sg(log pi_theta/pi_ref)."""
    if num_samples < 2 or logps.numel() % num_samples:
        raise ValueError(f"need num_samples >= 2 dividing {logps.numel()} samples, got {num_samples}")
    ratio = (logps.detach() - ref_logps.detach()).view(-1, num_samples)
    baseline = (ratio.sum(1, keepdim=True) - ratio) / (num_samples - 1)
    surrogate = ((ratio - baseline) * logps.view(-1, num_samples)).mean()
    return surrogate, ratio.mean()


def sample_policy(model, prompt_ids, prompt_mask, *, num_samples: int, max_new_tokens: int, eos_token_id: int,
                  pad_token_id: int, generator=None):
    """``num_samples`` pure samples (temperature 1, no top-k or top-p: the KL is that of pi_theta itself) per
    left-padded prompt, prompt-major; the new token ids only."""
    ids = prompt_ids.repeat_interleave(num_samples, dim=0)
    mask = prompt_mask.repeat_interleave(num_samples, dim=0)
    return fused_sample_ids(model, None, ids, mask, weights=(1.0, 0.0), max_new_tokens=max_new_tokens,
                            generator=generator, eos_token_id=eos_token_id, pad_token_id=pad_token_id)


def with_samples(prompt_ids, prompt_mask, new, num_samples: int, eos_token_id: int):
    """(input_ids, attention_mask, completion_mask) of each left-padded prompt followed by its samples; the
    completion is every sampled token up to and including the first eos."""
    is_eos = (new == eos_token_id).long()
    completion = (is_eos.cumsum(1) - is_eos == 0).long()
    ids = torch.cat([prompt_ids.repeat_interleave(num_samples, dim=0).to(new.device), new], dim=1)
    mask = torch.cat([prompt_mask.repeat_interleave(num_samples, dim=0).to(new.device), completion], dim=1)
    return ids, mask, completion


def sequence_logps(model, input_ids, attention_mask, completion_mask):
    """Sum of log pi(token) over each row's completion (the last ``completion_mask.size(1)`` positions) for
    left-padded prompts; differentiable when called with grad enabled."""
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions, use_cache=False).logits
    width = completion_mask.size(1)
    logps = logits[:, -width - 1:-1].float().log_softmax(-1).gather(-1, input_ids[:, -width:, None]).squeeze(-1)
    return (logps * completion_mask).sum(1)


def make_trainer(model, tokenizer, args, dataset, peft_config=None, *, hypo: HypoConfig | None = None,
                 ref_model=None):
    """A SimpleMixDPOTrainer (a HyPOTrainer when ``hypo`` is given) with the source-carrying collator,
    configured as TRL would its own."""
    collator = SourceCollator(pad_token_id=tokenizer.pad_token_id, max_length=args.max_length,
                              truncation_mode=args.truncation_mode, pad_to_multiple_of=args.pad_to_multiple_of,
                              with_prompts=hypo is not None)
    common = {"ref_model": ref_model, "args": args, "train_dataset": dataset, "processing_class": tokenizer,
              "data_collator": collator, "peft_config": peft_config}
    if hypo is not None:
        return HyPOTrainer(model, hypo=hypo, **common)
    return SimpleMixDPOTrainer(model, **common)


def trl_pairs(pairs):
    """Normalized pairs in TRL's format (:func:`simplemix.data.to_trl`) with ``pair_id`` and ``is_on_policy``,
    sorted by pair_id so the trained model depends on the set of pairs, not on their order. Built from Python
    lists in one step: a chain of Dataset.map/add_column/select costs more than the training of a small run."""
    from datasets import Dataset

    rows = pairs.select_columns(["pair_id", "source", "prompt", "chosen", "rejected"]).to_dict()
    flags = [int(source == "on") for source in rows["source"]]
    order = sorted(range(len(flags)), key=lambda i: (rows["pair_id"][i], flags[i]))
    turn = lambda text: [{"role": "assistant", "content": text}]  # noqa: E731
    return Dataset.from_dict({
        "prompt": [rows["prompt"][i] for i in order],
        "chosen": [turn(rows["chosen"][i]) for i in order],
        "rejected": [turn(rows["rejected"][i]) for i in order],
        "pair_id": [rows["pair_id"][i] for i in order],
        SOURCE_COLUMN: [flags[i] for i in order],
    }, features=TRL_FEATURES)


def trainable(pairs, tokenizer, cfg: TrainingConfig) -> list[bool]:
    """Per pair, whether TRL's DPOTrainer trains on it. With ``truncation_mode`` keep_start (its default) it drops a
    pair whose prompt fills ``max_length``, the prompt being the tokens the chat-templated prompt shares with prompt +
    chosen and prompt + rejected. Applied before the pair budget, so every method trains on the whole budget."""
    if cfg.max_length is None or cfg.dpo_args.get("truncation_mode", "keep_start") != "keep_start":
        return [True] * len(pairs)
    key = (pairs._fingerprint, tokenizer.name_or_path, len(tokenizer), cfg.max_length)
    if key not in _TRAINABLE:
        def ids(messages, **kwargs) -> list[int]:
            return tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False, **kwargs)

        def common(a: list[int], b: list[int]) -> int:
            return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))

        keep = []
        for prompt, chosen, rejected in zip(pairs["prompt"], pairs["chosen"], pairs["rejected"]):
            prompt_ids = ids(prompt, add_generation_prompt=True)
            length = min(common(prompt_ids, ids(prompt + [{"role": "assistant", "content": chosen}])),
                         common(prompt_ids, ids(prompt + [{"role": "assistant", "content": rejected}])))
            keep.append(length < cfg.max_length)
        _TRAINABLE[key] = keep
    return _TRAINABLE[key]


_TRAINABLE: dict[tuple, list[bool]] = {}


def pairs_fingerprint(pairs) -> str:
    """The key of a pair set: its sorted (pair_id, source) rows, duplicates counted."""
    return stable_hash(sorted(zip(pairs["pair_id"], pairs["source"])))


def _reference(cfg: TrainingConfig) -> dict:
    """What the reference model is: the base (full and LoRA share it) or the 4-bit base of QLoRA."""
    if cfg.finetuning != "qlora":
        return {"quantization": None}
    return {"quantization": dataclasses.asdict(cfg.quantization) | {
        "bnb_4bit_compute_dtype": _compute_dtype(cfg.quantization)}}


def _reference_request(pairs, cfg: TrainingConfig, policy: Policy) -> tuple[dict, dict]:
    """(config, inputs) of the ``ref-logps`` stage of ``pairs``: the policy key, the unique pairs, max_length,
    the reference kind, the precision and the dpo_args of :data:`REFERENCE_DPO_ARGS`."""
    config = {"policy": policy.key, "max_length": cfg.max_length, **_reference(cfg),
              "bf16": cfg.bf16 and torch.cuda.is_available(),  # as dpo_config applies it: the precision of the pass
              "dpo_args": {k: v for k, v in cfg.dpo_args.items() if k in REFERENCE_DPO_ARGS}}
    return config, {"pairs": stable_hash(sorted(set(pairs["pair_id"])))}


def _reference_table(dataset, requested: int):
    """The ``ref-logps`` files and info from a dataset TRL has tokenized, filtered and given reference columns:
    one row per pair_id, and how many of the ``requested`` unique pairs TRL dropped as too long."""
    table = dataset.select_columns(["pair_id", *REF_COLUMNS]).to_pandas().drop_duplicates("pair_id")
    return table, {"rows": len(table), "dropped_prompt_too_long": requested - len(table)}


def _commit_reference(store: RunStore, request: tuple[dict, dict], table, info: dict) -> Entry:
    """Store a reference pass that ran in a training trainer; its time is in that train stage's wall_s."""
    def write(out: Path) -> dict:
        table.to_parquet(out / "ref_logps.parquet", index=False)
        return info | {"computed_in": "train (the training trainer's __init__; its wall_s holds this pass)"}

    return store.run("ref-logps", write, *request, code_version=default_code_version(sys.modules[__name__]))


def _prepare_for_trainer(model, cfg: TrainingConfig):
    if cfg.finetuning == "qlora":
        # bitsandbytes 0.50's CPU eval-mode path repacks 4-bit weights and fails on dimensions that are not a
        # multiple of its block (functional.py:1720); train mode skips it, and with dropout off (TRL turns it
        # off) computes the same function. TRL's reference pass runs in the trainer's __init__.
        model.train()
    return model


def reference_logps(pairs, cfg: TrainingConfig, policy: Policy | ModelConfig, run_dir: str | Path,
                    progress: bool = True) -> Entry:
    """Stage ``ref-logps``: ``ref_logps.parquet`` (pair_id, ref_chosen_logps, ref_rejected_logps), computed by
    TRL's own precompute once per (policy key, unique pairs, max_length, reference kind, and the dpo_args of
    :data:`REFERENCE_DPO_ARGS`). :func:`train` computes it in its own trainer when it is missing; this is for
    callers that need it before training (the multi-GPU launcher, the on-policiness filter's test)."""
    check_dpo_args(cfg)
    policy = as_policy(policy)

    def compute(out: Path) -> dict:
        with quiet(bars=progress):
            first = {pid: i for i, pid in reversed(list(enumerate(pairs["pair_id"])))}
            model, tokenizer, peft_config = load_model(cfg, policy)
            args = dpo_config(cfg, out / "trainer", precompute_ref_log_probs=True, disable_tqdm=not progress)
            # a quantized model cannot enter a Trainer without adapters; with them disabled it is the base anyway
            trainer = make_trainer(_prepare_for_trainer(model, cfg), tokenizer, args,
                                   trl_pairs(pairs.select(sorted(first.values()))),
                                   peft_config if cfg.finetuning == "qlora" else None)
            table, info = _reference_table(trainer.train_dataset, len(first))
            table.to_parquet(out / "ref_logps.parquet", index=False)
            shutil.rmtree(out / "trainer", ignore_errors=True)
            return info

    return RunStore(run_dir).run("ref-logps", compute, *_reference_request(pairs, cfg, policy))


def with_reference(dataset, ref: Entry):
    """``dataset`` (from trl_pairs) with the stage's reference columns; pairs TRL drops as too long are left out."""
    import pandas as pd

    table = pd.read_parquet(ref.path / "ref_logps.parquet").set_index("pair_id")
    dataset = dataset.filter(lambda row: row["pair_id"] in table.index)
    rows = table.loc[dataset["pair_id"]]
    for column in REF_COLUMNS:
        dataset = dataset.add_column(column, rows[column].tolist())
    return dataset


class CheckpointPacing(TrainerCallback):
    """Skips a scheduled checkpoint that comes sooner than ``min_seconds`` after the last one (or the start)."""

    def __init__(self, min_seconds: float):
        self.min_seconds, self.last = min_seconds, time.monotonic()

    def on_step_end(self, args, state, control, **kwargs):
        if control.should_save:
            if time.monotonic() - self.last < self.min_seconds:
                control.should_save = False
            else:
                self.last = time.monotonic()
        return control


def _complete_checkpoint(directory: Path) -> Path | None:
    """The newest checkpoint with its trainer state written; a kill mid-save leaves a newer, partial one."""
    done = [p for p in directory.glob("checkpoint-*") if (p / "trainer_state.json").exists()]
    return max(done, key=lambda p: int(p.name.split("-")[1]), default=None)


def _train_config(cfg: TrainingConfig, method: str, max_steps: int | None) -> dict:
    """The parts of a TrainingConfig that change a run of ``method`` (not DPO-Mix-P's loop settings)."""
    return {"method": method, "dpo": {name: getattr(cfg, name) for name in DPO_CONFIG_FIELDS},
            "dpo_args": dict(cfg.dpo_args),
            "finetuning": cfg.finetuning, "lora": dataclasses.asdict(cfg.lora) if cfg.finetuning != "full" else None,
            **_reference(cfg), "hypo": dataclasses.asdict(cfg.hypo) if method == "hypo" else None,
            "max_steps": max_steps}


def train(pairs, cfg: TrainingConfig, policy: Policy | ModelConfig, run_dir: str | Path, *, name: str,
          method: str = "dpo", max_steps: int | None = None, progress: bool = True,
          stored_only: bool = False) -> Entry:
    """Stage ``train``: DPO (or HyPO) of ``policy`` on ``pairs``; the model (or adapter), its tokenizer and
    ``log_history.json``. Keyed on ``policy.key``, the training config and the pairs. A killed run resumes from
    ``<run_dir>/checkpoints/<key>/``. ``stored_only``: return the stored entry or raise, never train."""
    if method not in METHODS:
        raise ValueError(f"unknown training method {method!r}; expected one of {METHODS}")
    check_dpo_args(cfg)
    policy = as_policy(policy)
    store = RunStore(run_dir)
    # the key is needed before running (it names the checkpoint dir), so the code version is computed here, by
    # the rule run() uses by default; the trainer classes and helpers of this module are part of the stage
    code_version = default_code_version(sys.modules[__name__])
    ref_request = _reference_request(pairs, cfg, policy) if cfg.precompute_ref_log_probs else None
    ref_key = store.key_for("ref-logps", *ref_request, code_version) if ref_request else None
    if ref_request and _world_size() > 1 and store.get("ref-logps", ref_key) is None:
        reference_logps(pairs, cfg, policy, run_dir, progress)  # before the ranks part (see launch.py)
    config = {"policy": policy.key, **_train_config(cfg, method, max_steps)}
    inputs = {"pairs": pairs_fingerprint(pairs), **({"ref": ref_key} if ref_key else {})}
    key = store.key_for("train", config, inputs, code_version)
    checkpoints = Path(run_dir) / "checkpoints" / key
    if stored_only:
        if (entry := store.get("train", key)) is None:
            raise LookupError(f"no stored training run {name!r} (train/{key}) in {run_dir}")
        return entry

    def fit(out: Path) -> dict:
        """Train and save into ``out``; under ``accelerate launch`` every rank runs this, the main one saves.
        Without stored reference log-probs, TRL computes them in this trainer's __init__ and they are stored as
        the ``ref-logps`` stage (one trainer, one model load and one tokenization instead of two)."""
        with quiet(bars=progress):
            dataset = trl_pairs(pairs)
            ref = store.get("ref-logps", ref_key) if ref_key else None
            if ref is not None:
                dataset = with_reference(dataset, ref)
            model, tokenizer, peft_config = load_model(cfg, policy)
            ref_model = None
            if method == "hypo" and cfg.finetuning == "full":
                ref_model = load_model(cfg, policy)[0].eval()  # the KL term needs pi_ref on fresh samples
            args = dpo_config(cfg, checkpoints, run_name=name, disable_tqdm=not progress,
                              **({"max_steps": max_steps} if max_steps else {}))
            if ref_key and ref is None:
                _prepare_for_trainer(model, cfg)
            trainer = make_trainer(model, tokenizer, args, dataset, peft_config,
                                   hypo=cfg.hypo if method == "hypo" else None, ref_model=ref_model)
            if ref_key and ref is None:
                table, info = _reference_table(trainer.train_dataset, len(set(pairs["pair_id"])))
                if _commit_reference(store, ref_request, table, info).hit:
                    # another process stored them first: train on the stored values, as every later run will
                    trainer.train_dataset = with_reference(trainer.train_dataset.remove_columns(list(REF_COLUMNS)),
                                                           store.get("ref-logps", ref_key))
            trainer.add_callback(CheckpointPacing(cfg.checkpoint_min_interval_s))
            if not progress:
                from transformers import PrinterCallback

                trainer.remove_callback(PrinterCallback)  # what Trainer prints in place of the progress bar
            resume = _complete_checkpoint(checkpoints) if checkpoints.exists() else None
            result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
            trainer.save_model(str(out))  # gathers ZeRO-3 shards; writes on the main process only
            if trainer.accelerator.is_main_process:
                tokenizer.save_pretrained(out)
                (out / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
            trained = trainer.train_dataset  # after TRL dropped the pairs whose prompt fills max_length
            on = sum(trained[SOURCE_COLUMN])
            return {"name": name, "method": method, "rows": len(trained), "on_policy": on,
                    "off_policy": len(trained) - on, "global_step": trainer.state.global_step,
                    "train_loss": result.training_loss, "resumed_from": resume.name if resume else None,
                    "num_processes": trainer.accelerator.num_processes}

    if _world_size() > 1:
        entry = _train_distributed(store, fit, config, inputs, code_version, checkpoints)
    else:
        entry = store.run("train", fit, config, inputs, code_version=code_version)
    shutil.rmtree(checkpoints, ignore_errors=True)
    return entry


def _world_size() -> int:
    import os

    return int(os.environ.get("WORLD_SIZE", "1"))


def _train_distributed(store: RunStore, fit, config, inputs, code_version, checkpoints: Path) -> Entry:
    """Every rank trains (a rank cannot wait on the store's lock while the others wait on it in a collective);
    the main process then moves the result into the store, and the others read the committed entry."""
    from accelerate import PartialState

    key = checkpoints.name
    if (entry := store.get("train", key)) is not None:
        return entry
    state = PartialState()
    staging = checkpoints / "result"
    info = fit(staging)
    state.wait_for_everyone()
    if state.is_main_process:
        def commit(out: Path) -> dict:
            shutil.copytree(staging, out, dirs_exist_ok=True)
            return info

        store.run("train", commit, config, inputs, code_version=code_version)
    state.wait_for_everyone()
    return store.get("train", key)


def train_dpo(pairs, cfg: TrainingConfig, policy: Policy | ModelConfig, run_dir: str | Path, **kwargs) -> Entry:
    """DPO of ``policy`` on ``pairs`` (see :func:`train`)."""
    return train(pairs, cfg, policy, run_dir, method="dpo", **kwargs)


def train_hypo(pairs, cfg: TrainingConfig, policy: Policy | ModelConfig, run_dir: str | Path, **kwargs) -> Entry:
    """HyPO of ``policy``: DPO on ``pairs`` (the paper's off-policy pairs) plus the online KL term of cfg.hypo."""
    return train(pairs, cfg, policy, run_dir, method="hypo", **kwargs)
