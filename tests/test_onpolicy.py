"""The on-policy engine end to end on the tiny world: stages, cache hits, dry run, and resume after a kill."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from simplemix import onpolicy
from simplemix.config import PairsConfig
from simplemix.data import read_jsonl, write_jsonl
from simplemix.miniature.world import build_world
from simplemix.reward import build_pairs
from simplemix.store import RunStore, stable_hash
from conftest import TINY, tiny_world

OVERRIDES = ["sampling.num_samples=3", "sampling.max_new_tokens=12", "sampling.temperature=1.0",
             "mixing.total_pairs=8"]  # the tiny world has 32 training prompts; preflight checks the budget fits
TESTS = Path(__file__).resolve().parent


@pytest.fixture
def run_dir(tiny_run):
    return tiny_run


def world_and_cell(run_dir):
    """The smoke world over ``run_dir`` with OVERRIDES, and its primary cell (the stronger policy, UF-like data)."""
    world = tiny_world(run_dir, OVERRIDES)
    return world, world.cell()


def unique_prompts(world, cell) -> int:
    """The number of distinct prompts in the cell's dataset file, counted by hand."""
    path, _ = world.dataset(cell.dataset)
    return len({r["prompt"] for r in read_jsonl(path)})


def test_three_stages_build_on_policy_pairs_then_hit(run_dir):
    world, cell = world_and_cell(run_dir)
    first = onpolicy.on_policy_pairs(world, cell, progress=False)
    assert [e.stage for e in first.values()] == ["samples", "scores", "pairs"]
    assert not any(e.hit for e in first.values())
    info = first["pairs"].manifest["info"]
    # every unique prompt of the cell's dataset (the UF-like file drops the train split's tied draws)
    assert info["prompts"] == unique_prompts(world, cell) == len(world.training_prompts(cell))
    assert 0 < info["prompts"] <= 4 * TINY.train_prompts
    assert info["pairs"] + info["tied"] + info["below_margin"] + info["identical_texts"] == info["prompts"]
    pairs = onpolicy.load_pairs(first["pairs"])
    assert len(pairs) == info["pairs"] == info["report"]["rows_kept"] and set(pairs["source"]) == {"on"}
    samples = onpolicy.load_samples(first["samples"], first["scores"])
    assert len(samples) == 3 * info["prompts"]
    best = {}
    for s in samples:
        best[s["prompt_id"]] = max(best.get(s["prompt_id"], float("-inf")), s["reward"])
    for row in pairs:
        assert row["score_chosen"] == best[row["prompt_id"]] > row["score_rejected"]
    again = onpolicy.on_policy_pairs(tiny_world(run_dir, OVERRIDES), cell, progress=False)
    assert all(e.hit for e in again.values())
    assert [e.key for e in again.values()] == [e.key for e in first.values()]


def test_dry_run_reports_what_is_cached(run_dir):
    world, cell = world_and_cell(run_dir)
    prompts = world.training_prompts(cell)
    shards = -(-len(prompts) // 8)
    assert shards >= 2, "too few prompts to test sharding"
    (before,) = onpolicy.plan(world, cell, shard_size=8)
    assert before["cell"] == cell.id and before["prompts"] == len(prompts) and before["samples"] == 3 * len(prompts)
    assert before["shards"] == shards and before["shards_cached"] == 0
    assert before["state"] == f"{shards} of {shards} shards to compute"
    entry = onpolicy.sample_stage(world.store, world.sft_policy(cell), world.profile.sampling, prompts, shard_size=8,
                                  progress=False)
    (after,) = onpolicy.plan(world, cell, shard_size=8)
    assert after["key"] == before["key"] == entry.key and after["state"] == "cached"


KILLED_RUN = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, sys.argv[2])
    from conftest import tiny_world
    from simplemix import onpolicy, sampling
    original = onpolicy.sample_prompts
    def slow(*a, **k):
        out = original(*a, **k)
        time.sleep(0.4)  # room for the test to kill us between shards
        return out
    onpolicy.sample_prompts = slow
    world = tiny_world(sys.argv[1], {OVERRIDES!r})
    cell = world.cell()
    onpolicy.sample_stage(world.store, world.sft_policy(cell), world.profile.sampling, world.training_prompts(cell),
                          shard_size=4, progress=False)
""")


def test_killed_sampling_resumes_from_its_shards_and_matches_an_uninterrupted_run(run_dir, tmp_path_factory,
                                                                                   monkeypatch):
    world, cell = world_and_cell(run_dir)
    prompts = world.training_prompts(cell)
    total = -(-len(prompts) // 4)
    assert total >= 4, "too few shards to kill the run between them"
    script = KILLED_RUN.replace("{OVERRIDES!r}", repr(OVERRIDES))
    proc = subprocess.Popen([sys.executable, "-c", script, str(run_dir), str(TESTS)],
                            env={**os.environ, "PYTHONHASHSEED": "0"})
    shard_glob = lambda: list(Path(run_dir, ".shards").glob("samples-*/*.json"))  # noqa: E731
    deadline = time.time() + 120
    while len(shard_glob()) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(shard_glob())
    assert 2 <= done < total, f"kill came too late ({done} of {total} shards done)"
    store = RunStore(run_dir)
    assert not list(Path(run_dir, "stages").glob("samples/*")), "a killed stage left an entry"

    calls = []
    original = onpolicy.sample_prompts
    monkeypatch.setattr(onpolicy, "sample_prompts", lambda *a, **k: calls.append(1) or original(*a, **k))
    resumed = onpolicy.sample_stage(store, world.sft_policy(cell), world.profile.sampling, prompts, shard_size=4,
                                    progress=False)
    assert len(calls) == total - done, "finished shards were recomputed"

    fresh_dir = tmp_path_factory.mktemp("fresh")
    build_world(fresh_dir, TINY, progress=False)
    fresh_world = tiny_world(fresh_dir, OVERRIDES)
    fresh = onpolicy.sample_stage(fresh_world.store, fresh_world.sft_policy(cell), fresh_world.profile.sampling,
                                  fresh_world.training_prompts(cell), shard_size=4, progress=False)
    assert resumed.key == fresh.key
    assert (resumed.path / "samples.jsonl").read_text() == (fresh.path / "samples.jsonl").read_text()


def test_samples_record_their_settings(run_dir):
    world, cell = world_and_cell(run_dir)
    prof = world.profile
    entries = onpolicy.on_policy_pairs(world, cell, progress=False)
    settings = entries["samples"].manifest["info"]["settings"]
    assert settings == {"backend": "transformers", "num_samples": 3, "temperature": 1.0, "top_p": 0.9,
                        "max_new_tokens": 12, "seed": 0, "diversity": "none"}
    first = read_jsonl(entries["samples"].path / "samples.jsonl")[0]
    assert first["settings"] == settings and set(first["samples"][0]) == {"text", "num_tokens", "finish_reason"}
    pair = read_jsonl(entries["pairs"].path / "pairs.jsonl")[0]  # not splitlines(): it cuts at U+2028
    meta = json.loads(pair["metadata"])
    assert meta["sampler"] == settings and len(meta["scores"]) == 3
    other = onpolicy.on_policy_pairs(world, cell, sampling=dataclasses.replace(prof.sampling, temperature=2.0),
                                     progress=False)
    assert other["samples"].key != entries["samples"].key and not other["samples"].hit


def test_cli_dry_run_then_run(run_dir):
    def cli(*extra):
        return subprocess.run([sys.executable, "-m", "simplemix.cli", "onpolicy", "--run", str(run_dir),
                               *sum((["--set", o] for o in OVERRIDES), []), *extra],
                              capture_output=True, text=True, check=True).stdout

    world, primary = world_and_cell(run_dir)
    plan = cli("--dry-run").splitlines()
    assert [line.split(": ")[0] for line in plan] == [c.id for c in world.cells()]  # every cell by default
    for line, cell in zip(plan, world.cells()):
        n = len(world.training_prompts(cell))
        assert f"{n} prompts x 3 samples = {3 * n} samples in 1 shards; 1 of 1 shards to compute" in line
    out = cli("--cell", primary.id)
    assert [line.split()[:2] for line in out.splitlines()] == [[f"{primary.id}:", s] for s in
                                                               ("samples", "scores", "pairs")]
    assert "computed" in out
    after = {line.split(": ")[0]: line for line in cli("--dry-run").splitlines()}
    assert "cached" in after[primary.id].split(";")[-1]
    assert all("1 of 1 shards to compute" in line for cell_id, line in after.items() if cell_id != primary.id)


def test_samples_follow_the_weights_behind_a_miniature_name(run_dir):
    """Rebuilding the world under the same name must not serve samples of the old policy."""
    world, cell = world_and_cell(run_dir)
    (before,) = onpolicy.plan(world, cell)
    onpolicy.sample_stage(world.store, world.sft_policy(cell), world.profile.sampling, world.training_prompts(cell),
                          progress=False)
    assert onpolicy.plan(world, cell)[0]["state"] == "cached"
    prompts_before = world.training_prompts(cell).ids
    retrained = dataclasses.replace(TINY, policy=dataclasses.replace(TINY.policy, sft_steps=TINY.policy.sft_steps + 1))
    build_world(run_dir, retrained, progress=False)
    rebuilt = tiny_world(run_dir, OVERRIDES)
    assert rebuilt.training_prompts(cell).ids == prompts_before  # same prompts, new weights
    assert rebuilt.sft_policy(cell).key != world.sft_policy(cell).key
    (after,) = onpolicy.plan(rebuilt, cell)
    assert before["key"] != after["key"] and after["shards_cached"] == 0


# ------------------------------------------------------------------ scores align with samples by row, not by id
REPEATED = (0, 3, 5)  # where the repeated prompt stands in the prompt set below


def repeated_prompt_set(world, cell):
    """Seven prompts of the cell where the first one also stands at positions 3 and 5 (same messages, same id)."""
    base = world.training_prompts(cell)
    # an open-ended prompt: its samples' scores vary with their words, so the occurrences differ decisively
    first = next(i for i, c in enumerate(base.categories) if c == "creative")
    others = iter(i for i in range(len(base)) if i != first)
    prompts = base.subset([first if k in REPEATED else next(others) for k in range(7)])
    assert len({prompts.ids[k] for k in REPEATED}) == 1 and len(set(prompts.ids)) == 5
    return prompts


def test_a_repeated_prompt_keeps_each_occurrences_own_scores(run_dir):
    world, cell = world_and_cell(run_dir)
    store, prompts = world.store, repeated_prompt_set(world, cell)
    samples = onpolicy.sample_stage(store, world.sft_policy(cell), world.profile.sampling, prompts, progress=False)
    scores = onpolicy.score_stage(store, samples, world, progress=False)
    pairs_entry = onpolicy.pairs_stage(store, samples, scores, world.profile.pairs)

    rows = read_jsonl(samples.path / "samples.jsonl")
    assert [r["prompt_id"] for r in rows] == prompts.ids
    texts = [[s["text"] for s in r["samples"]] for r in rows]
    scorer = world.reward()
    fresh = [scorer.score([r["prompt"]] * len(t), t) for r, t in zip(rows, texts)]
    # decisive: the occurrences drew different samples with different scores, so an id-keyed lookup is wrong
    assert len({tuple(texts[k]) for k in REPEATED}) == len(REPEATED)
    assert len({tuple(fresh[k]) for k in REPEATED}) == len(REPEATED)

    pairs = list(onpolicy.load_pairs(pairs_entry))
    assert pairs, "no pairs to check"
    for pair in pairs:
        chosen, rejected = scorer.score([pair["prompt"]] * 2, [pair["chosen"], pair["rejected"]])
        assert (pair["score_chosen"], pair["score_rejected"]) == (chosen, rejected)
        assert pair["score_chosen"] >= pair["score_rejected"]
    expected, _ = build_pairs([r["prompt"] for r in rows], texts, fresh, min_margin=world.profile.pairs.min_margin,
                              prompt_ids=prompts.ids)
    assert [(p["chosen"], p["rejected"], p["score_chosen"], p["score_rejected"]) for p in pairs] == \
           [(p["chosen"], p["rejected"], p["score_chosen"], p["score_rejected"]) for p in expected]
    assert sum(p["prompt_id"] == stable_hash(prompts.messages[0]) for p in pairs) >= 2  # the occurrences' own pairs

    prompt_of = dict(zip(prompts.ids, prompts.messages))
    loaded = onpolicy.load_samples(samples, scores)
    assert len(loaded) == sum(map(len, texts))
    assert [s["reward"] for s in loaded] == scorer.score([prompt_of[s["prompt_id"]] for s in loaded],
                                                         [s["text"] for s in loaded])
    assert [s["reward"] for s in loaded] == [v for row in fresh for v in row]


def hand_written(store, stage, rows, info=None):
    """An entry of ``stage`` whose ``<stage>.jsonl`` holds ``rows`` as given."""
    def compute(out):
        write_jsonl(out / f"{stage}.jsonl", rows)
        return info or {}

    return store.run(stage, compute, {"hand_written": stable_hash(rows)})


SEP = "\u2028"  # LINE SEPARATOR: str.splitlines() cuts there, JSONL readers must not
PROMPT = [{"role": "user", "content": f"Which tea suits a rainy morning?{SEP}Say why."}]
OTHER = [{"role": "user", "content": "Which kite suits a windy beach?"}]
SETTINGS = {"backend": "hand", "num_samples": 2}


def hand_samples(store, rows):
    return hand_written(store, "samples", [{"prompt_id": stable_hash(p), "prompt": p, "category": None,
                                             "samples": [{"text": t, "num_tokens": 1, "finish_reason": "stop"}
                                                         for t in texts], "settings": SETTINGS}
                                            for p, texts in rows], {"settings": SETTINGS})


def hand_scores(store, rows):
    return hand_written(store, "scores", [{"prompt_id": stable_hash(p), "scores": v} for p, v in rows])


def test_hand_written_repeats_pair_by_row_with_exact_scores_and_u2028(tmp_path):
    """Rows 0 and 2 repeat a prompt whose scores rank their samples oppositely: an id-keyed lookup would give row
    0 row 2's scores, an inverted pair. The scores need all 17 digits and the texts hold U+2028."""
    store = RunStore(tmp_path)
    texts = [[f"green{SEP}tea", "black tea"], ["a box kite", "a delta kite"], ["oolong", f"mint{SEP}tea"]]
    values = [[0.12345678901234567, -0.9876543210987654], [0.5, 0.25], [-0.3333333333333333, 0.6666666666666666]]
    samples = hand_samples(store, list(zip([PROMPT, OTHER, PROMPT], texts)))
    scores = hand_scores(store, list(zip([PROMPT, OTHER, PROMPT], values)))
    entry = onpolicy.pairs_stage(store, samples, scores, PairsConfig())
    assert entry.manifest["info"]["pairs"] == 3
    got = [(p["prompt"], p["chosen"], p["rejected"], p["score_chosen"], p["score_rejected"])
           for p in onpolicy.load_pairs(entry)]
    assert got == [(PROMPT, f"green{SEP}tea", "black tea", values[0][0], values[0][1]),
                   (OTHER, "a box kite", "a delta kite", 0.5, 0.25),
                   (PROMPT, f"mint{SEP}tea", "oolong", values[2][1], values[2][0])]
    loaded = onpolicy.load_samples(samples, scores)
    assert [(s["text"], s["reward"]) for s in loaded] == [(t, v) for ts, vs in zip(texts, values)
                                                         for t, v in zip(ts, vs)]


@pytest.mark.parametrize("mend, message", [
    (lambda rows: rows[:2], r"2 score rows for 3 sample rows \(first unmatched row: 2\)"),
    (lambda rows: rows + rows[:1], r"4 score rows for 3 sample rows \(first unmatched row: 3\)"),
    (lambda rows: [rows[1], rows[0], rows[2]], r"row 0 has prompt_id"),
    (lambda rows: [rows[0], rows[1], (rows[2][0], rows[2][1] + [0.0])], r"row 2 has 3 scores for 2 samples"),
])
def test_misaligned_scores_are_a_clear_error(tmp_path, mend, message):
    store = RunStore(tmp_path)
    rows = [(PROMPT, ["a", "b"]), (OTHER, ["c", "d"]), (PROMPT, ["e", "f"])]
    samples = hand_samples(store, rows)
    scores = hand_scores(store, mend([(p, [1.0, 0.0]) for p, _ in rows]))
    for call in (lambda: onpolicy.pairs_stage(store, samples, scores, PairsConfig()),
                 lambda: onpolicy.load_samples(samples, scores)):
        with pytest.raises(ValueError, match=message) as err:
            call()
        assert str(scores.path / "scores.jsonl") in str(err.value)
        assert str(samples.path / "samples.jsonl") in str(err.value)
    assert not list(Path(tmp_path, "stages").glob("pairs/*")), "a failed pairs stage left an entry"


def test_a_pair_that_is_not_its_own_rows_is_never_committed(tmp_path, monkeypatch):
    """The guard behind the fix: a pair whose scores are not its own texts' stops the stage before it commits."""
    import simplemix.reward

    store = RunStore(tmp_path)
    samples = hand_samples(store, [(PROMPT, ["a", "b"]), (PROMPT, ["c", "d"])])
    scores = hand_scores(store, [(PROMPT, [1.0, 0.0]), (PROMPT, [0.0, 1.0])])
    original = simplemix.reward.build_pairs

    def stale(prompts, samples_per_prompt, values, **kw):  # the old bug: every occurrence gets the last one's scores
        return original(prompts, samples_per_prompt, [values[-1]] * len(values), **kw)

    monkeypatch.setattr(simplemix.reward, "build_pairs", stale)
    with pytest.raises(RuntimeError, match=r"pair 0 does not match row 0 .*score_chosen"):
        onpolicy.pairs_stage(store, samples, scores, PairsConfig())
    assert not list(Path(tmp_path, "stages").glob("pairs/*"))
