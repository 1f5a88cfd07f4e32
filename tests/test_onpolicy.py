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
from simplemix.config import load_profile
from simplemix.miniature.world import build_world
from simplemix.store import RunStore
from conftest import TINY

OVERRIDES = ["sampling.num_samples=3", "sampling.max_new_tokens=12", "sampling.temperature=1.0"]


@pytest.fixture
def run_dir(tiny_run):
    return tiny_run


def test_three_stages_build_on_policy_pairs_then_hit(run_dir):
    prof = load_profile("smoke", OVERRIDES)
    first = onpolicy.on_policy_pairs(prof, run_dir, progress=False)
    assert [e.stage for e in first.values()] == ["samples", "scores", "pairs"]
    assert not any(e.hit for e in first.values())
    info = first["pairs"].manifest["info"]
    assert info["prompts"] == 4 * TINY.train_prompts
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
    again = onpolicy.on_policy_pairs(prof, run_dir, progress=False)
    assert all(e.hit for e in again.values())


def test_dry_run_reports_what_is_cached(run_dir):
    prof = load_profile("smoke", OVERRIDES)
    (before,) = onpolicy.plan(prof, run_dir, shard_size=8)
    assert before["shards"] == 4 and before["shards_cached"] == 0 and before["state"] == "4 of 4 shards to compute"
    store = RunStore(run_dir)
    prompts = onpolicy.prompt_set(prof, run_dir)
    entry = onpolicy.sample_stage(store, prof.policies[0], prof.sampling, prompts, run_dir, shard_size=8,
                                  progress=False)
    (after,) = onpolicy.plan(prof, run_dir, shard_size=8)
    assert after["key"] == before["key"] == entry.key and after["state"] == "cached"


KILLED_RUN = textwrap.dedent("""
    import sys, time
    from simplemix import onpolicy, sampling
    from simplemix.config import load_profile
    from simplemix.store import RunStore
    original = onpolicy.sample_prompts
    def slow(*a, **k):
        out = original(*a, **k)
        time.sleep(0.4)  # room for the test to kill us between shards
        return out
    onpolicy.sample_prompts = slow
    run_dir = sys.argv[1]
    prof = load_profile("smoke", {OVERRIDES!r})
    prompts = onpolicy.prompt_set(prof, run_dir)
    onpolicy.sample_stage(RunStore(run_dir), prof.policies[0], prof.sampling, prompts, run_dir, shard_size=4,
                          progress=False)
""")


def test_killed_sampling_resumes_from_its_shards_and_matches_an_uninterrupted_run(run_dir, tmp_path_factory,
                                                                                   monkeypatch):
    prof = load_profile("smoke", OVERRIDES)
    script = KILLED_RUN.replace("{OVERRIDES!r}", repr(OVERRIDES))
    proc = subprocess.Popen([sys.executable, "-c", script, str(run_dir)], env={**os.environ, "PYTHONHASHSEED": "0"})
    shard_glob = lambda: list(Path(run_dir, ".shards").glob("samples-*/*.json"))  # noqa: E731
    deadline = time.time() + 120
    while len(shard_glob()) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(shard_glob())
    assert 2 <= done < 8, f"kill came too late ({done} shards done)"
    store = RunStore(run_dir)
    assert not list(Path(run_dir, "stages").glob("samples/*")), "a killed stage left an entry"

    calls = []
    original = onpolicy.sample_prompts
    monkeypatch.setattr(onpolicy, "sample_prompts", lambda *a, **k: calls.append(1) or original(*a, **k))
    prompts = onpolicy.prompt_set(prof, run_dir)
    resumed = onpolicy.sample_stage(store, prof.policies[0], prof.sampling, prompts, run_dir, shard_size=4,
                                    progress=False)
    assert len(calls) == 8 - done, "finished shards were recomputed"

    fresh_dir = tmp_path_factory.mktemp("fresh")
    build_world(fresh_dir, TINY, progress=False)
    fresh = onpolicy.sample_stage(RunStore(fresh_dir), prof.policies[0], prof.sampling, prompts, fresh_dir,
                                  shard_size=4, progress=False)
    assert resumed.key == fresh.key
    assert (resumed.path / "samples.jsonl").read_text() == (fresh.path / "samples.jsonl").read_text()


def test_samples_record_their_settings(run_dir):
    prof = load_profile("smoke", OVERRIDES)
    entries = onpolicy.on_policy_pairs(prof, run_dir, progress=False)
    settings = entries["samples"].manifest["info"]["settings"]
    assert settings == {"backend": "transformers", "num_samples": 3, "temperature": 1.0, "top_p": 0.9,
                        "max_new_tokens": 12, "seed": 0, "diversity": "none"}
    first = onpolicy.read_jsonl(entries["samples"].path / "samples.jsonl")[0]
    assert first["settings"] == settings and set(first["samples"][0]) == {"text", "num_tokens", "finish_reason"}
    pair = json.loads((entries["pairs"].path / "pairs.jsonl").read_text().splitlines()[0])
    meta = json.loads(pair["metadata"])
    assert meta["sampler"] == settings and len(meta["scores"]) == 3
    other = onpolicy.on_policy_pairs(prof, run_dir, sampling=dataclasses.replace(prof.sampling, temperature=2.0),
                                     progress=False)
    assert other["samples"].key != entries["samples"].key and not other["samples"].hit


def test_cli_dry_run_then_run(run_dir):
    def cli(*extra):
        return subprocess.run([sys.executable, "-m", "simplemix.cli", "onpolicy", "--run", str(run_dir),
                               *sum((["--set", o] for o in OVERRIDES), []), *extra],
                              capture_output=True, text=True, check=True).stdout

    assert "32 prompts x 3 samples = 96 samples in 1 shards; 1 of 1 shards to compute" in cli("--dry-run")
    out = cli()
    assert [line.split()[0] for line in out.splitlines()] == ["samples", "scores", "pairs"]
    assert "computed" in out
    assert "cached" in cli("--dry-run").split(";")[-1]


def test_samples_follow_the_weights_behind_a_miniature_name(run_dir):
    """Rebuilding the world under the same name must not serve samples of the old policy."""
    prof = load_profile("smoke", OVERRIDES)
    (before,) = onpolicy.plan(prof, run_dir)
    prompts_before = onpolicy.prompt_set(prof, run_dir).ids
    retrained = dataclasses.replace(TINY, policy=dataclasses.replace(TINY.policy, sft_steps=TINY.policy.sft_steps + 1))
    build_world(run_dir, retrained, progress=False)
    assert onpolicy.prompt_set(prof, run_dir).ids == prompts_before  # same prompts, new weights
    (after,) = onpolicy.plan(prof, run_dir)
    assert before["key"] != after["key"] and after["shards_cached"] == 0
