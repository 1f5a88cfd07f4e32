"""Merge the readers' slices into ``../read_labels.jsonl``, the read labels ``simplemix.categories.ReadLabels`` ships.

Each ``labels_K.jsonl`` is one reader's slice (index, category, optional note: the reader's second choice on a hard
call); ``recheck.jsonl`` lists the labels of slices 0, 1 and 4 that decision rules 8-12 changed when those slices
were read again against them. The merge adds each prompt's ``instruction_sha`` and its slice, keeps the reader's
note, records a re-read change as ``reread`` ("rule N: reason") and refuses an index that is missing, repeated,
outside its slice, or a re-read that is not of slices 0, 1 or 4 or changes nothing.
Run from anywhere: ``python data/categories/reading/merge.py``.
"""

from pathlib import Path

from simplemix.categories import CATEGORIES, OTHER, instruction_sha, load_alpaca_instructions
from simplemix.data import read_jsonl, write_jsonl

HERE = Path(__file__).parent
OUT = HERE.parent / "read_labels.jsonl"
# the slices' index ranges (inclusive), as in README.md
SLICES = {0: (0, 188), 1: (189, 304), 2: (305, 430), 3: (431, 529), 4: (530, 583), 5: (584, 674), 6: (675, 804)}
REREAD = {0, 1, 4}  # the slices read before rules 8-12 existed


def merged() -> list[dict]:
    instructions = load_alpaca_instructions()
    rows = {}
    for k, (first, last) in SLICES.items():
        path = HERE / f"labels_{k}.jsonl"
        for n, row in enumerate(read_jsonl(path)):
            if row["index"] in rows or not first <= row["index"] <= last:
                raise ValueError(f"{path.name}, row {n}: index {row['index']} repeated or outside {first}-{last}")
            rows[row["index"]] = {**row, "slice": k}
    if sorted(rows) != list(range(len(instructions))):
        raise ValueError(f"the slices cover {len(rows)} of {len(instructions)} prompts")
    for n, change in enumerate(read_jsonl(HERE / "recheck.jsonl")):
        row = rows.get(change["index"])
        if row is None or row["slice"] not in REREAD or row["category"] == change["category"]:
            raise ValueError(f"recheck.jsonl, row {n}: index {change['index']} is not a change to slices 0, 1 or 4")
        row["category"], row["reread"] = change["category"], f"rule {change['rule']}: {change['note']}"
    out = []
    for i in range(len(instructions)):
        row = rows[i]
        if row["category"] not in CATEGORIES and row["category"] != OTHER:
            raise ValueError(f"slice {row['slice']}, index {i}: {row['category']!r} is not a category")
        out.append({"index": i, "instruction_sha": instruction_sha(instructions[i]), "category": row["category"],
                    **{key: row[key] for key in ("note", "reread") if row.get(key)}, "slice": row["slice"]})
    return out


if __name__ == "__main__":
    write_jsonl(OUT, merged())
    print(f"wrote {OUT}")
