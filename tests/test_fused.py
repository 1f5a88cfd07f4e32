"""The DPO-Mix-P fused sampler: hand-computed distributions, plain-sampling equivalence, KV caches, eos, the split."""

import copy
import math
from types import SimpleNamespace

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM
from transformers.generation import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

from simplemix.fused import (DPO_MIX_P_WEIGHTS, MixedSample, dpo_mix_p_samples, fused_generate,
                             fused_next_token_distribution, fused_sample_ids)
from simplemix.miniature.policy import train_tokenizer
from simplemix.sampling import Sample, generate, render

CORPUS = ["the cat sat on the mat", "a dog ran to the park", "what is seven plus five", "write a line about the sea",
          "recommend a book for a rainy day", "the answer is twelve", "reverse the word cat"] * 4
PROMPTS = [[{"role": "user", "content": c}] for c in
           ["hi", "the cat sat on the mat and the dog ran", "what is seven plus five",
            "a dog ran", "write a line about the sea at dawn please"]]
SUMS_TO_ONE = [(1.5, -0.5), (0.5, 0.5)]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # matrices this small gain nothing from threads, and spinning threads crawl on a busy 2-core runner
    was = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(was)


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    return train_tokenizer(CORPUS, 96, tmp_path_factory.mktemp("tok"))


def tiny_llama(tok, seed):
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.2, tie_word_embeddings=False,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id))
    with torch.no_grad():
        model.lm_head.weight[tok.eos_token_id] *= 2  # so that some rows stop early and the pad path runs
    return model.eval()


def tiny_gpt2(tok, seed):
    torch.manual_seed(seed)
    return GPT2LMHeadModel(GPT2Config(
        vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=128, initializer_range=0.2,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)).eval()


@pytest.fixture(scope="module")
def policy(tok):
    return tiny_llama(tok, 0)


@pytest.fixture(scope="module")
def other(tok):
    return tiny_llama(tok, 1)


def padded(tok, prompts, n=1):
    encoded = [render(tok, p) for p in prompts]
    width = max(map(len, encoded))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(e)) + e for e in encoded])
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded])
    return ids.repeat_interleave(n, 0), mask.repeat_interleave(n, 0)


def plain_loop(models, weights, ids, mask, *, max_new_tokens, temperature, top_p, generator, eos, pad):
    """Independent reference: no KV cache (the whole sequence each step) and transformers' own warpers."""
    warpers = LogitsProcessorList([TemperatureLogitsWarper(temperature)] if temperature > 0 else [])
    if top_p < 1:
        warpers.append(TopPLogitsWarper(top_p))
    done = torch.zeros(len(ids), dtype=torch.bool)
    new = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = sum(w * m(input_ids=ids, attention_mask=mask, position_ids=positions).logits[:, -1].float()
                         for m, w in zip(models, weights))
            if temperature == 0:
                nxt = logits.argmax(-1)
            else:
                nxt = torch.multinomial(warpers(ids, logits).softmax(-1), 1, generator=generator).squeeze(1)
            nxt = torch.where(done, pad, nxt)
            new.append(nxt)
            done |= nxt == eos
            if done.all():
                break
            ids = torch.cat([ids, nxt[:, None]], -1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], -1)
    return torch.stack(new, 1)


def as_samples(tok, rows):
    """The Sample rule of sampling.generate, written out again."""
    eos = tok.eos_token_id
    out = []
    for new in rows.tolist():
        n = new.index(eos) + 1 if eos in new else len(new)
        out.append(Sample(tok.decode(new[:n], skip_special_tokens=True).strip(), n,
                          "stop" if eos in new else "length"))
    return out


def as_samples_by_prompt(tok, rows):
    """One Sample per prompt, for comparing with a one-per-prompt fused_generate."""
    return [[s] for s in as_samples(tok, rows)]


# --- 2. the hand-built case -------------------------------------------------------------------------------

def test_hand_computed_next_token_distribution():
    p, r = torch.tensor([2.0, 1.0, 0.0, -1.0]), torch.tensor([0.0, 1.0, 2.0, 0.0])
    # fused = 1.5*[2, 1, 0, -1] - 0.5*[0, 1, 2, 0] = [3, 1, -1, -1.5]; /T=0.5 -> [6, 2, -2, -3]
    # softmax: e^6, e^2, e^-2, e^-3 over their sum = [0.98157, 0.01798, 0.00033, 0.00012]
    # sorted, the first token alone has 0.98157 >= 0.8: the nucleus is {0}, renormalised to [1, 0, 0, 0]
    z = math.exp(6) + math.exp(2) + math.exp(-2) + math.exp(-3)
    assert math.exp(6) / z == pytest.approx(0.98157, abs=1e-5)
    got = fused_next_token_distribution(p, r, (1.5, -0.5), 0.5, 0.8)
    assert torch.allclose(got, torch.tensor([1.0, 0.0, 0.0, 0.0]), atol=1e-6)
    # the same logits at T=1, top_p=0.9: softmax [3, 1, -1, -1.5] = [0.85855, 0.11619, 0.01572, 0.00954];
    # 0.85855 < 0.9 <= 0.85855 + 0.11619, so the nucleus is {0, 1}: [e^3, e^1] / (e^3 + e^1)
    a = 1 / (1 + math.exp(-2))
    got = fused_next_token_distribution(p, r, (1.5, -0.5), 1.0, 0.9)
    assert torch.allclose(got, torch.tensor([a, 1 - a, 0.0, 0.0]), atol=1e-6)
    # interpolation (0.5, 0.5): fused = [1, 1, 1, -0.5]; T=1, top_p=1 is the plain softmax
    z = 3 * math.e + math.exp(-0.5)
    got = fused_next_token_distribution(p, r, (0.5, 0.5), 1.0, 1.0)
    assert torch.allclose(got, torch.tensor([math.e / z] * 3 + [math.exp(-0.5) / z]), atol=1e-6)
    # the boundary: four equal tokens (0.25 each, exact in float) and top_p=0.5; two already reach 0.5
    got = fused_next_token_distribution(torch.zeros(4), torch.zeros(4), (1.5, -0.5), 1.0, 0.5)
    assert sorted(got.tolist()) == [0.0, 0.0, 0.5, 0.5]
    # temperature 0: a point mass on the fused argmax (token 0), whatever top_p
    assert fused_next_token_distribution(p, r, (1.5, -0.5), 0.0, 0.5).tolist() == [1.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError):
        fused_next_token_distribution(p, r, (1.5, -0.5), 1.0, 0.0)


class Bigram(torch.nn.Module):
    """A deterministic stand-in model: the next-token logits are row `current token` of a fixed table."""

    def __init__(self, table):
        super().__init__()
        self.table = torch.nn.Parameter(torch.tensor(table, dtype=torch.float32), requires_grad=False)

    def forward(self, input_ids, past_key_values=None, **_):
        return SimpleNamespace(logits=self.table[input_ids], past_key_values=past_key_values)


# vocabulary {0, 1, 2, 3}; the prompt is the single token 3
POLICY_TABLE = [[1, 1, 0, -2], [0.5, 1, 0, 1], [0, 0, 0, 0], [2, 1, 0, -1]]
REFERENCE_TABLE = [[1, -1, 0, 2], [0.5, 1, 0, -1], [0, 0, 0, 0], [0, 1, 2, 0]]


def test_two_step_joint_distribution_by_hand_and_by_sampling():
    pol, ref, w, T, top_p = Bigram(POLICY_TABLE), Bigram(REFERENCE_TABLE), (1.5, -0.5), 1.0, 0.9
    # step 1 (after token 3): fused [3, 1, -1, -1.5] -> nucleus {0, 1}, as above
    s1 = 1 / (1 + math.exp(-2))
    step1 = {0: s1, 1: 1 - s1}
    # step 2 after t1=0: fused = 1.5*[1, 1, 0, -2] - 0.5*[1, -1, 0, 2] = [1, 2, 0, -4];
    # softmax = [0.24433, 0.66414, 0.08988, 0.00165]; 0.66414 < 0.9 <= 0.66414 + 0.24433: nucleus {1, 0}
    # step 2 after t1=1: fused = 1.5*[0.5, 1, 0, 1] - 0.5*[0.5, 1, 0, -1] = [0.5, 1, 0, 2];
    # softmax = [0.12925, 0.21310, 0.07839, 0.57926]; 0.57926 + 0.21310 < 0.9 <= ... + 0.12925: nucleus {3, 1, 0}
    z1 = math.exp(0.5) + math.e + math.exp(2)
    step2 = {0: {0: 1 / (1 + math.e), 1: math.e / (1 + math.e)},
             1: {0: math.exp(0.5) / z1, 1: math.e / z1, 3: math.exp(2) / z1}}
    joint = {(a, b): step1[a] * q for a in step1 for b, q in step2[a].items()}
    assert sum(joint.values()) == pytest.approx(1.0)

    def dist(*prefix):
        ids = torch.tensor([prefix])
        return fused_next_token_distribution(pol(ids).logits[0, -1], ref(ids).logits[0, -1], w, T, top_p)

    for (a, b), expected in joint.items():
        assert (dist(3)[a] * dist(3, a)[b]).item() == pytest.approx(expected, abs=1e-6)
    for a in range(4):
        assert dist(3)[a].item() == pytest.approx(step1.get(a, 0.0), abs=1e-6)

    n = 4000
    out = fused_sample_ids(pol, ref, torch.full((n, 1), 3), torch.ones(n, 1, dtype=torch.long), weights=w,
                           max_new_tokens=2, temperature=T, top_p=top_p, generator=torch.Generator().manual_seed(0))
    counts = {}
    for pair in map(tuple, out.tolist()):
        counts[pair] = counts.get(pair, 0) + 1
    assert set(counts) <= set(joint), "a pair outside the nucleus was drawn"
    # Each cell's count is Binomial(n, p): 4 standard deviations per cell keep the chance of a false alarm over
    # the five cells below 1e-3, while a wrong cell (e.g. nucleus off by one token) is off by far more.
    for pair, p in joint.items():
        assert abs(counts.get(pair, 0) - n * p) <= 4 * math.sqrt(n * p * (1 - p)), (pair, counts, n * p)


# --- 1. identical models: fused sampling is plain sampling ------------------------------------------------

@pytest.mark.parametrize("weights", SUMS_TO_ONE)
def test_identical_models_reproduce_plain_sampling(tok, policy, weights):
    kw = dict(max_new_tokens=10, temperature=0.8, top_p=0.9)
    got = fused_generate(policy, policy, tok, PROMPTS, weights=weights, num_return_sequences=3, seed=7,
                         batch_size=2, **kw)
    # The reference is the uncached plain_loop, not sampling.generate: that one leaves transformers' default
    # top_k=50 on and batches by a token budget, so its draws differ by design. The tokens of model.generate
    # itself are matched in the next test. The documented seeding, written out: sort by rendered length,
    # batches of 2, Generator(seed + start).
    order = sorted(range(len(PROMPTS)), key=lambda i: len(render(tok, PROMPTS[i])))
    expected = [[] for _ in PROMPTS]
    for start in range(0, len(order), 2):
        batch = order[start:start + 2]
        ids, mask = padded(tok, [PROMPTS[i] for i in batch], 3)
        rows = plain_loop([policy], [1.0], ids, mask, generator=torch.Generator().manual_seed(7 + start),
                          eos=tok.eos_token_id, pad=tok.pad_token_id, **kw)
        for row, sample in enumerate(as_samples(tok, rows)):
            expected[batch[row // 3]].append(sample)
    assert got == expected
    reasons = {s.finish_reason for group in got for s in group}
    assert reasons == {"stop", "length"}, "the test should see rows stop early and rows run to the limit"


@pytest.mark.parametrize("weights", SUMS_TO_ONE)
def test_one_batch_draws_the_tokens_of_transformers_sampling(tok, policy, weights):
    """The RNG use matches transformers' sampling loop (one multinomial over all rows per step, finished rows
    included), so a torch.Generator seeded like torch.manual_seed gives the same tokens. top_k=0 switches off
    transformers' default top-k of 50, which the fused sampler does not have."""
    ids, mask = padded(tok, PROMPTS)
    twin = copy.deepcopy(policy)
    ours = fused_sample_ids(policy, twin, ids.repeat_interleave(4, 0), mask.repeat_interleave(4, 0), weights=weights,
                            max_new_tokens=12, temperature=0.7, top_p=0.9, generator=torch.Generator().manual_seed(3),
                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(3)
    with torch.no_grad():
        theirs = policy.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=0.7, top_p=0.9,
                                 top_k=0, max_new_tokens=12, num_return_sequences=4, pad_token_id=tok.pad_token_id,
                                 eos_token_id=tok.eos_token_id)
    assert torch.equal(ours, theirs[:, ids.shape[1]:])


def test_identical_models_greedy_is_generate_greedy(tok, policy):
    ids, mask = padded(tok, PROMPTS)
    ours = fused_sample_ids(policy, policy, ids, mask, weights=(1.5, -0.5), max_new_tokens=12, temperature=0,
                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        theirs = policy.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=12,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    assert torch.equal(ours, theirs[:, ids.shape[1]:])
    assert fused_generate(policy, policy, tok, PROMPTS, weights=(0.5, 0.5), max_new_tokens=12, temperature=0) == \
        generate(policy, tok, PROMPTS, max_new_tokens=12)


# --- KV caches, eos, the DPO-Mix-P split ------------------------------------------------------------------

@pytest.mark.parametrize("build", [tiny_llama, tiny_gpt2], ids=["llama", "gpt2"])
def test_policy_only_weights_give_policy_greedy_with_left_padding(tok, build):
    """Llama's rotary positions cannot see a per-row position shift; GPT-2's absolute positions can, so it
    checks that left-padded rows start at position 0 and advance by one per step."""
    policy, other = build(tok, 0), build(tok, 1)
    ids, mask = padded(tok, PROMPTS)
    assert len(set(mask.sum(-1).tolist())) == len(PROMPTS), "prompts of different lengths share one batch"
    ours = fused_sample_ids(policy, other, ids, mask, weights=(1.0, 0.0), max_new_tokens=16, temperature=0,
                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        theirs = policy.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=16,
                                 pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    assert torch.equal(ours, theirs[:, ids.shape[1]:])
    assert fused_generate(policy, other, tok, PROMPTS, weights=(1.0, 0.0), max_new_tokens=16, temperature=0,
                          batch_size=len(PROMPTS)) == as_samples_by_prompt(tok, theirs[:, ids.shape[1]:])


def test_two_different_models_keep_separate_caches(tok, policy, other):
    ids, mask = padded(tok, PROMPTS, 2)
    kw = dict(max_new_tokens=10, temperature=1.0, top_p=0.95)
    ours = fused_sample_ids(policy, other, ids, mask, weights=(1.5, -0.5), generator=torch.Generator().manual_seed(5),
                            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **kw)
    plain = plain_loop([policy, other], (1.5, -0.5), ids, mask, generator=torch.Generator().manual_seed(5),
                       eos=tok.eos_token_id, pad=tok.pad_token_id, **kw)
    assert torch.equal(ours, plain)


def test_eos_stops_rows_and_then_the_batch(tok):
    eos, x, start = tok.eos_token_id, tok.convert_tokens_to_ids("▁the"), tok.convert_tokens_to_ids("<|assistant|>")
    table = torch.full((len(tok), len(tok)), -1e4)
    table[start, [eos, x]] = 0.0  # after the prompt: eos or "the", half and half
    table[x, x] = 0.0  # after "the": "the" again, never eos
    model = Bigram(table.tolist())
    groups = fused_generate(model, model, tok, PROMPTS[:2], weights=(1.0, 0.0), max_new_tokens=5,
                            num_return_sequences=8, seed=0)
    for s in (s for group in groups for s in group):
        assert (s.finish_reason, s.num_tokens, s.text) in {("stop", 1, ""), ("length", 5, "the the the the the")}
    assert {s.finish_reason for group in groups for s in group} == {"stop", "length"}
    ids, mask = padded(tok, PROMPTS[:2], 8)
    rows = fused_sample_ids(model, model, ids, mask, weights=(1.0, 0.0), max_new_tokens=5,
                            generator=torch.Generator().manual_seed(1), eos_token_id=eos, pad_token_id=tok.pad_token_id)
    assert {tuple(row) for row in rows.tolist()} == {(x,) * 5, (eos,) + (tok.pad_token_id,) * 4}
    table[start, x] = -1e4  # now every row stops at once, and so does the loop
    rows = fused_sample_ids(Bigram(table.tolist()), model, ids, mask, weights=(1.0, 0.0), max_new_tokens=5,
                            generator=torch.Generator().manual_seed(1), eos_token_id=eos, pad_token_id=tok.pad_token_id)
    assert rows.tolist() == [[eos]] * len(ids)


def test_dpo_mix_p_splits_half_and_half_and_records_weights(tok, policy, other):
    kw = dict(max_new_tokens=6, temperature=1.0, top_p=0.9, batch_size=2)
    mixed = dpo_mix_p_samples(policy, other, tok, PROMPTS, num_samples=5, seed=11, **kw)
    assert all(isinstance(m, MixedSample) for group in mixed for m in group)
    assert [[m.weights for m in group] for group in mixed] == [[(1.5, -0.5)] * 3 + [(0.5, 0.5)] * 2] * len(PROMPTS)
    # provenance is real: each half is what fused_generate draws with those weights and the documented seed
    first = fused_generate(policy, other, tok, PROMPTS, weights=DPO_MIX_P_WEIGHTS[0], num_return_sequences=3,
                           seed=11, **kw)
    second = fused_generate(policy, other, tok, PROMPTS, weights=DPO_MIX_P_WEIGHTS[1], num_return_sequences=2,
                            seed=11 + len(PROMPTS), **kw)
    assert [[m.sample for m in group] for group in mixed] == [a + b for a, b in zip(first, second)]
    even = dpo_mix_p_samples(policy, other, tok, PROMPTS[:1], num_samples=4, seed=0, **kw)
    assert [m.weights for m in even[0]] == [(1.5, -0.5)] * 2 + [(0.5, 0.5)] * 2
