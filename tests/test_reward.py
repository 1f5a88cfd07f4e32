"""simplemix.reward against hand computations: tiny local RMs, the miniature oracle, pair building, re-labelling."""

from __future__ import annotations

import json
import math

import pytest
import torch

from simplemix import data
from simplemix.config import ModelConfig, RewardConfig
from simplemix.miniature.oracle import OracleScorer, judge
from simplemix.miniature.policy import CHAT_TEMPLATE as POLICY_TEMPLATE
from simplemix.miniature.tasks import Task
from simplemix.reward import HFRewardModel, batch_by_tokens, build_pairs, rescore_pairs, resolve_dtype

MATH = Task("math", "What is 7 plus 5?", {"answer": "12", "a": 7, "b": 5, "op": "+"})
RECO = Task("recommendation", "Recommend a book for a rainy day.", {"thing": "book", "occasion": "rainy day"})

SPECIAL = ["<pad>", "<unk>", "<s>", "</s>", "<user>", "<assistant>", "</turn>"]
PAD, BOS = 0, 2
# The RM's own template wraps turns in <user> ... </turn> markers that the policy's template lacks.
RM_TEMPLATE = "{{ bos_token }}{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} </turn>{% endfor %}"
RM_TEMPLATE_NO_BOS = "{% for m in messages %}<{{ m['role'] }}> {{ m['content'] }} </turn>{% endfor %}"
CORPUS = [
    "what is seven plus five", "the answer is twelve because seven and five make twelve",
    "recommend a book for a rainy day", "i suggest the quiet harbor it is perfect for a rainy day",
    "write a short line about the sea at dawn", "the quiet sea is soft and still at dawn",
    "a long trip needs a good song and a warm meal", "reverse the word cat please",
]
WORDS = " ".join(CORPUS).split()


def words(n: int, start: int = 0) -> str:
    return " ".join(WORDS[(start + i) % len(WORDS)] for i in range(n))


def make_rm(directory, template=RM_TEMPLATE, model_type="llama"):
    """A tiny random RM saved like a hub checkpoint; its tokenizer adds a BOS unless told not to."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import (Gemma2Config, Gemma2ForSequenceClassification, LlamaConfig,
                              LlamaForSequenceClassification, PreTrainedTokenizerFast)

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS, trainers.WordLevelTrainer(special_tokens=SPECIAL))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", BOS)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", chat_template=template)
    torch.manual_seed(0)
    sizes = dict(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=2, num_key_value_heads=2, num_labels=1, pad_token_id=PAD, bos_token_id=BOS,
                 max_position_embeddings=512, initializer_range=0.2)
    if model_type == "gemma2":
        model = Gemma2ForSequenceClassification(Gemma2Config(head_dim=16, **sizes))
    else:
        model = LlamaForSequenceClassification(LlamaConfig(**sizes))
    model.save_pretrained(directory)
    fast.save_pretrained(directory)
    return directory


def reward_cfg(path, budget=16384, max_length=4096, **model) -> RewardConfig:
    return RewardConfig(model=ModelConfig(name_or_path=str(path), torch_dtype="float32", **model),
                        batch_token_budget=budget, max_length=max_length)


@pytest.fixture(scope="module")
def rm_dir(tmp_path_factory):
    return make_rm(tmp_path_factory.mktemp("rm"))


@pytest.fixture(scope="module")
def reference(rm_dir):
    """The RM and its tokenizer loaded by hand, to compute scores independently of simplemix."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(rm_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(rm_dir)


def hand_score(reference, ids: list[int]) -> float:
    model, _ = reference
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits[0][0].item()


def rm_ids(reference, question: str, answer: str, bos: bool = True) -> list[int]:
    """Ids of the RM's format written out by hand: one BOS, then the marked-up turns."""
    _, tok = reference
    body = tok(f"<user> {question} </turn><assistant> {answer} </turn>", add_special_tokens=False)["input_ids"]
    return [BOS] * bos + body


class Recorder:
    """Captures the input_ids of every forward call of a model."""

    def __init__(self, model):
        self.batches: list[torch.Tensor] = []
        self.handle = model.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        self.batches.append(kwargs["input_ids"].clone())

    def rows(self) -> list[list[int]]:
        """The rows fed to the model (padded within their batch), in the order they were fed."""
        return [row.tolist() for batch in self.batches for row in batch]


def conversation(question: str) -> list[dict]:
    return [{"role": "user", "content": question}]


def test_scores_equal_unpadded_hand_scores_whatever_the_padding(rm_dir, reference):
    scorer = HFRewardModel(reward_cfg(rm_dir))
    lengths = [200, 1, 37, 5]
    questions = [words(4, k) for k in range(4)]
    answers = [words(n, 3 * k) for k, n in enumerate(lengths)]
    recorder = Recorder(scorer.model)
    scores = scorer.score([conversation(q) for q in questions], answers)
    assert len(recorder.batches) == 1 and recorder.batches[0].shape[0] == 4  # one padded batch
    for q, a, s in zip(questions, answers, scores):
        assert s == pytest.approx(hand_score(reference, rm_ids(reference, q, a)), abs=1e-5)
    assert len({round(s, 4) for s in scores}) == 4


def test_the_rm_reads_its_own_chat_template_not_the_policys(rm_dir, reference):
    scorer = HFRewardModel(reward_cfg(rm_dir))
    prompt, answer = conversation("what is seven plus five"), "the answer is twelve"
    recorder = Recorder(scorer.model)
    (score,) = scorer.score([prompt], [answer])
    expected = rm_ids(reference, "what is seven plus five", answer)
    assert recorder.rows() == [expected]
    assert score == pytest.approx(hand_score(reference, expected), abs=1e-5)
    _, tok = reference
    as_policy = tok.apply_chat_template(prompt + [{"role": "assistant", "content": answer}], tokenize=False,
                                        chat_template=POLICY_TEMPLATE)
    policy_ids = tok(as_policy, add_special_tokens=False)["input_ids"]
    assert policy_ids != expected
    assert abs(score - hand_score(reference, policy_ids)) > 1e-3


@pytest.mark.parametrize("template", [RM_TEMPLATE, RM_TEMPLATE_NO_BOS], ids=["template-bos", "tokenizer-bos"])
def test_exactly_one_bos_leads(tmp_path, reference, template):
    scorer = HFRewardModel(reward_cfg(make_rm(tmp_path, template)))
    question, answer = "reverse the word cat please", "tac"
    rendered = scorer.tokenizer.apply_chat_template(
        conversation(question) + [{"role": "assistant", "content": answer}], tokenize=False)
    naive = scorer.tokenizer(rendered)["input_ids"]
    assert naive.count(BOS) == (2 if template == RM_TEMPLATE else 1)  # the trap is real for the first
    recorder = Recorder(scorer.model)
    (score,) = scorer.score([conversation(question)], [answer])
    (ids,) = recorder.rows()
    assert ids[0] == BOS and ids[1] != BOS and ids.count(BOS) == 1
    assert ids == rm_ids(reference, question, answer)
    assert score == pytest.approx(hand_score(reference, ids), abs=1e-5)


def test_batch_by_tokens_respects_the_budget_and_covers_every_input():
    lengths = [5, 80, 12, 12, 40, 3, 200, 7, 33]
    batches = batch_by_tokens(lengths, 96)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) * max(lengths[i] for i in b) <= 96 or len(b) == 1
        assert lengths[b[0]] == max(lengths[i] for i in b)
    assert [6] in batches  # longer than the budget: alone
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(flat, reverse=True)


def test_token_budget_batches_fit_and_match_batch_size_one(rm_dir, reference):
    budget = 120
    scorer = HFRewardModel(reward_cfg(rm_dir, budget=budget))
    lengths = [3, 60, 8, 25, 1, 90, 14, 14, 40, 2]
    prompts = [conversation(words(3, k)) for k in range(len(lengths))]
    answers = [words(n, k) for k, n in enumerate(lengths)]
    recorder = Recorder(scorer.model)
    batched = scorer.score(prompts, answers)
    shapes = [tuple(b.shape) for b in recorder.batches]
    assert len(shapes) < len(lengths)  # some batches hold several sequences
    assert all(rows * width <= budget or rows == 1 for rows, width in shapes)
    one_by_one = HFRewardModel(reward_cfg(rm_dir, budget=1)).score(prompts, answers)
    assert batched == pytest.approx(one_by_one, abs=1e-5)
    for p, a, s in zip(prompts, answers, batched):  # input order
        assert s == pytest.approx(hand_score(reference, rm_ids(reference, p[0]["content"], a)), abs=1e-5)


def test_long_inputs_are_cut_at_max_length(rm_dir, reference):
    scorer = HFRewardModel(reward_cfg(rm_dir, max_length=9))
    question, answer = words(3), words(30)
    (score,) = scorer.score([conversation(question)], [answer])
    assert score == pytest.approx(hand_score(reference, rm_ids(reference, question, answer)[:9]), abs=1e-5)


def test_gemma2_with_sdpa_warns_and_loads_eager(tmp_path):
    path = make_rm(tmp_path, model_type="gemma2")
    with pytest.warns(UserWarning, match="sdpa.*Gemma-2"):
        scorer = HFRewardModel(reward_cfg(path, attn_implementation="sdpa"))
    assert scorer.model.config._attn_implementation == "eager"
    assert math.isfinite(scorer.score([conversation("what is seven plus five")], ["twelve"])[0])


@pytest.mark.skipif(torch.cuda.is_available(), reason="auto means bfloat16 on a GPU")
def test_auto_dtype_is_float32_on_cpu(rm_dir):
    assert resolve_dtype("auto") is torch.float32
    cfg = reward_cfg(rm_dir)
    cfg.model.torch_dtype = "auto"
    assert HFRewardModel(cfg).model.dtype is torch.float32


def test_oracle_scorer_is_the_oracle():
    scorer = OracleScorer({t.prompt: t for t in (MATH, RECO)})
    responses = ["The answer is 12.", "I recommend Paper Kites because it is perfect for a rainy day.", "13"]
    prompts = [MATH.messages(), RECO.messages(), [{"role": "system", "content": "Be brief."}, *MATH.messages()]]
    assert scorer.score(prompts, responses) == [judge(MATH, responses[0]).reward,
                                                judge(RECO, responses[1]).reward, judge(MATH, "13").reward]
    with pytest.raises(KeyError, match="What is 1 plus 1"):
        scorer.score([conversation("What is 1 plus 1?")], ["2"])


def test_the_miniature_worlds_reward_is_the_oracle_over_every_split(tiny_run):
    from conftest import tiny_world
    from simplemix.config import ConfigError
    from simplemix.miniature.world import SPLITS

    world = tiny_world(tiny_run)
    scorer = world.reward()
    tasks = [t for split in SPLITS for t in world.built.tasks(split)]
    assert set(SPLITS) == {"sft", "train", "dev", "eval", "train_hs2"}
    assert isinstance(scorer, OracleScorer) and scorer.name == "miniature:oracle"
    assert {t.prompt for t in tasks} == set(scorer.tasks_by_prompt)
    responses = ["The answer is 12.", "Output: tac", "I recommend Orbit Run because it fits."]
    for task in tasks:
        scores = scorer.score([task.messages()] * len(responses), responses)
        assert scores == [judge(task, r).reward for r in responses]
    with pytest.raises(ConfigError, match="miniature:nope"):
        tiny_world(tiny_run, ["reward.model.name_or_path=miniature:nope"]).reward()


def test_a_hub_worlds_reward_is_a_local_transformers_rm(rm_dir, tmp_path):
    from simplemix.config import load_profile
    from simplemix.world import HubWorld, resolve

    prof = load_profile("single-gpu", [f"reward.model.name_or_path={rm_dir}", "reward.model.torch_dtype=float32",
                                       "reward.model.attn_implementation=null"])
    world = resolve(prof, tmp_path)
    assert isinstance(world, HubWorld)
    scorer = world.reward()
    assert isinstance(scorer, HFRewardModel) and scorer.name == str(rm_dir) and world.reward() is scorer
    direct = HFRewardModel(reward_cfg(rm_dir))
    prompt, answer = [conversation("what is seven plus five")], ["the answer is twelve"]
    assert scorer.score(prompt, answer) == pytest.approx(direct.score(prompt, answer), abs=1e-6)


PROMPTS = [conversation(f"question {k}") for k in range(5)]
SAMPLES = [
    ["a", "b", "c"],             # clear best (b) and worst (c)
    ["same", "x", "y"],          # all scores equal
    ["p", "q", "r", "s"],        # two-way tie for best (q, s) and for worst (p, r)
    ["close", "closer", "far"],  # margin 0.05 only
    ["twin", "other", "twin"],   # best and worst have the same text
]
SCORES = [[0.5, 2.0, -1.0], [1.0, 1.0, 1.0], [0.0, 3.0, 0.0, 3.0], [1.0, 1.05, 1.02], [2.0, 1.0, -2.0]]
SAMPLER = {"temperature": 0.7, "top_p": 0.9, "num_samples": 3, "seed": 0}


def test_build_pairs_takes_best_and_worst_and_counts_what_it_skips():
    rows, counts = build_pairs(PROMPTS, SAMPLES, SCORES, min_margin=0.1, prompt_ids=[f"id{k}" for k in range(5)],
                               sampler=SAMPLER)
    assert counts == {"prompts": 5, "pairs": 2, "tied": 1, "below_margin": 1, "identical_texts": 1}
    first, tie = rows
    assert (first["chosen"], first["rejected"], first["score_chosen"], first["score_rejected"]) == ("b", "c", 2.0, -1.0)
    assert (tie["chosen"], tie["rejected"]) == ("q", "p")  # the first sample wins a tie, for best and for worst
    meta = json.loads(tie["metadata"])
    assert meta == {"prompt_index": 2, "prompt_id": "id2", "chosen_index": 1, "rejected_index": 0,
                    "scores": [0.0, 3.0, 0.0, 3.0], "sampler": SAMPLER}
    assert {r["source"] for r in rows} == {"on"} and {r["origin"] for r in rows} == {"on-policy"}
    rows, counts = build_pairs(PROMPTS, SAMPLES, SCORES)  # no margin: the close pair is kept
    assert counts["pairs"] == 3 and counts["below_margin"] == 0
    assert (rows[2]["chosen"], rows[2]["rejected"]) == ("closer", "close")


def test_build_pairs_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="prompt 0"):
        build_pairs(PROMPTS[:1], [["a", "b"]], [[1.0]])
    with pytest.raises(ValueError, match="finite"):
        build_pairs(PROMPTS[:1], [["a", "b"]], [[1.0, math.nan]])


def test_pairs_round_trip_through_the_data_layer():
    rows, _ = build_pairs(PROMPTS, SAMPLES, SCORES, sampler=SAMPLER)
    ds, report = data.validate_rows(rows, origin="on-policy", source="on")
    assert report.rows_kept == len(rows) == 3 and not report.dropped and not report.kept_flagged
    assert ds.to_list() == rows


def test_rescore_swaps_where_the_scorer_disagrees_and_keeps_the_old_scores():
    oracle = OracleScorer({MATH.prompt: MATH})
    off = [
        {"prompt": MATH.messages(), "chosen": "The answer is 13.", "rejected": "The answer is 12.",
         "score_chosen": 9.0, "score_rejected": 1.0, "metadata": json.dumps({"task_index": 0})},
        {"prompt": MATH.messages(), "chosen": "The answer is 12.", "rejected": "12", "score_chosen": 5.0,
         "score_rejected": 4.0},
        {"prompt": MATH.messages(), "chosen": "12", "rejected": " 12", "score_chosen": 2.0, "score_rejected": 1.0},
    ]
    ds, _ = data.validate_rows(off, origin="pool", source="off")
    rows, counts = rescore_pairs(ds, oracle)
    assert counts == {"pairs": 3, "kept": 2, "swapped": 1, "tied": 1}
    swapped, kept = rows
    assert (swapped["chosen"], swapped["rejected"]) == ("The answer is 12.", "The answer is 13.")
    assert (swapped["score_chosen"], swapped["score_rejected"]) == (judge(MATH, "The answer is 12.").reward,
                                                                    judge(MATH, "The answer is 13.").reward)
    assert json.loads(swapped["metadata"]) == {"task_index": 0, "rescore": {
        "scorer": "miniature:oracle", "swapped": True, "original_score_chosen": 9.0, "original_score_rejected": 1.0}}
    assert json.loads(kept["metadata"])["rescore"]["swapped"] is False and kept["chosen"] == "The answer is 12."
    again, report = data.validate_rows(rows, origin="pool")
    assert report.rows_kept == 2 and again.to_list() == rows and set(again["source"]) == {"off"}
