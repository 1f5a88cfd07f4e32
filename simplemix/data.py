"""Preference data: one normalized schema, loaders for the paper's datasets and local files, validation reports.

Every loader reads through `datasets`, checks each row while normalizing it, and applies one policy per
problem kind (``on_invalid``): stop with an error that names file, row and field, drop the row, or keep it.
Nothing is dropped silently: the returned :class:`LoadReport` counts every dropped or flagged row.
Owns the preference schema and its loaders; imports config and store.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import logging
import math
import os
import random
import re
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, Sequence

from simplemix.config import HELPSTEER2_WEIGHTS
from simplemix.store import canonical_json, stable_hash

if TYPE_CHECKING:
    from datasets import Dataset, Features

logger = logging.getLogger(__name__)

PREFERENCE_COLUMNS = [
    "pair_id", "prompt_id", "prompt", "chosen", "rejected",
    "score_chosen", "score_rejected", "source", "origin", "metadata",
]
ROLES = ("system", "user", "assistant")
FORMATS = ("ultrafeedback_raw", "ultrafeedback_binarized", "helpsteer2", "local")
REASONS = (
    "missing_column", "empty_prompt", "empty_response", "identical_responses", "non_finite_score",
    "unknown_role", "non_string_content", "malformed", "tied_scores", "unpaired_prompt",
)
# "malformed": a prompt not ending with a user turn, a response that is not one assistant message, chosen and
# rejected conversations with different prompt turns, or a source other than "on"/"off".
ACTIONS = ("error", "drop", "keep")
DEFAULT_POLICY = {reason: "error" for reason in REASONS} | {"tied_scores": "drop", "unpaired_prompt": "drop"}
# A row with one of these problems has no value the schema can hold, so it cannot be kept.
UNKEEPABLE = frozenset({
    "missing_column", "unknown_role", "non_string_content", "non_finite_score", "malformed", "tied_scores",
    "unpaired_prompt",
})

_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_DEFAULT_SPLITS = {"HuggingFaceH4/ultrafeedback_binarized": "train_prefs"}
_HELPSTEER2_TURN = re.compile(r"\n?<extra_id_1>(User|Assistant)\n?")


def __getattr__(name: str) -> Any:
    # PREFERENCE_FEATURES is built on first use: importing `datasets` takes about half a second.
    if name == "PREFERENCE_FEATURES":
        return _preference_features()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _preference_features() -> Features:
    from datasets import Features, List, Value

    return Features({
        "pair_id": Value("string"), "prompt_id": Value("string"),
        "prompt": List({"role": Value("string"), "content": Value("string")}),
        "chosen": Value("string"), "rejected": Value("string"),
        "score_chosen": Value("float64"), "score_rejected": Value("float64"),
        "source": Value("string"), "origin": Value("string"), "metadata": Value("string"),
    })


class DataValidationError(ValueError):
    """A problem in the input data, located by file (or hub id and split), 0-based row and field."""

    def __init__(self, file: str, row: int | None, field: str | None, reason: str, detail: str):
        self.file, self.row, self.field, self.reason, self.detail = file, row, field, reason, detail
        where = [file] + ([f"row {row}"] if row is not None else []) + ([f"field {field!r}"] if field else [])
        super().__init__(f"{': '.join(where)}: {detail} (reason: {reason})")


@dataclasses.dataclass
class LoadReport:
    """What a load read, kept, dropped and kept despite a problem, with the first rows of each problem kind."""

    file: str
    format: str
    rows_read: int = 0  # source rows; for HelpSteer2 one per response, so two per pair
    rows_kept: int = 0  # normalized pairs
    dropped: dict[str, int] = dataclasses.field(default_factory=dict)
    kept_flagged: dict[str, int] = dataclasses.field(default_factory=dict)
    first_rows: dict[str, list[int]] = dataclasses.field(default_factory=dict)

    def _count(self, outcome: dict[str, int], reason: str, row: int) -> None:
        """Count one row under ``reason`` in ``outcome`` (``self.dropped`` or ``self.kept_flagged``)."""
        outcome[reason] = outcome.get(reason, 0) + 1
        rows = self.first_rows.setdefault(reason, [])
        if len(rows) < 5:
            rows.append(row)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> str:
        """One line for the log."""
        parts = [f"{self.file} ({self.format}): {self.rows_read} rows read, {self.rows_kept} pairs kept"]
        for label, counts in (("dropped", self.dropped), ("kept with problems", self.kept_flagged)):
            if counts:
                parts.append(f"{label}: " + ", ".join(f"{r}={n}" for r, n in sorted(counts.items())))
        return "; ".join(parts)

    def __str__(self) -> str:
        lines = [f"{self.file} ({self.format})", f"  {'rows read':<36}{self.rows_read:>8}",
                 f"  {'pairs kept':<36}{self.rows_kept:>8}"]
        for label, counts in (("dropped", self.dropped), ("kept, flagged", self.kept_flagged)):
            for reason, n in sorted(counts.items()):
                rows = ", ".join(map(str, self.first_rows[reason])) + (", ..." if n > 5 else "")
                lines.append(f"  {label + ' ' + reason:<36}{n:>8}  rows {rows}")
        return "\n".join(lines)


class _Pair:
    """One candidate pair being normalized: its fields, where each came from, and the problems found."""

    def __init__(self, row: int, origin: str, metadata: dict | None = None):
        self.row, self.origin, self.metadata = row, origin, metadata or {}
        self.prompt: list[dict] | None = None
        self.chosen: str | None = None
        self.rejected: str | None = None
        self.score_chosen: float | None = None
        self.score_rejected: float | None = None
        self.source: str | None = None
        self.where = {"prompt": "prompt", "chosen": "chosen", "rejected": "rejected"}
        self.row_of: dict[str, int] = {}  # the source row of a field where it is not self.row (HelpSteer2)
        self.prompt_is_text = False
        self.problems: list[tuple[str, str, str, int]] = []

    def flag(self, reason: str, field: str, detail: str, row: int | None = None) -> None:
        self.problems.append((reason, field, detail, self.row if row is None else row))

    def messages(self, value: Any, field: str, row: int | None = None) -> list[dict] | None:
        """Checked copies of chat messages, or None when they cannot be represented."""
        if not isinstance(value, list):
            detail = f"expected a list of messages, got {type(value).__name__}"
            self.flag("non_string_content", field, detail, row)
            return None
        out, known = [], len(self.problems)
        for j, message in enumerate(value):
            message = message if isinstance(message, dict) else {}
            role, content = message.get("role"), message.get("content")
            if role not in ROLES:
                detail = f"role {role!r} is not one of {', '.join(ROLES)}"
                self.flag("unknown_role", f"{field}[{j}].role", detail, row)
            if not isinstance(content, str):
                detail = f"content is {type(content).__name__}, not text"
                self.flag("non_string_content", f"{field}[{j}].content", detail, row)
            out.append({"role": role, "content": content})
        return out if len(self.problems) == known else None

    def set_prompt(self, value: Any, field: str, split_turns: Callable[[str], list[dict]] | None = None) -> None:
        """The prompt from text (one user turn, or turns cut by ``split_turns``) or from a message list."""
        self.where["prompt"] = field
        if isinstance(value, str):
            self.prompt_is_text = True
            self.prompt = split_turns(value) if split_turns else [{"role": "user", "content": value}]
        elif isinstance(value, list):
            self.prompt = self.messages(value, field)
        else:
            detail = f"expected text or a list of messages, got {type(value).__name__}"
            self.flag("non_string_content", field, detail)

    def set_response(self, key: str, value: Any, field: str, row: int | None = None) -> None:
        """``chosen`` or ``rejected`` from text or from a list holding one assistant message."""
        self.where[key] = field
        if row is not None:
            self.row_of[key] = row
        if isinstance(value, list):
            messages = self.messages(value, field, row)
            if messages is None:
                return
            roles = [m["role"] for m in messages]
            if roles != ["assistant"]:
                self.flag("malformed", field, f"expected one assistant message, got roles {roles}", row)
                return
            field, value = f"{field}[0].content", messages[0]["content"]
            self.where[key] = field
        if isinstance(value, str):
            setattr(self, key, value)
        else:
            self.flag("non_string_content", field, f"expected text, got {type(value).__name__}", row)

    def split_conversations(self, chosen: Any, rejected: Any) -> None:
        """Implicit prompt: the turns before the last, shared by both conversations, are the prompt."""
        conversations = {"chosen": self.messages(chosen, "chosen"), "rejected": self.messages(rejected, "rejected")}
        if None in conversations.values():
            return
        for key, conversation in conversations.items():
            if not conversation or conversation[-1]["role"] != "assistant":
                self.flag("malformed", key, f"{key} conversation does not end with an assistant message")
                return
        c, r = conversations["chosen"], conversations["rejected"]
        if c[:-1] != r[:-1]:
            self.flag("malformed", "rejected", "chosen and rejected conversations do not share the same prompt turns")
            return
        self.prompt, self.where["prompt"] = c[:-1], "chosen"
        for key, conversation in conversations.items():
            setattr(self, key, conversation[-1]["content"])
            self.where[key] = f"{key}[{len(conversation) - 1}].content"

    def score(self, value: Any, field: str, row: int | None = None) -> float | None:
        """A finite float, or None when unscored."""
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.flag("non_finite_score", field, f"score {value!r} is not a number", row)
            return None
        if not math.isfinite(value):
            self.flag("non_finite_score", field, f"score is {value}", row)
            return None
        return float(value)

    def check(self) -> None:
        """The checks on the normalized values: empty prompt or response, identical responses, last turn."""
        if self.prompt is not None:
            def at(j: int, attr: str) -> str:
                return self.where["prompt"] if self.prompt_is_text else f"{self.where['prompt']}[{j}].{attr}"

            if not self.prompt:
                self.flag("empty_prompt", self.where["prompt"], "prompt has no messages")
            for j, message in enumerate(self.prompt):
                if not message["content"].strip():
                    self.flag("empty_prompt", at(j, "content"), f"{message['role']} message of the prompt is empty")
            if self.prompt and self.prompt[-1]["role"] != "user":
                last = len(self.prompt) - 1
                detail = f"the last prompt message has role {self.prompt[last]['role']!r}, not 'user'"
                self.flag("malformed", at(last, "role"), detail)
        for key in ("chosen", "rejected"):
            text = getattr(self, key)
            if text is not None and not text.strip():
                self.flag("empty_response", self.where[key], f"{key} response is empty", self.row_of.get(key))
        if self.chosen is not None and self.chosen == self.rejected:
            detail = "chosen response is identical to rejected"
            self.flag("identical_responses", self.where["chosen"], detail, self.row_of.get("chosen"))

    def record(self, source: str | None) -> dict[str, Any]:
        return {
            "pair_id": stable_hash([self.origin, self.prompt, self.chosen, self.rejected]),
            "prompt_id": stable_hash(self.prompt),
            "prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected,
            "score_chosen": self.score_chosen, "score_rejected": self.score_rejected,
            "source": source or self.source or "off", "origin": self.origin,
            "metadata": canonical_json(self.metadata),
        }


def _policy(on_invalid: Mapping[str, str] | None, source: str | None, binarize: str = "max_min") -> dict[str, str]:
    """The default policy updated by ``on_invalid``; the options are all checked before any data is read."""
    if source not in (None, "on", "off"):
        raise ValueError(f"source must be 'on', 'off' or None (the file's own column, else 'off'), not {source!r}")
    if binarize not in ("max_min", "max_random"):
        raise ValueError(f"binarize must be 'max_min' or 'max_random', not {binarize!r}")
    policy = dict(DEFAULT_POLICY)
    for reason, action in (on_invalid or {}).items():
        if reason not in REASONS:
            raise ValueError(f"on_invalid: unknown reason {reason!r}; valid reasons: {', '.join(REASONS)}")
        if action not in ACTIONS:
            raise ValueError(f"on_invalid[{reason!r}]: unknown action {action!r}; valid actions: {', '.join(ACTIONS)}")
        if reason == "missing_column" and action != "error":
            raise ValueError("on_invalid['missing_column']: a missing column is always an error")
        if action == "keep" and reason in UNKEEPABLE:
            raise ValueError(f"on_invalid[{reason!r}]: 'keep' is not possible, such a row has no value the schema "
                             "can hold; use 'error' or 'drop'")
        policy[reason] = action
    return policy


def _require(columns: Sequence[str], required: Iterable[str], report: LoadReport) -> None:
    for column in required:
        if column not in columns:
            found = ", ".join(columns) or "none"
            detail = f"missing column (format detected: {report.format}; columns found: {found})"
            raise DataValidationError(report.file, None, column, "missing_column", detail)


def _read(path: str | os.PathLike, split: str | None, max_rows: int | None) -> tuple[Dataset, str]:
    """A local JSON/JSONL/Parquet file, or a hub dataset split, as a Dataset and the label errors name it by."""
    import datasets

    path = os.fspath(path)
    builder = _FILE_BUILDERS.get(os.path.splitext(path)[1].lower())
    if builder:
        if split not in (None, "train"):
            raise ValueError(f"{path}: split={split!r} applies to hub datasets; a local file is read whole")
        try:
            ds, label = datasets.load_dataset(builder, data_files=path, split="train"), path
        except Exception as e:  # pyarrow's error names neither the file nor the line
            if builder == "json":
                _locate_json_error(path)  # raises naming the row, where the file is not valid JSON
            raise DataValidationError(path, None, None, "unreadable", f"{type(e).__name__}: "
                                      f"{str(e).strip().splitlines()[-1] if str(e).strip() else ''}") from None
    else:
        split = split or _DEFAULT_SPLITS.get(path, "train")
        ds, label = datasets.load_dataset(path, split=split), f"{path} (split {split})"
    if max_rows is not None:
        ds = ds.select(range(min(max_rows, len(ds))))
    return ds, label


def _locate_json_error(path: str) -> None:
    """Raise a DataValidationError at the first row of a JSON or JSONL file that is not valid JSON, if any."""
    if not path.endswith(".json"):
        read_jsonl(path)
        return
    try:
        with open(path, encoding="utf-8") as f:
            json.load(f)
    except json.JSONDecodeError as e:
        raise DataValidationError(path, None, None, "invalid_json",
                                  f"not valid JSON: {e.msg} at line {e.lineno}, column {e.colno}") from None


def _finish(pairs: Iterable[_Pair], report: LoadReport, policy: dict[str, str],
            source: str | None) -> tuple[Dataset, LoadReport]:
    """Apply the policy to each checked pair; build the normalized Dataset and log the report."""
    from datasets import Dataset

    records = []
    for pair in pairs:
        pair.check()
        errors = [p for p in pair.problems if policy[p[0]] == "error"]
        if errors:
            reason, field, detail, row = errors[0]
            raise DataValidationError(report.file, row, field, reason, detail)
        drops = [p for p in pair.problems if policy[p[0]] == "drop"]
        if drops:
            report._count(report.dropped, drops[0][0], pair.row)
            continue
        for reason in dict.fromkeys(p[0] for p in pair.problems):
            report._count(report.kept_flagged, reason, pair.row)
        records.append(pair.record(source))
    report.rows_kept = len(records)
    logger.info("%s", report.summary())
    return Dataset.from_list(records, features=_preference_features()), report


def _metadata(row: Mapping[str, Any], consumed: set[str]) -> dict[str, Any]:
    """Provenance: the columns no schema field took, merged into a nested ``metadata`` dict or JSON text."""
    extra = {k: v for k, v in row.items() if k not in consumed and k != "metadata"}
    nested = row.get("metadata")
    if isinstance(nested, str):
        try:
            nested = json.loads(nested)
        except ValueError:
            pass
    if isinstance(nested, dict):
        return {**nested, **extra}
    return extra if nested is None else {**extra, "metadata": nested}


# The columns each tabular layout reads; "h4" is HuggingFaceH4/ultrafeedback_binarized: whole conversations in
# chosen/rejected (and `messages`), with a `prompt` column that repeats their first turn.
_LAYOUT_COLUMNS = {
    "normalized": PREFERENCE_COLUMNS,
    "standard": ["prompt", "chosen", "rejected"],
    "conversational": ["prompt", "chosen", "rejected"],
    "implicit": ["chosen", "rejected"],
    "h4": ["prompt", "chosen", "rejected", "messages"],
}


def _layout(columns: Sequence[str], first: Mapping[str, Any]) -> str:
    """Which tabular layout the columns and the first row follow."""
    if set(PREFERENCE_COLUMNS) <= set(columns):
        return "normalized"
    if "prompt" not in columns:
        return "implicit"
    if isinstance(first.get("prompt"), str) and isinstance(first.get("chosen"), list) and len(first["chosen"]) > 1:
        return "h4"
    return "conversational" if isinstance(first.get("prompt"), list) else "standard"


def _tabular_pairs(rows: Iterable[Mapping[str, Any]], layout: str, origin: str) -> Iterator[_Pair]:
    consumed = {*_LAYOUT_COLUMNS[layout], "score_chosen", "score_rejected"}
    for i, row in enumerate(rows):
        pair = _Pair(i, origin, _metadata(row, consumed))
        if layout in ("implicit", "h4"):
            pair.split_conversations(row["chosen"], row["rejected"])
        else:
            pair.set_prompt(row["prompt"], "prompt")
            pair.set_response("chosen", row["chosen"], "chosen")
            pair.set_response("rejected", row["rejected"], "rejected")
        nested = row.get("metadata") if isinstance(row.get("metadata"), dict) else {}
        for key in ("score_chosen", "score_rejected"):
            value, field = (row[key], key) if key in row else (nested.get(key), f"metadata.{key}")
            setattr(pair, key, pair.score(value, field))
        if layout == "normalized":
            pair.origin = row["origin"] if isinstance(row["origin"], str) else origin
            if row["source"] not in ("on", "off"):
                pair.flag("malformed", "source", f"source {row['source']!r} is not 'on' or 'off'")
            pair.source = row["source"]
        yield pair


def _columns(rows: Dataset | Sequence[Mapping[str, Any]]) -> list[str]:
    return list(rows.column_names) if hasattr(rows, "column_names") else list(rows[0]) if len(rows) else []


def validate_rows(rows: Dataset | Sequence[Mapping[str, Any]], *, file: str = "<rows>", origin: str = "rows",
                  fmt: str = "local", source: str | None = None,
                  on_invalid: Mapping[str, str] | None = None) -> tuple[Dataset, LoadReport]:
    """Normalize pairs in the normalized layout or a TRL one (standard, conversational, implicit prompt).

    This covers the "local" and "ultrafeedback_binarized" formats (HuggingFaceH4's and trl-lib's releases, and
    flat files with scores under ``metadata``). Pair and prompt ids are always recomputed from the content.
    """
    policy = _policy(on_invalid, source)
    columns = _columns(rows)
    layout = _layout(columns, rows[0] if len(rows) else {})
    report = LoadReport(file, f"{fmt}/{layout}", rows_read=len(rows))
    _require(columns, [c for c in _LAYOUT_COLUMNS[layout] if c != "messages"], report)
    return _finish(_tabular_pairs(rows, layout, origin), report, policy, source)


def binarize_ultrafeedback(rows: Dataset | Sequence[Mapping[str, Any]], *, file: str = "<rows>",
                           source: str | None = None, on_invalid: Mapping[str, str] | None = None,
                           score_field: str = "fine-grained_score", binarize: str = "max_min",
                           seed: int = 0) -> tuple[Dataset, LoadReport]:
    """Pairs from openbmb/UltraFeedback rows: chosen = the best-scored completion, rejected = the worst
    ("max_min") or a seeded random one of those scored lower ("max_random"; H4 drew among all three others and
    then dropped ties). The first completion wins a tie for best or worst."""
    policy = _policy(on_invalid, source, binarize)
    report = LoadReport(file, "ultrafeedback_raw", rows_read=len(rows))
    _require(_columns(rows), ["instruction", "completions"], report)
    return _finish(_ultrafeedback_raw_pairs(rows, score_field, binarize, random.Random(seed)), report, policy, source)


def _ultrafeedback_raw_pairs(rows: Iterable[Mapping[str, Any]], score_field: str, binarize: str,
                             rng: random.Random) -> Iterator[_Pair]:
    for i, row in enumerate(rows):
        completions = row["completions"] or []
        pair = _Pair(i, "ultrafeedback", {k: v for k, v in row.items() if k not in ("instruction", "completions")})
        pair.set_prompt(row["instruction"], "instruction")
        scores = []
        for j, completion in enumerate(completions):
            field = f"completions[{j}].{score_field}"
            if completion.get(score_field) is None:
                pair.flag("non_finite_score", field, "completion has no score")
            scores.append(pair.score(completion.get(score_field), field))
        pair.metadata |= {"models": [c.get("model") for c in completions], "scores": scores,
                          "score_field": score_field}
        if len(completions) < 2:
            pair.flag("unpaired_prompt", "completions", f"{len(completions)} completion(s), a pair needs 2")
        elif None not in scores:
            best = scores.index(max(scores))
            lower = [j for j, s in enumerate(scores) if s < scores[best]]
            if not lower:
                pair.flag("tied_scores", "completions", f"all {len(scores)} completions score {scores[best]:g}")
                yield pair
                continue
            worst = min(lower, key=scores.__getitem__) if binarize == "max_min" else rng.choice(lower)
            pair.set_response("chosen", completions[best].get("response"), f"completions[{best}].response")
            pair.set_response("rejected", completions[worst].get("response"), f"completions[{worst}].response")
            pair.score_chosen, pair.score_rejected = scores[best], scores[worst]
            pair.metadata |= {"chosen_index": best, "rejected_index": worst}
        yield pair


def helpsteer2_messages(prompt: str) -> list[dict[str, str]]:
    """Chat messages from a HelpSteer2 prompt, whose earlier turns follow "<extra_id_1>Assistant" and
    "<extra_id_1>User" lines (the format NVIDIA's dataset card gives for multi-turn prompts)."""
    parts = _HELPSTEER2_TURN.split(prompt)
    turns = [{"role": role.lower(), "content": text} for role, text in zip(parts[1::2], parts[2::2])]
    return [{"role": "user", "content": parts[0]}, *turns]


def pair_helpsteer2(rows: Dataset | Sequence[Mapping[str, Any]], *, file: str = "<rows>",
                    source: str | None = None, on_invalid: Mapping[str, str] | None = None,
                    weights: Mapping[str, float] | None = None) -> tuple[Dataset, LoadReport]:
    """Pairs from nvidia/HelpSteer2 rows (one per response; a prompt's two responses are consecutive rows):
    chosen = the higher weighted sum of attributes (default: the paper authors' HELPSTEER2_WEIGHTS)."""
    policy = _policy(on_invalid, source)
    weights = dict(HELPSTEER2_WEIGHTS if weights is None else weights)
    report = LoadReport(file, "helpsteer2", rows_read=len(rows))
    _require(_columns(rows), ["prompt", "response", *weights], report)
    return _finish(_helpsteer2_pairs(rows, weights), report, policy, source)


def _helpsteer2_pairs(rows: Iterable[Mapping[str, Any]], weights: dict[str, float]) -> Iterator[_Pair]:
    for _, group in itertools.groupby(enumerate(rows), key=lambda item: canonical_json(item[1]["prompt"])):
        group = list(group)
        indices = [i for i, _ in group]
        pair = _Pair(indices[0], "helpsteer2", {"rows": indices, "weights": weights})
        pair.set_prompt(group[0][1]["prompt"], "prompt", split_turns=helpsteer2_messages)
        if len(group) != 2:
            detail = f"prompt has {len(indices)} response(s) in rows {indices}, a pair needs 2"
            pair.flag("unpaired_prompt", "prompt", detail)
            yield pair
            continue
        scores = []
        for i, row in group:
            values = [pair.score(row[attr], attr, i) for attr in weights]
            scores.append(None if None in values else sum(w * v for w, v in zip(weights.values(), values)))
        if None in scores:
            yield pair
            continue
        # Sums of float weights differ in the last bits for equal exact values: compare with a tolerance.
        if math.isclose(scores[0], scores[1], abs_tol=1e-9):
            detail = f"rows {indices[0]} and {indices[1]} have the same weighted score {scores[0]:g}"
            pair.flag("tied_scores", "response", detail)
            yield pair
            continue
        (ci, chosen), (ri, rejected) = group if scores[0] > scores[1] else group[::-1]
        pair.set_response("chosen", chosen["response"], "response", ci)
        pair.set_response("rejected", rejected["response"], "response", ri)
        pair.score_chosen, pair.score_rejected = max(scores), min(scores)
        pair.metadata |= {"rows": [ci, ri], "attributes": [{a: r[a] for a in weights} for r in (chosen, rejected)]}
        yield pair


def load_preferences(fmt: str, path: str | os.PathLike, *, split: str | None = None, max_rows: int | None = None,
                     source: str | None = None, on_invalid: Mapping[str, str] | None = None,
                     helpsteer2_weights: Mapping[str, float] | None = None, binarize: str = "max_min",
                     score_field: str = "fine-grained_score", seed: int = 0) -> tuple[Dataset, LoadReport]:
    """Preference pairs of format ``fmt`` (one of FORMATS) from a local JSON/JSONL/Parquet file or a hub dataset.

    ``split`` names a hub split; ``max_rows`` reads only the first source rows; ``source`` labels the pairs "on" or
    "off" (None: a normalized file's own column, else "off"); ``on_invalid`` maps a reason to error, drop or keep.
    The other options belong to one format each and are ignored by the others. Beware that `datasets` reads JSON
    arrays, and JSONL files with a mixed-type column, through pandas, which turns NaN and Infinity into null.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    _policy(on_invalid, source, binarize)
    ds, file = _read(path, split, max_rows)
    options = {"file": file, "source": source, "on_invalid": on_invalid}
    if fmt == "ultrafeedback_raw":
        return binarize_ultrafeedback(ds, score_field=score_field, binarize=binarize, seed=seed, **options)
    if fmt == "helpsteer2":
        return pair_helpsteer2(ds, weights=helpsteer2_weights, **options)
    origin = "ultrafeedback_binarized" if fmt == "ultrafeedback_binarized" else os.path.basename(os.fspath(path))
    return validate_rows(ds, origin=origin, fmt=fmt, **options)


def load_stored_pairs(path: str | os.PathLike, source: str) -> Dataset:
    """Normalized pairs of a committed stage's file (empty responses kept), read and validated once per process:
    a stage's files never change after its commit, and a chapter reads the same pool for each of its runs."""
    stat = os.stat(path)
    return _stored_pairs(os.fspath(path), source, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=32)
def _stored_pairs(path: str, source: str, mtime_ns: int, size: int) -> Dataset:
    return load_preferences("local", path, source=source, on_invalid={"empty_response": "keep"})[0]


def to_trl(ds: Dataset) -> Dataset:
    """Normalized pairs in TRL's conversational preference format: prompt messages, one assistant message each."""
    from datasets import Features, List, Value

    message = List({"role": Value("string"), "content": Value("string")})
    return ds.select_columns(["prompt", "chosen", "rejected"]).map(
        lambda row: {key: [{"role": "assistant", "content": row[key]}] for key in ("chosen", "rejected")},
        features=Features({"prompt": message, "chosen": message, "rejected": message}),
    )


# Characters that JSON allows raw inside a string but str.splitlines() (and other line readers) end a line at: they
# are written escaped, so any reader of the file sees one row per line
_LINE_BREAKS = re.compile("[\u0085\u2028\u2029]")
_SURROGATE = re.compile("[\ud800-\udfff]")


def _field_matching(value: Any, pattern: re.Pattern, where: str = "") -> str | None:
    """The path (``samples[2].text``) of the first string in ``value`` that ``pattern`` finds something in."""
    if isinstance(value, str):
        return where if pattern.search(value) else None
    items = value.items() if isinstance(value, Mapping) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for key, item in items:
        found = _field_matching(item, pattern, f"{where}[{key}]" if isinstance(key, int) else
                                f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


def jsonl_line(row: Mapping[str, Any], file: str = "<jsonl>", index: int | None = None) -> str:
    """One row as a JSON line (non-ASCII kept, line-breaking characters escaped), newline included. A lone
    surrogate (half of a UTF-16 pair, which UTF-8 cannot hold) is refused, naming the file, row and field."""
    text = json.dumps(row, ensure_ascii=False)
    if _SURROGATE.search(text):
        field = _field_matching(row, _SURROGATE)
        raise DataValidationError(file, index, field, "lone_surrogate",
                                  "holds a lone UTF-16 surrogate, which UTF-8 cannot encode; replace it (for "
                                  "example text.encode('utf-8', 'replace').decode()) before storing")
    return _LINE_BREAKS.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n"


def write_jsonl(path: str | os.PathLike, rows: Iterable[Mapping[str, Any]]) -> int:
    """One JSON object per line (UTF-8, non-ASCII kept); the number of rows written. Every string round-trips
    through :func:`read_jsonl`: U+2028, U+2029 and U+0085 are escaped, NUL and other controls are JSON escapes."""
    lines = [jsonl_line(r, os.fspath(path), i) for i, r in enumerate(rows)]  # all checked before the file opens
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(lines)
    return len(lines)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """The rows of a JSONL file, lines ended by "\\n" only; a line that is not JSON is an error naming the file,
    its 0-based row and the column."""
    rows = []
    with open(path, encoding="utf-8", newline="\n") as f:
        for index, line in enumerate(f):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataValidationError(os.fspath(path), index, None, "invalid_json",
                                          f"not a JSON object: {e.msg} at column {e.colno}") from None
    return rows
