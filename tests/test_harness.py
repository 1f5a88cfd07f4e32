"""The lm-evaluation-harness wrapper: paper task table, metric choice, average, and an offline run on a local task.

The offline run evaluates a tiny random Llama on a hand-made multiple-choice task (tests/data/lm_eval_tasks)
and checks lm-eval's numbers against log-likelihoods computed here directly with torch.
"""

import json
import math
from pathlib import Path

import pytest
import yaml

from simplemix import harness
from simplemix.harness import PAPER_TASKS, paper_average, resolve_tasks, run_benchmarks, tidy_results

ROOT = Path(__file__).resolve().parent.parent
TASKS_DIR = ROOT / "tests" / "data" / "lm_eval_tasks"
TASK = "simplemix_tiny_mc"

# Table 4 and Table 5 baselines of the paper (ARC-C, CQA, HSwag, MMLU, OQA, PiQA, WG, Ifeval, Avg. Score)
PAPER_ROWS = {
    "Llama-3.1-8B-Instruct": [51.90, 77.14, 59.14, 67.93, 33.40, 79.97, 73.55, 44.00, 60.88],
    "Llama-3.1-Tulu-3-8B-SFT": [52.73, 75.76, 61.87, 63.67, 36.80, 80.79, 74.35, 31.79, 59.72],
}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


def fake_lm_eval_results(percent: list[float]) -> dict:
    """lm-eval's ``results["results"]`` for the paper tasks, with distractor metrics next to the reported ones."""
    out = {}
    for (benchmark, spec), value in zip(PAPER_TASKS.items(), percent):
        numbers = {"alias": benchmark, f"{spec.metric},none": value / 100, f"{spec.metric}_stderr,none": 0.01}
        if spec.task in {"arc_challenge", "hellaswag", "openbookqa", "piqa"}:
            numbers |= {"acc_norm,none": 0.99, "acc_norm_stderr,none": 0.02}
        if spec.task == "ifeval":
            numbers |= {"prompt_level_strict_acc,none": 0.01, "prompt_level_strict_acc_stderr,none": "N/A",
                        "inst_level_loose_acc,none": 0.98, "inst_level_loose_acc_stderr,none": "N/A"}
        out[spec.task] = numbers
    return out


@pytest.mark.parametrize("model", sorted(PAPER_ROWS))
def test_average_reproduces_the_papers_avg_score(model):
    """The paper's Avg. Score is the unweighted mean of the eight reported metrics (not of acc_norm or strict)."""
    *columns, avg = PAPER_ROWS[model]
    table = tidy_results(fake_lm_eval_results(columns), resolve_tasks(list(PAPER_TASKS)))
    assert round(100 * paper_average(table), 2) == avg
    reported = table[table["reported"]]
    assert list(reported["benchmark"]) == list(PAPER_TASKS)
    assert dict(zip(reported["task"], reported["metric"])) == {s.task: s.metric for s in PAPER_TASKS.values()}
    assert reported["value"].tolist() == pytest.approx([c / 100 for c in columns])
    assert set(table["metric"]) >= {"acc_norm", "prompt_level_strict_acc", "inst_level_loose_acc"}
    assert table.loc[table["metric"] == "inst_level_loose_acc", "stderr"].isna().all()  # "N/A" becomes NaN


def test_metric_choice_follows_the_papers_numbers():
    """Every multiple-choice column is acc (59.14 on HellaSwag is unnormalised), IFEval is prompt-level loose."""
    assert {b: s.metric for b, s in PAPER_TASKS.items()} == {
        "ARC-Challenge": "acc", "CommonsenseQA": "acc", "HellaSwag": "acc", "MMLU": "acc", "OpenBookQA": "acc",
        "PIQA": "acc", "Winogrande": "acc", "IFEval": "prompt_level_loose_acc"}
    assert [s.column for s in PAPER_TASKS.values()] == ["ARC-C", "CQA", "HSwag", "MMLU", "OQA", "PiQA", "WG", "Ifeval"]
    for recipe in ("paper", "single-gpu"):  # the recipes list lm-eval names; they resolve to the paper's columns
        names = yaml.safe_load((ROOT / "recipes" / f"{recipe}.yaml").read_text())["evaluation"]["benchmarks"]
        assert [benchmark for benchmark, _, _ in resolve_tasks(names)] == list(PAPER_TASKS)


def test_metric_override_and_task_resolution():
    results = fake_lm_eval_results(PAPER_ROWS["Llama-3.1-8B-Instruct"][:8])
    chosen = resolve_tasks(["hellaswag", "ARC-challenge", "IFEval"], metrics={"HellaSwag": "acc_norm"})
    assert chosen == [("HellaSwag", "hellaswag", "acc_norm"), ("ARC-Challenge", "arc_challenge", "acc"),
                      ("IFEval", "ifeval", "prompt_level_loose_acc")]
    table = tidy_results(results, chosen)
    assert paper_average(table) == pytest.approx((0.99 + 0.5190 + 0.44) / 3)
    # a task outside the paper reports acc when it has it, else its first metric, unless told otherwise
    extra = {"mine": {"alias": "mine", "f1,none": 0.3, "acc,none": 0.7}, "other": {"exact_match,strict": 0.2}}
    assert tidy_results(extra, resolve_tasks(["mine", "other"])).query("reported")["value"].tolist() == [0.7, 0.2]
    assert tidy_results(extra, resolve_tasks(["mine"], {"mine": "f1"})).query("reported")["metric"].tolist() == ["f1"]
    assert "exact_match,strict" in tidy_results(extra, resolve_tasks(["other"]))["metric"].tolist()
    with pytest.raises(KeyError, match="no metric 'acc_norm'"):
        tidy_results(results, resolve_tasks(["MMLU"], {"MMLU": "acc_norm"}))
    with pytest.raises(ValueError, match="requested twice"):
        resolve_tasks(["PIQA", "piqa"])
    with pytest.raises(ValueError, match="not requested"):
        resolve_tasks(["PIQA"], {"Winogrande": "acc"})


def test_unknown_task_fails_before_the_model_loads(tmp_path):
    """A typo is reported with suggestions; the model path does not exist, so loading it would fail differently."""
    missing_model = tmp_path / "no-model-here"
    with pytest.raises(ValueError, match=r"unknown task\(s\): 'simplemix_tiny_mcq' \(did you mean 'simplemix_tiny_mc'"):
        run_benchmarks(missing_model, ["simplemix_tiny_mcq"], include_path=TASKS_DIR, include_defaults=False)
    with pytest.raises(ValueError, match=r"'hellaswg' \(did you mean 'hellaswag'"):
        run_benchmarks(missing_model, ["ARC-Challenge", "hellaswg"])
    with pytest.raises(FileNotFoundError, match="include_path"):
        run_benchmarks(missing_model, [TASK], include_path=tmp_path / "nowhere")


def test_paper_tasks_exist_in_lm_eval_with_their_metric():
    """Each paper task is in the installed lm-eval, and its YAML (or MMLU's group aggregate) defines our metric."""
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._yaml_loader import load_yaml

    index = TaskManager().task_index
    for benchmark, spec in PAPER_TASKS.items():
        cfg = load_yaml(index[spec.task].yaml_path, resolve_func=False)
        metrics = [m["metric"] for m in cfg.get("metric_list") or cfg.get("aggregate_metric_list")]
        assert spec.metric in metrics, (benchmark, metrics)


# ---------------------------------------------------------------- the offline run on a tiny model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A random 2-layer Llama with a BPE tokenizer (and chat template) trained on the task's own text."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from simplemix.miniature.policy import train_tokenizer

    path = tmp_path_factory.mktemp("tiny-llama")
    corpus = [f"Question: {d['question']}\nAnswer: " + " ".join(d["choices"]) for d in task_docs()]
    tokenizer = train_tokenizer(corpus, vocab_size=200, out_dir=path)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                         initializer_range=0.3, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(7)  # a seed where no accuracy below is 0 or 1, so a flipped argmax would show
    LlamaForCausalLM(config).save_pretrained(path)
    return path


def task_docs() -> list[dict]:
    return [json.loads(line) for line in (TASKS_DIR / "tiny_mc.jsonl").read_text().splitlines() if line.strip()]


def expected_scores(model_dir: Path, chat: bool) -> tuple[list[str], list[list[float]], float, float]:
    """Contexts, choice log-likelihoods, acc and acc_norm computed directly: sum of log p(choice | prompt)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    contexts, lls, hits, hits_norm = [], [], 0, 0
    for doc in task_docs():
        prompt = f"Question: {doc['question']}\nAnswer:"
        if chat:  # the prompt becomes the user turn; the choice is the assistant's reply, with no leading space
            context = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                    add_generation_prompt=True)
            continuations = doc["choices"]
        else:
            context, continuations = prompt, [" " + c for c in doc["choices"]]
        context_ids = tokenizer(context, add_special_tokens=False)["input_ids"]
        scores = []
        for continuation in continuations:
            ids = tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
            assert ids[:len(context_ids)] == context_ids, "the choice must start on a token boundary"
            with torch.no_grad():
                logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
            scores.append(sum(logprobs[i - 1, ids[i]].item() for i in range(len(context_ids), len(ids))))
        contexts.append(context)
        lls.append(scores)
        ranked = sorted(scores, reverse=True)
        assert ranked[0] - ranked[1] > 1e-3, "a near tie would make the accuracy depend on numerics"
        hits += max(range(len(scores)), key=scores.__getitem__) == doc["answer"]
        normed = [s / len(c) for s, c in zip(scores, doc["choices"])]
        hits_norm += max(range(len(normed)), key=normed.__getitem__) == doc["answer"]
    return contexts, lls, hits / len(lls), hits_norm / len(lls)


@pytest.mark.parametrize("chat", [False, True], ids=["plain", "chat-template"])
def test_offline_run_matches_direct_loglikelihoods(tiny_model, tmp_path, monkeypatch, chat):
    """lm-eval's per-choice log-likelihoods, acc and acc_norm equal ours, with and without the chat template."""
    monkeypatch.chdir(ROOT)  # the task YAML names its data file relative to the repository root
    out = tmp_path / "results.json"
    result = run_benchmarks(tiny_model, [TASK], include_path=TASKS_DIR, apply_chat_template=chat, device="cpu",
                            dtype="float32", batch_size=4, log_samples=True, bootstrap_iters=0, output_path=out)
    contexts, lls, acc, acc_norm = expected_scores(tiny_model, chat)

    samples = sorted(result.raw["samples"][TASK], key=lambda s: s["doc_id"])
    assert [s["arguments"][0][0] for s in samples] == contexts
    assert [len(s["filtered_resps"]) for s in samples] == [len(doc) for doc in lls]
    flat = [r[0] for s in samples for r in s["filtered_resps"]]
    assert flat == pytest.approx([ll for doc in lls for ll in doc], abs=1e-4)
    values = dict(zip(result.table["metric"], result.table["value"]))
    assert values == pytest.approx({"acc": acc, "acc_norm": acc_norm})
    assert result.scores() == pytest.approx({TASK: acc}) and result.average == pytest.approx(acc)

    written = json.loads(out.read_text())
    assert written["average"] == pytest.approx(acc)
    assert written["paper_row"] == pytest.approx({TASK: 100 * acc, "Avg. Score": 100 * acc})
    assert [row["metric"] for row in written["table"]] == ["acc", "acc_norm"]
    assert all(row["stderr"] is None for row in written["table"])  # bootstrap_iters=0: lm-eval's "N/A"
    assert written["lm_eval"]["results"][TASK]["acc,none"] == pytest.approx(acc)
    assert not math.isnan(written["average"])


def test_chat_template_is_required_when_asked(tiny_model, tmp_path):
    """apply_chat_template=True on a tokenizer without a template fails before any weights load."""
    from transformers import AutoTokenizer

    plain = tmp_path / "no-template"
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(plain)
    with pytest.raises(ValueError, match="has no chat template"):
        run_benchmarks(plain, [TASK], include_path=TASKS_DIR, apply_chat_template=True)
    local = harness._task_manager([TASK], TASKS_DIR, None).all_tasks  # local names skip lm-eval's 5 s index
    assert local == ["simplemix_tiny_group", TASK]


def test_a_group_reports_its_aggregate_like_mmlu(tiny_model, monkeypatch):
    """A group task (as MMLU is) gives one row per metric of the group's aggregate, not of its subtasks."""
    monkeypatch.chdir(ROOT)
    result = run_benchmarks(tiny_model, ["simplemix_tiny_group"], include_path=TASKS_DIR, device="cpu",
                            dtype="float32", bootstrap_iters=0)
    assert result.table[["task", "metric", "reported"]].values.tolist() == [["simplemix_tiny_group", "acc", True]]
    assert result.average == pytest.approx(expected_scores(tiny_model, chat=False)[2])
