"""Generation backends and diversity modes, on the tiny local policy (and a stand-in vLLM module)."""

import sys
import types

import pytest
from conftest import tiny_policy

from simplemix.config import PAPER_DIVERSITY_PROMPT, SamplingConfig
from simplemix.miniature.world import POLICY_NAME, build_world
from simplemix.sampling import (Sample, TransformersBackend, diversity_variants, generate, load_backend,
                                load_policy, render, sample_prompts)


@pytest.fixture(scope="module")
def world_dir(tiny_run_module):
    return tiny_run_module


@pytest.fixture(scope="module")
def policy(world_dir):
    return load_policy(tiny_policy(world_dir, POLICY_NAME))


@pytest.fixture(scope="module")
def prompts(world_dir):
    tasks = build_world(world_dir, progress=False).tasks("train")
    return [t.messages() for t in tasks]


def test_batched_greedy_equals_one_prompt_at_a_time(policy, prompts):
    """Left padding and length sorting change nothing: a batch gives each prompt's own greedy output."""
    model, tok = policy
    batched = generate(model, tok, prompts, max_new_tokens=12)
    alone = [generate(model, tok, [p], max_new_tokens=12)[0] for p in prompts]
    assert [b[0].text for b in batched] == [a[0].text for a in alone]
    assert len({len(render(tok, p)) for p in prompts}) > 1, "prompts of one length would not test padding"


def test_token_budget_bounds_every_batch(policy, prompts, monkeypatch):
    model, tok = policy
    shapes = []
    original = model.generate

    def spy(**kw):
        shapes.append(tuple(kw["input_ids"].shape))
        return original(**kw)

    monkeypatch.setattr(model, "generate", spy)
    budget, new, n = 300, 8, 2
    generate(model, tok, prompts, max_new_tokens=new, num_return_sequences=n, temperature=1.0, batch_token_budget=budget)
    assert sum(rows for rows, _ in shapes) == len(prompts)
    assert len(shapes) > 1
    for rows, width in shapes:
        assert rows == 1 or rows * n * (width + new) <= budget
    widths = [w for _, w in shapes]
    assert widths == sorted(widths), "prompts are not batched in length order"


def test_samples_record_tokens_and_finish_reason(policy, prompts):
    model, tok = policy
    short = generate(model, tok, prompts[:4], max_new_tokens=1)
    assert all(s.finish_reason == "length" and s.num_tokens == 1 for g in short for s in g)
    long = generate(model, tok, prompts[:4], max_new_tokens=60)
    for group in long:
        s = group[0]
        assert s.finish_reason in ("stop", "length") and 1 <= s.num_tokens <= 60
        if s.finish_reason == "stop":
            assert "<|end|>" not in s.text


def test_sampling_is_seeded_and_returns_n_per_prompt(policy, prompts):
    model, tok = policy
    kw = dict(max_new_tokens=10, temperature=1.0, top_p=0.9, num_return_sequences=3)
    a = generate(model, tok, prompts, seed=1, **kw)
    b = generate(model, tok, prompts, seed=1, **kw)
    c = generate(model, tok, prompts, seed=2, **kw)
    assert [len(g) for g in a] == [3] * len(prompts)
    assert a == b
    assert a != c


class Recorder:
    """A backend that records what it is asked and answers with numbered responses."""

    name = "recorder"

    def __init__(self):
        self.calls = []

    def generate(self, prompts, *, n, temperature, top_p, max_new_tokens, seed, progress=False):
        self.calls.append({"prompts": prompts, "n": n, "seed": seed, "temperature": temperature})
        return [[Sample(f"answer {len(self.calls)}.{i}", 2, "stop") for i in range(n)] for _ in prompts]


def test_prompting_mode_continues_the_conversation_with_the_papers_request():
    cfg = SamplingConfig(num_samples=3, diversity="prompting")
    assert cfg.diversity_prompt == PAPER_DIVERSITY_PROMPT
    assert PAPER_DIVERSITY_PROMPT.startswith("Please generate another response that is different from all")
    backend = Recorder()
    question = [{"role": "user", "content": "Name a colour."}]
    (samples,) = sample_prompts(backend, [question], cfg)
    assert [s.text for s in samples] == ["answer 1.0", "answer 2.0", "answer 3.0"]
    assert [c["n"] for c in backend.calls] == [1, 1, 1]
    assert backend.calls[0]["prompts"] == [question]
    assert backend.calls[2]["prompts"][0] == question + [
        {"role": "assistant", "content": "answer 1.0"}, {"role": "user", "content": PAPER_DIVERSITY_PROMPT},
        {"role": "assistant", "content": "answer 2.0"}, {"role": "user", "content": PAPER_DIVERSITY_PROMPT}]
    assert len({c["seed"] for c in backend.calls}) == 3


def test_independent_mode_draws_n_at_once():
    backend = Recorder()
    out = sample_prompts(backend, [[{"role": "user", "content": "x"}]] * 2, SamplingConfig(num_samples=4))
    assert [len(g) for g in out] == [4, 4] and len(backend.calls) == 1


def test_diversity_variants_are_the_papers_table_3_schemes():
    variants = diversity_variants(SamplingConfig(temperature=0.7))
    assert list(variants) == ["T=0.7", "T=1", "T=2", "T=3", "prompting"]
    assert variants["T=3"].temperature == 3.0 and variants["T=3"].diversity == "none"
    assert variants["prompting"].temperature == 0.7 and variants["prompting"].diversity == "prompting"


def test_prompting_mode_runs_on_the_real_policy(world_dir, prompts):
    backend = TransformersBackend(tiny_policy(world_dir, POLICY_NAME))
    out = sample_prompts(backend, prompts[:3], SamplingConfig(num_samples=2, diversity="prompting",
                                                              max_new_tokens=8, temperature=1.0))
    assert [len(g) for g in out] == [2, 2, 2]


def test_vllm_backend_passes_token_ids_and_sampling_params(world_dir, monkeypatch):
    """vLLM gets the chat template's token ids (so no second BOS) and the profile's sampling settings."""
    seen = {}

    class SamplingParams:
        def __init__(self, **kw):
            seen["params"] = kw

    class LLM:
        def __init__(self, **kw):
            seen["engine"] = kw

        def generate(self, requests, params, use_tqdm=False):
            seen["requests"] = requests
            done = types.SimpleNamespace(text=" hi ", token_ids=[5, 6], finish_reason="stop")
            cut = types.SimpleNamespace(text="lo", token_ids=[7] * 9, finish_reason="length")
            return [types.SimpleNamespace(outputs=[done, cut]) for _ in requests]

    monkeypatch.setitem(sys.modules, "vllm", types.SimpleNamespace(LLM=LLM, SamplingParams=SamplingParams))
    cfg = SamplingConfig(backend="vllm", num_samples=2, temperature=0.7, top_p=0.9, max_new_tokens=9, seed=3,
                         tensor_parallel_size=2)
    backend = load_backend(cfg, tiny_policy(world_dir, POLICY_NAME))
    question = [{"role": "user", "content": "What is 2 plus 2?"}]
    (samples,) = sample_prompts(backend, [question], cfg)
    assert samples == [Sample("hi", 2, "stop"), Sample("lo", 9, "length")]
    assert seen["params"] == {"n": 2, "temperature": 0.7, "top_p": 0.9, "max_tokens": 9, "seed": 3}
    assert seen["engine"]["tensor_parallel_size"] == 2
    ids = seen["requests"][0]["prompt_token_ids"]
    assert ids == render(backend.tokenizer, question)
    assert ids[0] == backend.tokenizer.bos_token_id and ids[1] != backend.tokenizer.bos_token_id


def test_vllm_missing_is_a_clear_error(world_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)
    with pytest.raises(ImportError, match="vllm is not installed.*sampling.backend=transformers"):
        load_backend(SamplingConfig(backend="vllm"), tiny_policy(world_dir, POLICY_NAME))


def test_the_transformers_backend_puts_the_policy_on_the_gpu_when_there_is_one(world_dir, monkeypatch):
    """On a GPU machine the policy goes to CUDA (before this, sampling and evaluation ran on the CPU there), and
    ``generate`` sends its inputs to the model's device."""
    import torch

    import simplemix.sampling as sampling

    loaded, seen = [], []
    real_load = sampling.causal_lm
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(sampling, "causal_lm", lambda path, **kw: loaded.append(kw.pop("device_map", None))
                        or real_load(path, **kw))
    model, tokenizer = load_policy(tiny_policy(world_dir, POLICY_NAME))
    assert loaded == [{"": 0}]  # loaded straight onto the GPU
    monkeypatch.undo()
    real = model.generate
    monkeypatch.setattr(model, "generate", lambda **kw: seen.append(kw["input_ids"].device) or real(**kw))
    generate(model, tokenizer, [[{"role": "user", "content": "2+2="}]], max_new_tokens=2)
    assert seen == [model.device]
