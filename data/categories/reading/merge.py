"""Merge the readers' slices into ``../read_labels.jsonl``, the read labels ``simplemix.categories.ReadLabels`` ships.

Each ``labels_K.jsonl`` is one reader's slice (index, category, optional note); ``recheck.jsonl`` lists the labels
of slices 0, 1 and 4 that decision rules 8-12 changed when those slices were read again against them. The merge
adds each prompt's ``instruction_sha`` and its slice, and refuses a missing, repeated or unknown index.
Run from anywhere: ``python data/categories/reading/merge.py``.
"""

import json
from pathlib import Path

from simplemix.categories import CATEGORIES, OTHER, instruction_sha, load_alpaca_instructions

HERE = Path(__file__).parent
OUT = HERE.parent / "read_labels.jsonl"


def merged() -> list[dict]:
    instructions = load_alpaca_instructions()
    rows = {}
    for path in sorted(HERE.glob("labels_*.jsonl")):
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            row = json.loads(line)
            if row["index"] in rows or not 0 <= row["index"] < len(instructions):
                raise ValueError(f"{path.name}, line {n}: index {row['index']} repeated or out of range")
            rows[row["index"]] = {**row, "slice": int(path.stem.split("_")[1])}
    for n, line in enumerate((HERE / "recheck.jsonl").read_text(encoding="utf-8").splitlines(), start=1):
        change = json.loads(line)
        row = rows[change["index"]]
        row["category"], row["note"] = change["category"], f"rule {change['rule']} (re-read): {change['note']}"
    if sorted(rows) != list(range(len(instructions))):
        raise ValueError(f"the slices cover {len(rows)} of {len(instructions)} prompts")
    out = []
    for i in range(len(instructions)):
        row = rows[i]
        if row["category"] not in CATEGORIES and row["category"] != OTHER:
            raise ValueError(f"slice {row['slice']}, index {i}: {row['category']!r} is not a category")
        out.append({"index": i, "instruction_sha": instruction_sha(instructions[i]), "category": row["category"],
                    **({"note": row["note"]} if row.get("note") else {}), "slice": row["slice"]})
    return out


if __name__ == "__main__":
    OUT.write_text("".join(json.dumps(r) + "\n" for r in merged()), encoding="utf-8")
    print(f"wrote {OUT}")
