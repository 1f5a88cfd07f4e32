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
from simplemix.data import read_jsonl
from simplemix.miniature.world import build_world
from simplemix.store import RunStore
from conftest import TINY, tiny_world

OVERRIDES = ["sampling.num_samples=3", "sampling.max_new_tokens=12", "sampling.temperature=1.0"]
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
    pair = json.loads((entries["pairs"].path / "pairs.jsonl").read_text().splitlines()[0])
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
