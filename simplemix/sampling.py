"""Generation from a policy: model loading, two backends, diversity modes.

Owns :class:`Policy` (a loadable model and the identity stage keys know it by) and everything that turns a
policy and chat prompts into samples. Imports only :mod:`simplemix.config`; the world resolves model names
to loadable policies before they reach this module.

Both backends take chat prompts, render them with the policy's own chat template
(``add_generation_prompt``) and return, per prompt, N samples with their text, token count and
finish reason. ``transformers`` (always available) sorts prompts by length and batches them by a
token budget with left padding; ``vllm`` (the ``gpu`` extra) hands token ids to one engine.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from simplemix.config import ModelConfig, SamplingConfig

DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


@dataclass(frozen=True)
class Sample:
    """One generated response and how it ended."""

    text: str
    num_tokens: int
    finish_reason: str  # "stop" (end-of-sequence token) or "length" (max_new_tokens reached)


@dataclass(frozen=True)
class Policy:
    """A model to load and what stage keys know it by.

    ``model.name_or_path`` is a hub id or a local directory (the world resolves its own names first).
    ``key`` is the JSON-able identity every stage that uses the model is keyed on: the model config for a
    hub model, the run-store entry behind a model a world or a training run built.
    """

    model: ModelConfig
    key: dict
    label: str = ""

    @classmethod
    def of(cls, model: ModelConfig, label: str = "") -> "Policy":
        """A hub or local model, keyed by its loading config (a PolicyConfig's label and paper name are not)."""
        plain = plain_model(model)
        return cls(plain, {"model": dataclasses.asdict(plain)}, label or Path(plain.name_or_path).name)

    @classmethod
    def trained(cls, entry, base: "Policy", label: str = "") -> "Policy":
        """The result of a ``train`` stage entry (a model or LoRA adapter directory), loaded like ``base``."""
        model = dataclasses.replace(base.model, name_or_path=str(entry.path))
        return cls(model, {"train": entry.key}, label or entry.manifest.get("info", {}).get("name", entry.key))


def plain_model(model: ModelConfig) -> ModelConfig:
    """The ModelConfig fields of ``model`` (a PolicyConfig also carries labels that loading never uses)."""
    return ModelConfig(**{f.name: getattr(model, f.name) for f in dataclasses.fields(ModelConfig)})


def as_policy(policy: "Policy | ModelConfig") -> Policy:
    return policy if isinstance(policy, Policy) else Policy.of(policy)


def load_policy(policy: "Policy | ModelConfig"):
    """(model, tokenizer) through ``from_pretrained``, left-padded for generation."""
    import torch
    from transformers import AutoTokenizer

    cfg = as_policy(policy).model
    path = cfg.name_or_path
    tokenizer = AutoTokenizer.from_pretrained(path, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    dtype = "auto" if cfg.torch_dtype == "auto" else getattr(torch, DTYPES[cfg.torch_dtype])
    kwargs = {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}
    if torch.cuda.is_available():  # the transformers backend samples and evaluates on the GPU when there is one,
        kwargs["device_map"] = {"": torch.cuda.current_device()}  # loaded there directly (no CPU copy of 8B)
    model = causal_lm(path, revision=cfg.revision, dtype=dtype, trust_remote_code=cfg.trust_remote_code, **kwargs)
    return model.eval(), tokenizer


SMALL_MODEL = 20_000_000  # parameters: a CPU runs a model below this fastest on one thread (benchmarks/bench_threads)


def causal_lm(path: str, **kwargs):
    """``AutoModelForCausalLM.from_pretrained``; a LoRA adapter directory (a LoRA/QLoRA training result) is
    loaded onto its base and merged, so every caller gets a plain model. A small model on a CPU sets the process
    to one intra-op thread (:func:`threads_for`)."""
    from transformers import AutoModelForCausalLM

    if (Path(path) / "adapter_config.json").exists():
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(path, **kwargs).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    threads_for(model)
    return model


def threads_for(model) -> int:
    """The intra-op thread count for ``model``: one for a model under :data:`SMALL_MODEL` parameters on a CPU
    (torch's default spreads each tiny op over every core, which is slower alone and several times slower beside
    another CPU-bound job), else the count the process started with. Returns the count in effect."""
    import torch

    if not _START_THREADS:
        _START_THREADS.append(torch.get_num_threads())
    small = next(model.parameters()).device.type == "cpu" and model.num_parameters() < SMALL_MODEL
    torch.set_num_threads(1 if small else _START_THREADS[0])
    return torch.get_num_threads()


_START_THREADS: list[int] = []


def render(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of a conversation ready for the assistant's turn, by the model's own chat template."""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)


def to_sample(tokenizer, new_ids: list[int]) -> Sample:
    """A Sample from generated ids: up to and including the first end-of-sequence token, if any."""
    eos = tokenizer.eos_token_id
    n = new_ids.index(eos) + 1 if eos in new_ids else len(new_ids)
    text = tokenizer.decode(new_ids[:n], skip_special_tokens=True).strip()
    return Sample(text, n, "stop" if eos in new_ids else "length")


def generate(model, tokenizer, prompts: list[list[dict]], *, max_new_tokens: int, temperature: float = 0.0,
             top_p: float = 1.0, num_return_sequences: int = 1, seed: int = 0, batch_token_budget: int = 8192,
             progress: bool = False) -> list[list[Sample]]:
    """``num_return_sequences`` samples per prompt (greedy when temperature is 0), in prompt order."""
    import torch
    from tqdm import tqdm

    encoded = [render(tokenizer, p) for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    results: list[list[Sample]] = [[] for _ in prompts]
    bar = tqdm(total=len(prompts) * num_return_sequences, desc="generate", unit="sample", disable=not progress)
    start = 0
    while start < len(order):
        # the longest prompt of a batch comes last (sorted), so width = its length + new tokens
        stop = start + 1
        while stop < len(order) and (stop - start + 1) * num_return_sequences * (
                len(encoded[order[stop]]) + max_new_tokens) <= batch_token_budget:
            stop += 1
        batch = order[start:stop]
        width = len(encoded[batch[-1]])
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(encoded[i])) + encoded[i] for i in batch])
        mask = torch.tensor([[0] * (width - len(encoded[i])) + [1] * len(encoded[i]) for i in batch])
        torch.manual_seed(seed + start)  # per batch, so results do not depend on what ran before
        # top_k=0: transformers otherwise applies a hidden top-k of 50, which vLLM and the paper do not
        sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": 0} if temperature > 0 else {
            "do_sample": False}
        with torch.no_grad():
            out = model.generate(input_ids=ids.to(model.device), attention_mask=mask.to(model.device),
                                 max_new_tokens=max_new_tokens,
                                 num_return_sequences=num_return_sequences, pad_token_id=tokenizer.pad_token_id,
                                 eos_token_id=tokenizer.eos_token_id, **sampling)
        for row, new in enumerate(out[:, width:].tolist()):
            results[batch[row // num_return_sequences]].append(to_sample(tokenizer, new))
        bar.update(len(batch) * num_return_sequences)
        start = stop
    bar.close()
    return results


class Backend(Protocol):
    """What the on-policy engine needs from a generation backend."""

    name: str

    def generate(self, prompts: list[list[dict]], *, n: int, temperature: float, top_p: float,
                 max_new_tokens: int, seed: int, progress: bool = False) -> list[list[Sample]]: ...


class TransformersBackend:
    """Batched ``model.generate`` on the policy loaded through ``from_pretrained``."""

    name = "transformers"

    def __init__(self, policy: Policy | ModelConfig, batch_token_budget: int = 8192):
        self.model, self.tokenizer = load_policy(policy)
        self.batch_token_budget = batch_token_budget

    def generate(self, prompts, *, n, temperature, top_p, max_new_tokens, seed, progress=False):
        return generate(self.model, self.tokenizer, prompts, max_new_tokens=max_new_tokens, temperature=temperature,
                        top_p=top_p, num_return_sequences=n, seed=seed,
                        batch_token_budget=self.batch_token_budget, progress=progress)


class VLLMBackend:
    """One vLLM engine; prompts go in as token ids so the chat template's BOS is not added twice."""

    name = "vllm"

    def __init__(self, policy: Policy | ModelConfig, tensor_parallel_size: int = 1, seed: int = 0):
        from transformers import AutoTokenizer
        from vllm import LLM

        model_cfg = as_policy(policy).model
        path = model_cfg.name_or_path
        self.tokenizer = AutoTokenizer.from_pretrained(path, revision=model_cfg.revision)
        self.llm = LLM(model=path, revision=model_cfg.revision, tensor_parallel_size=tensor_parallel_size,
                       dtype=model_cfg.torch_dtype, seed=seed, trust_remote_code=model_cfg.trust_remote_code)

    def generate(self, prompts, *, n, temperature, top_p, max_new_tokens, seed, progress=False):
        from vllm import SamplingParams

        params = SamplingParams(n=n, temperature=temperature, top_p=top_p if temperature > 0 else 1.0,
                                max_tokens=max_new_tokens, seed=seed)
        requests = [{"prompt_token_ids": render(self.tokenizer, p)} for p in prompts]
        outputs = self.llm.generate(requests, params, use_tqdm=progress)
        return [[Sample(c.text.strip(), len(c.token_ids), "length" if c.finish_reason == "length" else "stop")
                 for c in out.outputs] for out in outputs]


def load_backend(cfg: SamplingConfig, policy: Policy | ModelConfig) -> Backend:
    """The backend the profile asks for; vLLM needs the ``gpu`` extra and says so when it is missing."""
    if cfg.backend == "vllm":
        try:
            import vllm  # noqa: F401
        except ImportError:
            raise ImportError("sampling.backend is 'vllm' but vllm is not installed: pip install -c "
                              "constraints-gpu.txt -e '.[gpu]', or set sampling.backend=transformers") from None
        return VLLMBackend(policy, cfg.tensor_parallel_size, cfg.seed)
    return TransformersBackend(policy, cfg.batch_token_budget)


def sample_settings(cfg: SamplingConfig) -> dict:
    """What a sample was drawn with, recorded beside it."""
    keys = ("backend", "num_samples", "temperature", "top_p", "max_new_tokens", "seed", "diversity")
    return {k: getattr(cfg, k) for k in keys}


def sample_prompts(backend: Backend, prompts: list[list[dict]], cfg: SamplingConfig,
                   progress: bool = False) -> list[list[Sample]]:
    """N samples per prompt: independent draws, or (diversity "prompting", paper section 5.1) draws where
    response k is generated after responses 1..k-1 and a request for a different one."""
    common = {"temperature": cfg.temperature, "top_p": cfg.top_p, "max_new_tokens": cfg.max_new_tokens}
    if cfg.diversity == "none":
        return backend.generate(prompts, n=cfg.num_samples, seed=cfg.seed, progress=progress, **common)
    results = backend.generate(prompts, n=1, seed=cfg.seed, progress=progress, **common)
    for k in range(1, cfg.num_samples):
        conversations = []
        for prompt, samples in zip(prompts, results):
            turns = list(prompt)
            for s in samples:
                turns += [{"role": "assistant", "content": s.text}, {"role": "user", "content": cfg.diversity_prompt}]
            conversations.append(turns)
        for samples, new in zip(results, backend.generate(conversations, n=1, seed=cfg.seed + k, **common)):
            samples.extend(new)
    return results


def diversity_variants(cfg: SamplingConfig, temperatures=(1.0, 2.0, 3.0)) -> dict[str, SamplingConfig]:
    """The sampling schemes of the paper's Table 3: the profile's own, higher temperatures, and prompting."""
    variants = {f"T={cfg.temperature:g}": cfg}
    variants |= {f"T={t:g}": dataclasses.replace(cfg, temperature=t, diversity="none") for t in temperatures}
    variants["prompting"] = dataclasses.replace(cfg, diversity="prompting")
    return variants
