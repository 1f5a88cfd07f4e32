"""Tests of simplemix.data: the normalized schema, the loader of each format, and bad-input handling."""

from __future__ import annotations

import json
import logging
import math
import re
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

from simplemix import data
from simplemix.data import DataValidationError

REPO = Path(__file__).resolve().parents[1]
SLICE = REPO / "data" / "ultrafeedback_slice" / "train_clean_1000.jsonl"
FIXTURES = Path(__file__).resolve().parent / "fixtures"
KEEP_REAL_PROBLEMS = {"identical_responses": "keep", "empty_response": "keep"}


@pytest.fixture(autouse=True, scope="module")
def _datasets_cache(tmp_path_factory):
    # load_dataset("json", ...) writes Arrow files to its cache: keep them out of the user's.
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf_datasets")))
        yield


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def exact(message: str) -> str:
    return "^" + re.escape(message) + "$"


# --- the real UltraFeedback slice ------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_slice():
    return data.load_preferences("ultrafeedback_binarized", SLICE, on_invalid=KEEP_REAL_PROBLEMS)


def test_real_slice_keeps_every_row_and_reports_the_real_problems(real_slice):
    ds, report = real_slice
    assert ds.column_names == data.PREFERENCE_COLUMNS
    assert ds.features == data.PREFERENCE_FEATURES
    assert report.format == "ultrafeedback_binarized/standard"
    assert (report.rows_read, report.rows_kept, len(ds)) == (1000, 1000, 1000)
    assert report.dropped == {}
    assert report.kept_flagged == {"identical_responses": 4, "empty_response": 2}
    assert report.first_rows == {"identical_responses": [306, 655, 910, 997], "empty_response": [478, 833]}
    assert ds[306]["chosen"] == ds[306]["rejected"]
    assert ds[478]["rejected"] == "" and ds[833]["chosen"] == ""


def test_real_slice_rows_are_normalized(real_slice):
    ds, _ = real_slice
    row = ds[0]
    assert row["prompt"] == [{"role": "user", "content": "how to cook t-bone in the oven"}]
    assert row["chosen"].startswith("To cook a delicious T-bone steak in the oven")
    assert (row["source"], row["origin"]) == ("off", "ultrafeedback_binarized")
    assert json.loads(row["metadata"]) == {"score_chosen": 9.0, "score_rejected": 8.0, "source_index": 27808}
    for r in ds:
        meta = json.loads(r["metadata"])
        assert (r["score_chosen"], r["score_rejected"]) == (meta["score_chosen"], meta["score_rejected"])
    assert len(set(ds["pair_id"])) == 1000
    assert row["prompt_id"] == data.stable_hash(row["prompt"])


def test_real_slice_ids_are_stable_across_loads(real_slice):
    ds, _ = real_slice
    again, report = data.load_preferences("ultrafeedback_binarized", SLICE, on_invalid=KEEP_REAL_PROBLEMS, max_rows=20)
    assert report.rows_read == 20
    assert again["pair_id"] == ds["pair_id"][:20]
    assert again["prompt_id"] == ds["prompt_id"][:20]
    assert ds[0]["pair_id"] == "6b6113441d54bc0d"  # a change here changes every stored pair id


def test_real_slice_strict_default_names_file_row_and_field():
    with pytest.raises(DataValidationError) as info:
        data.load_preferences("ultrafeedback_binarized", SLICE)
    error = info.value
    assert (error.file, error.row, error.field, error.reason) == (str(SLICE), 306, "chosen", "identical_responses")
    assert str(error) == (
        f"{SLICE}: row 306: field 'chosen': chosen response is identical to rejected (reason: identical_responses)"
    )


def test_real_slice_drop_policy_removes_the_six_rows(caplog):
    with caplog.at_level(logging.INFO, logger="simplemix.data"):
        ds, report = data.load_preferences(
            "ultrafeedback_binarized", SLICE, on_invalid={"identical_responses": "drop", "empty_response": "drop"}
        )
    assert (report.rows_kept, len(ds)) == (994, 994)
    assert report.dropped == {"identical_responses": 4, "empty_response": 2}
    assert report.kept_flagged == {}
    [line] = [r.getMessage() for r in caplog.records if r.name == "simplemix.data"]
    assert line.endswith("1000 rows read, 994 pairs kept; dropped: empty_response=2, identical_responses=4")
    table = str(report)
    assert "dropped identical_responses" in table and "rows 306, 655, 910, 997" in table
    assert report.to_dict()["dropped"] == {"identical_responses": 4, "empty_response": 2}


# --- one tiny file per kind of bad row ------------------------------------------------------------

GOOD = [
    {"prompt": "Capital of Japan?", "chosen": "Tokyo.", "rejected": "Kyoto."},
    {"prompt": "2*3?", "chosen": "6", "rejected": "5"},
    {"prompt": "Opposite of hot?", "chosen": "Cold.", "rejected": "Warm."},
]


def changed(rows: list[dict], index: int, **changes) -> list[dict]:
    rows = [dict(r) for r in rows]
    rows[index].update(changes)
    return rows


def with_prompt(index: int, prompt: list[dict]) -> list[dict]:
    """GOOD in the conversational layout, with the prompt messages of one row replaced."""
    rows = [
        {"prompt": [{"role": "user", "content": r["prompt"]}],
         "chosen": [{"role": "assistant", "content": r["chosen"]}],
         "rejected": [{"role": "assistant", "content": r["rejected"]}]}
        for r in GOOD
    ]
    rows[index]["prompt"] = prompt
    return rows


SCORED = [dict(r, score_chosen=1.0) for r in GOOD]
BAD_ROWS = {  # reason: (rows, bad row, field, detail)
    "empty_prompt": (changed(GOOD, 1, prompt="   "), 1, "prompt", "user message of the prompt is empty"),
    "empty_response": (changed(GOOD, 2, rejected=""), 2, "rejected", "rejected response is empty"),
    "identical_responses": (
        changed(GOOD, 1, rejected="6"), 1, "chosen", "chosen response is identical to rejected"
    ),
    "non_finite_score": (changed(SCORED, 1, score_chosen=math.nan), 1, "score_chosen", "score is nan"),
    "unknown_role": (
        with_prompt(1, [{"role": "user", "content": "2*3?"}, {"role": "tool", "content": "6"},
                        {"role": "user", "content": "So?"}]),
        1, "prompt[1].role", "role 'tool' is not one of system, user, assistant",
    ),
    "non_string_content": (
        with_prompt(2, [{"role": "user", "content": 42}]), 2, "prompt[0].content", "content is int, not text"
    ),
    "malformed": (
        with_prompt(0, [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]),
        0, "prompt[1].role", "the last prompt message has role 'assistant', not 'user'",
    ),
}


@pytest.mark.parametrize("reason", sorted(BAD_ROWS))
def test_bad_row_raises_an_exact_error(tmp_path, reason):
    rows, row, field, detail = BAD_ROWS[reason]
    path = write_jsonl(tmp_path / "x.jsonl", rows)
    message = f"{path}: row {row}: field '{field}': {detail} (reason: {reason})"
    with pytest.raises(DataValidationError, match=exact(message)) as info:
        data.load_preferences("local", path)
    assert (info.value.file, info.value.row, info.value.field, info.value.reason) == (str(path), row, field, reason)


@pytest.mark.parametrize("reason", sorted(BAD_ROWS))
def test_bad_row_is_dropped_and_counted(tmp_path, reason):
    rows, row, _, _ = BAD_ROWS[reason]
    path = write_jsonl(tmp_path / "x.jsonl", rows)
    ds, report = data.load_preferences("local", path, on_invalid={reason: "drop"})
    assert ds["chosen"] == [r["chosen"] for i, r in enumerate(GOOD) if i != row]
    assert (report.rows_read, report.rows_kept) == (3, 2)
    assert report.dropped == {reason: 1} and report.first_rows == {reason: [row]}


@pytest.mark.parametrize("reason", ["empty_prompt", "empty_response", "identical_responses"])
def test_keepable_bad_row_is_kept_and_flagged(tmp_path, reason):
    rows, row, _, _ = BAD_ROWS[reason]
    ds, report = data.load_preferences("local", write_jsonl(tmp_path / "x.jsonl", rows), on_invalid={reason: "keep"})
    assert len(ds) == 3 and report.kept_flagged == {reason: 1} and report.first_rows == {reason: [row]}


def test_a_stored_pair_file_is_read_once_per_process_and_again_when_it_changes(tmp_path):
    path = write_jsonl(tmp_path / "pairs.jsonl", GOOD)
    first = data.load_stored_pairs(path, "on")
    assert data.load_stored_pairs(path, "on") is first  # the second read is the first's table
    assert first["chosen"] == [r["chosen"] for r in GOOD] and set(first["source"]) == {"on"}
    assert set(data.load_stored_pairs(path, "off")["source"]) == {"off"}  # labelled as asked, not as cached
    write_jsonl(path, GOOD[:2])  # a rewritten file (a stage recomputed by hand) is read again
    assert data.load_stored_pairs(path, "on")["chosen"] == [r["chosen"] for r in GOOD[:2]]


AWKWARD = ["line\u2028separator", "para\u2029graph", "next\u0085line", "nul\x00byte", "cr\rlf\r\n", "vt\x0bff\x0c",
           "fs\x1cgs\x1drs\x1e", "emoji \U0001F600 and ü", "", "tab\tend"]


def test_jsonl_round_trips_every_string_and_keeps_one_row_per_line_for_any_reader(tmp_path):
    rows = [{"prompt_id": i, "text": text, "nested": {"samples": [{"text": text}]}} for i, text in enumerate(AWKWARD)]
    path = tmp_path / "samples.jsonl"
    assert data.write_jsonl(path, rows) == len(rows)
    assert data.read_jsonl(path) == rows
    raw = path.read_text(encoding="utf-8")
    assert len(raw.splitlines()) == len(rows)  # str.splitlines() and line-based tools see the same rows
    assert [json.loads(line) for line in raw.splitlines()] == rows
    assert "ü" in raw and "\U0001F600" in raw  # non-ASCII stays readable


def test_pair_files_with_line_separators_load_through_datasets(tmp_path):
    rows = [{"prompt": f"q{i} {t}", "chosen": f"good {t}", "rejected": f"bad {t}"} for i, t in enumerate(AWKWARD[:4])]
    path = tmp_path / "pairs.jsonl"
    data.write_jsonl(path, rows)
    ds, _ = data.load_preferences("local", path)
    assert ds["chosen"] == [r["chosen"] for r in rows]


def test_a_lone_surrogate_is_refused_naming_file_row_and_field(tmp_path):
    path = tmp_path / "samples.jsonl"
    rows = [{"text": "fine"}, {"prompt_id": 1, "samples": [{"text": "ok"}, {"text": "half \ud83d of an emoji"}]}]
    with pytest.raises(DataValidationError) as info:
        data.write_jsonl(path, rows)
    assert (info.value.file, info.value.row, info.value.field, info.value.reason) == (
        str(path), 1, "samples[1].text", "lone_surrogate")
    assert not path.exists()  # nothing half-written


def test_a_line_that_is_not_json_names_file_and_row(tmp_path):
    path = tmp_path / "samples.jsonl"
    path.write_text('{"a": 1}\n{"a": "cut\n{"a": 3}\n', encoding="utf-8")
    with pytest.raises(DataValidationError, match=r"samples.jsonl: row 1: not a JSON object: .* at column \d+ "
                                                  r"\(reason: invalid_json\)"):
        data.read_jsonl(path)


def test_a_broken_line_in_a_pair_file_is_one_error_naming_file_and_row(tmp_path):
    path = tmp_path / "pairs.jsonl"
    good = json.dumps({"prompt": "q", "chosen": "a", "rejected": "b"})
    path.write_text(f"{good}\n{good}\n{good[:-5]}\n{good}\n", encoding="utf-8")
    with pytest.raises(DataValidationError) as info:
        data.load_preferences("local", path)
    assert (info.value.file, info.value.row, info.value.reason) == (str(path), 2, "invalid_json")


def test_missing_column_is_a_file_level_error(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", [{k: r[k] for k in ("prompt", "chosen")} for r in GOOD])
    message = (f"{path}: field 'rejected': missing column (format detected: local/standard; "
               "columns found: prompt, chosen) (reason: missing_column)")
    with pytest.raises(DataValidationError, match=exact(message)) as info:
        data.load_preferences("local", path)
    assert info.value.row is None and info.value.reason == "missing_column"


def test_score_that_is_not_a_number(tmp_path):
    path = write_jsonl(tmp_path / "x.jsonl", changed(SCORED, 2, score_chosen="high"))
    message = f"{path}: row 2: field 'score_chosen': score 'high' is not a number (reason: non_finite_score)"
    with pytest.raises(DataValidationError, match=exact(message)):
        data.load_preferences("local", path)


def test_infinite_score_in_parquet(tmp_path):
    path = tmp_path / "x.parquet"
    datasets.Dataset.from_list(changed([dict(r, score_rejected=0.0) for r in GOOD], 1, score_rejected=-math.inf)
                               ).to_parquet(path)
    message = f"{path}: row 1: field 'score_rejected': score is -inf (reason: non_finite_score)"
    with pytest.raises(DataValidationError, match=exact(message)):
        data.load_preferences("local", path)


def test_nan_in_a_json_array_reaches_us_as_null(tmp_path):
    # A limit of `datasets`, pinned here: JSON arrays go through pandas, which writes NaN as null.
    path = tmp_path / "x.json"
    path.write_text(json.dumps(changed(SCORED, 1, score_chosen=math.nan)))
    ds, _ = data.load_preferences("local", path)
    assert ds["score_chosen"] == [1.0, None, 1.0]


def test_implicit_conversations_with_different_prompts(tmp_path):
    rows = read_jsonl(FIXTURES / "local_implicit.jsonl")
    rows[1]["rejected"][0]["content"] = "3*2?"
    path = write_jsonl(tmp_path / "x.jsonl", rows)
    message = (f"{path}: row 1: field 'rejected': chosen and rejected conversations do not share the same prompt "
               "turns (reason: malformed)")
    with pytest.raises(DataValidationError, match=exact(message)):
        data.load_preferences("local", path)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"on_invalid": {"typo": "drop"}}, "on_invalid: unknown reason 'typo'; valid reasons: missing_column, "),
        ({"on_invalid": {"empty_prompt": "skip"}},
         "on_invalid['empty_prompt']: unknown action 'skip'; valid actions: error, drop, keep"),
        ({"on_invalid": {"unknown_role": "keep"}}, "on_invalid['unknown_role']: 'keep' is not possible"),
        ({"on_invalid": {"non_finite_score": "keep"}}, "on_invalid['non_finite_score']: 'keep' is not possible"),
        ({"on_invalid": {"missing_column": "drop"}},
         "on_invalid['missing_column']: a missing column is always an error"),
        ({"source": "online"}, "source must be 'on', 'off' or None"),
        ({"binarize": "best_worst"}, "binarize must be 'max_min' or 'max_random', not 'best_worst'"),
        ({"split": "test"}, "no/such/file.jsonl: split='test' applies to hub datasets"),
    ],
)
def test_bad_options_are_refused_before_reading(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        data.load_preferences("local", "no/such/file.jsonl", **options)


def test_unknown_format_is_refused():
    message = "unknown format 'csv'; valid formats: ultrafeedback_raw, ultrafeedback_binarized, helpsteer2, local"
    with pytest.raises(ValueError, match=re.escape(message)):
        data.load_preferences("csv", SLICE)


# --- the formats ----------------------------------------------------------------------------------


def test_ultrafeedback_raw_max_min():
    ds, report = data.load_preferences("ultrafeedback_raw", FIXTURES / "ultrafeedback_raw.jsonl")
    assert (report.rows_read, report.rows_kept) == (4, 3)
    assert report.dropped == {"tied_scores": 1} and report.first_rows == {"tied_scores": [1]}
    assert [(r["chosen"], r["rejected"]) for r in ds] == [
        ("11 is prime.", "Ten."),  # 4.5 against the first of the two 2.0s
        ("cat", "chat"),  # a tie at the top (4.0, 4.0): the first one
        ("Holding papers together.", "Eat it."),  # three completions
    ]
    assert [(r["score_chosen"], r["score_rejected"]) for r in ds] == [(4.5, 2.0), (4.0, 1.5), (5.0, 2.0)]
    assert ds[0]["prompt"] == [{"role": "user", "content": "Name a prime number greater than 10."}]
    meta = json.loads(ds[0]["metadata"])
    assert meta["source"] == "evol_instruct" and (meta["chosen_index"], meta["rejected_index"]) == (0, 1)
    assert meta["models"] == ["m-a", "m-b", "m-c", "m-d"] and meta["scores"] == [4.5, 2.0, 3.0, 2.0]


def test_ultrafeedback_raw_overall_score_and_max_random():
    path = FIXTURES / "ultrafeedback_raw.jsonl"
    ds, report = data.load_preferences("ultrafeedback_raw", path, score_field="overall_score")
    assert report.dropped == {}  # overall scores 7, 6, 7, 7 are not all tied
    assert (ds[1]["chosen"], ds[1]["rejected"]) == ("Hello!", "Hi.")
    draws = {}
    for seed in range(20):
        ds, _ = data.load_preferences("ultrafeedback_raw", path, binarize="max_random", seed=seed)
        assert ds[0]["chosen"] == "11 is prime." and ds[0]["rejected"] in {"Ten.", "13, for example.", "9 is prime."}
        assert ds[0]["score_rejected"] < ds[0]["score_chosen"]
        draws[seed] = ds["rejected"]
    again, _ = data.load_preferences("ultrafeedback_raw", path, binarize="max_random", seed=3)
    assert again["rejected"] == draws[3]
    assert len({tuple(d) for d in draws.values()}) > 1


def test_ultrafeedback_raw_rows_in_memory():
    rows = read_jsonl(FIXTURES / "ultrafeedback_raw.jsonl")
    del rows[2]["completions"][1:]
    ds, report = data.binarize_ultrafeedback(rows)
    assert report.file == "<rows>" and report.dropped == {"tied_scores": 1, "unpaired_prompt": 1}
    assert report.first_rows == {"tied_scores": [1], "unpaired_prompt": [2]} and len(ds) == 2


def test_ultrafeedback_binarized_h4_and_trl_lib():
    h4, report = data.load_preferences("ultrafeedback_binarized", FIXTURES / "h4_binarized.jsonl")
    assert report.format == "ultrafeedback_binarized/h4"
    assert h4[0]["prompt"] == [{"role": "user", "content": "What is 2+2?"}]
    assert (h4[0]["chosen"], h4[0]["rejected"], h4[0]["score_chosen"], h4[0]["score_rejected"]) == ("4", "5", 9.0, 3.0)
    assert json.loads(h4[0]["metadata"]) == {"prompt_id": "5f3a"}
    trl_lib, report = data.load_preferences("ultrafeedback_binarized", FIXTURES / "trl_binarized.jsonl")
    assert report.format == "ultrafeedback_binarized/implicit"
    assert trl_lib[0]["prompt_id"] == h4[0]["prompt_id"]  # the same prompt has the same id in both releases
    assert trl_lib[1]["prompt"] == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bye"},
    ]
    assert (trl_lib[1]["chosen"], trl_lib[1]["rejected"]) == ("Goodbye.", "Wait, one more thing...")


def test_helpsteer2_pairs_by_weighted_score():
    ds, report = data.load_preferences("helpsteer2", FIXTURES / "helpsteer2.jsonl")
    assert (report.rows_read, report.rows_kept) == (7, 2)
    # Rows 4 and 5 tie: 0.65*2 + 0.8*2 + 0.45*2 + 0.55*2 - 0.4*2 = 0.65*2 + 0.8*3 + 0.45*2 + 0.55*2 - 0.4*4 = 4.1,
    # although the two float sums differ in their last bit. Row 6 is a prompt with one response.
    assert report.dropped == {"tied_scores": 1, "unpaired_prompt": 1}
    assert report.first_rows == {"tied_scores": [4], "unpaired_prompt": [6]}
    haiku, capital = ds[0], ds[1]
    assert haiku["chosen"] == "Soft rain on the roof / ..."
    assert haiku["score_chosen"] == pytest.approx(0.65 * 3 + 0.8 * 4 + 0.45 * 4 + 0.55 * 2 - 0.4 * 1)  # row 0: 7.65
    assert haiku["score_rejected"] == pytest.approx(0.65 * 2 + 0.8 * 2 + 0.45 * 3 + 0.55 * 2 - 0.4 * 3)  # row 1: 4.15
    assert (capital["chosen"], capital["rejected"]) == ("Rome.", "Milan.")  # row 3 (7.75) beats row 2 (2.95)
    assert capital["prompt"] == [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And of Italy?"},
    ]
    meta = json.loads(capital["metadata"])
    assert meta["rows"] == [3, 2] and meta["attributes"][0]["helpfulness"] == 4


def test_helpsteer2_custom_weights_and_strict_ties():
    path = FIXTURES / "helpsteer2.jsonl"
    ds, _ = data.load_preferences("helpsteer2", path, helpsteer2_weights={"correctness": 1.0})
    assert ds["chosen"] == ["Soft rain on the roof / ...", "Rome.",
                            "The expected information content of a random variable, in bits."]
    message = f"{path}: row 4: field 'response': rows 4 and 5 have the same weighted score 4.1 (reason: tied_scores)"
    with pytest.raises(DataValidationError, match=exact(message)):
        data.load_preferences("helpsteer2", path, on_invalid={"tied_scores": "error"})


def test_helpsteer2_bad_response_names_its_own_row():
    rows = read_jsonl(FIXTURES / "helpsteer2.jsonl")
    rows[3]["response"] = " "
    message = "<rows>: row 3: field 'response': chosen response is empty (reason: empty_response)"
    with pytest.raises(DataValidationError, match=exact(message)):
        data.pair_helpsteer2(rows)


def test_helpsteer2_messages_single_and_multi_turn():
    assert data.helpsteer2_messages("Hi") == [{"role": "user", "content": "Hi"}]
    prompt = "A\n<extra_id_1>Assistant\nB\n<extra_id_1>User\nC\n<extra_id_1>Assistant\nD\n<extra_id_1>User\nE"
    assert data.helpsteer2_messages(prompt) == [
        {"role": "user", "content": "A"}, {"role": "assistant", "content": "B"}, {"role": "user", "content": "C"},
        {"role": "assistant", "content": "D"}, {"role": "user", "content": "E"},
    ]


@pytest.mark.parametrize("layout", ["standard", "conversational", "implicit"])
def test_local_layouts_in_jsonl_and_parquet(tmp_path, layout):
    jsonl = FIXTURES / f"local_{layout}.jsonl"
    parquet = tmp_path / f"local_{layout}.parquet"
    datasets.Dataset.from_list(read_jsonl(jsonl)).to_parquet(parquet)
    from_jsonl, report = data.load_preferences("local", jsonl)
    from_parquet, _ = data.load_preferences("local", parquet)
    assert report.format == f"local/{layout}"
    assert from_jsonl[0]["chosen"] == "Tokyo."
    assert from_jsonl[0]["prompt"][-1] == {"role": "user", "content": "Capital of Japan?"}
    for column in ("prompt_id", "prompt", "chosen", "rejected", "score_chosen", "score_rejected", "metadata"):
        assert from_jsonl[column] == from_parquet[column]
    assert set(from_jsonl["origin"]) == {jsonl.name}
    if layout == "standard":
        assert from_jsonl["score_chosen"] == [1.0, None, 0.75]
    if layout == "conversational":
        assert from_jsonl[0]["prompt"][0] == {"role": "system", "content": "Answer in one word."}


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_normalized_files_round_trip(tmp_path, suffix):
    ds, report = data.validate_rows(
        [{"prompt": [{"role": "user", "content": "Pick a number."}], "chosen": "7", "rejected": "seven hundred",
          "score_chosen": 0.9, "score_rejected": 0.1, "metadata": {"sampler": "transformers"}}],
        origin="smoke-policy", source="on",
    )
    assert report.format == "local/conversational"
    path = tmp_path / f"pairs.{suffix}"
    ds.to_json(path) if suffix == "jsonl" else ds.to_parquet(path)
    again, report = data.load_preferences("local", path)
    assert report.format == "local/normalized"
    assert again.to_list() == ds.to_list()  # source "on", origin and ids survive
    assert again[0]["source"] == "on" and json.loads(again[0]["metadata"]) == {"sampler": "transformers"}


def test_source_parameter_overrides():
    ds, _ = data.load_preferences("local", FIXTURES / "local_standard.jsonl", source="on")
    assert set(ds["source"]) == {"on"}


def test_hub_ids_go_through_load_dataset(monkeypatch):
    calls = []
    rows = read_jsonl(FIXTURES / "h4_binarized.jsonl")

    def fake_load_dataset(name, split=None, **kwargs):
        calls.append((name, split, kwargs))
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ds, report = data.load_preferences("ultrafeedback_binarized", "HuggingFaceH4/ultrafeedback_binarized", max_rows=1)
    assert calls == [("HuggingFaceH4/ultrafeedback_binarized", "train_prefs", {})]
    assert report.file == "HuggingFaceH4/ultrafeedback_binarized (split train_prefs)" and len(ds) == 1
    data.load_preferences("ultrafeedback_binarized", "trl-lib/ultrafeedback_binarized", split="test")
    assert calls[-1] == ("trl-lib/ultrafeedback_binarized", "test", {})
    rows[1]["chosen"][1]["content"] = ""
    message = ("org/data (split train): row 1: field 'chosen[1].content': chosen response is empty "
               "(reason: empty_response)")
    with pytest.raises(DataValidationError, match=exact(message)):
        data.load_preferences("local", "org/data")


def test_to_trl_is_accepted_by_trl():
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast
    from trl.data_utils import apply_chat_template, is_conversational

    ds, _ = data.load_preferences("local", FIXTURES / "local_conversational.jsonl")
    example = data.to_trl(ds)[0]
    assert set(example) == {"prompt", "chosen", "rejected"}
    assert example["chosen"] == [{"role": "assistant", "content": "Tokyo."}]
    assert is_conversational(example)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")),
        chat_template="{% for m in messages %}<{{ m.role }}>{{ m.content }}</s>{% endfor %}"
                      "{% if add_generation_prompt %}<assistant>{% endif %}",
    )
    assert apply_chat_template(example, tokenizer) == {
        "prompt": "<system>Answer in one word.</s><user>Capital of Japan?</s><assistant>",
        "chosen": "Tokyo.</s>",
        "rejected": "Kyoto.</s>",
    }


def test_import_does_not_load_datasets():
    code = "import sys, simplemix.data; print('datasets' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
