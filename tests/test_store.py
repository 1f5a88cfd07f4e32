"""Tests of the run store: cache hits, manifests, atomicity under SIGKILL, shard resume, locking, status."""

from __future__ import annotations

import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import simplemix
import simplemix.store
from simplemix.store import RunStore, default_code_version, format_status, module_closure, status_main

REPO = Path(simplemix.__file__).resolve().parents[1]


def write_stage(out: Path) -> dict:
    (out / "data.txt").write_text("hello")
    return {"rows": 1}


def wait_for(path: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout}s")
        time.sleep(0.01)


def spawn(tmp_path: Path, body: str, *args: str) -> subprocess.Popen:
    """Run ``body`` as a script in a fresh Python process; it sees ``ARGS`` and ``RunStore``."""
    script = tmp_path / f"script_{time.monotonic_ns()}.py"
    script.write_text("import json, sys, time\nfrom pathlib import Path\n"
                      "from simplemix.store import RunStore\nARGS = sys.argv[1:]\n"
                      + textwrap.dedent(body))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, str(script), *args], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=10)


def test_second_identical_request_is_a_hit(tmp_path):
    store, calls = RunStore(tmp_path), []

    def compute(out):
        calls.append(1)
        return write_stage(out)

    first = store.run("sample", compute, config={"n": 2, "temp": 0.7})
    second = store.run("sample", compute, config={"temp": 0.7, "n": 2})
    assert len(calls) == 1
    assert (first.hit, second.hit) == (False, True)
    assert first.key == second.key and first.path == second.path
    assert (second.path / "data.txt").read_text() == "hello"
    assert first.path == tmp_path / "stages" / "sample" / first.key
    assert store.get("sample", first.key).manifest == first.manifest
    assert [e.key for e in store.entries()] == [first.key]


def test_key_depends_on_stage_config_inputs_and_code_version(tmp_path):
    store = RunStore(tmp_path)
    base = store.key_for("sample", {"n": 2, "opts": {"a": 1, "b": 2}}, {"p": "k1", "q": "k2"}, "1")
    assert base == store.key_for("sample", {"opts": {"b": 2, "a": 1}, "n": 2}, {"q": "k2", "p": "k1"}, "1")
    others = [store.key_for("score", {"n": 2, "opts": {"a": 1, "b": 2}}, {"p": "k1", "q": "k2"}, "1"),
              store.key_for("sample", {"n": 3, "opts": {"a": 1, "b": 2}}, {"p": "k1", "q": "k2"}, "1"),
              store.key_for("sample", {"n": 2, "opts": {"a": 1, "b": 2}}, {"p": "k9", "q": "k2"}, "1"),
              store.key_for("sample", {"n": 2, "opts": {"a": 1, "b": 2}}, {"p": "k1", "q": "k2"}, "2")]
    assert len({base, *others}) == 5


def test_entry_inputs_are_keyed_by_their_key(tmp_path):
    store = RunStore(tmp_path)
    upstream = store.run("prompts", write_stage, config={})
    down = store.run("sample", write_stage, config={}, inputs={"prompts": upstream})
    assert down.manifest["inputs"] == {"prompts": upstream.key}
    assert down.key == store.key_for("sample", {}, {"prompts": upstream.key}, down.manifest["code_version"])
    with pytest.raises(TypeError):
        store.key_for("sample", {}, {"prompts": 3}, "1")


def test_default_code_version_follows_the_function_source(tmp_path):
    store = RunStore(tmp_path)

    def v1(out):
        (out / "x").write_text("1")

    def v2(out):
        (out / "x").write_text("2")

    a, b = store.run("s", v1, config={}), store.run("s", v2, config={})
    assert a.key != b.key and not b.hit
    assert a.key == store.key_for("s", {}, None, default_code_version(v1))
    assert a.manifest["code_version"].startswith(simplemix.__version__ + "+src.")
    explicit = store.run("s", lambda out: None, config={}, code_version="v7")
    assert explicit.manifest["code_version"] == "v7"
    assert store.run("s", lambda out: 1 / 0, config={}, code_version="v7").hit


def test_manifest_contents_and_no_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("SIMPLEMIX_TEST_SECRET", "sk-test-123")
    store = RunStore(tmp_path)
    entry = store.run("score", lambda out: {"rows": 123, "skipped": 0}, config={"rm": "oracle"},
                      inputs={"samples": "abc123"}, code_version="1")
    text = (entry.path / "manifest.json").read_text()
    manifest = json.loads(text)
    assert manifest == entry.manifest
    assert {"stage", "key", "config", "inputs", "code_version", "created", "wall_s",
            "versions", "hardware", "info"} <= manifest.keys()
    assert manifest["stage"] == "score" and manifest["key"] == entry.key
    assert manifest["config"] == {"rm": "oracle"} and manifest["inputs"] == {"samples": "abc123"}
    assert manifest["info"] == {"rows": 123, "skipped": 0}
    assert manifest["wall_s"] >= 0 and manifest["created"].endswith("+00:00")
    assert manifest["versions"]["simplemix"] == simplemix.__version__
    assert manifest["versions"]["python"] == ".".join(map(str, sys.version_info[:3]))
    assert manifest["hardware"]["cpu_count"] == os.cpu_count()
    assert "sk-test-123" not in text and "SIMPLEMIX_TEST_SECRET" not in text


def test_failing_stage_leaves_no_entry_and_no_temp_dir(tmp_path):
    store, boom = RunStore(tmp_path), ValueError("boom")

    def compute(out):
        (out / "half.txt").write_text("half")
        raise boom

    with pytest.raises(ValueError) as caught:
        store.run("train", compute, config={}, code_version="1")
    assert caught.value is boom
    assert store.get("train", store.key_for("train", {}, {}, "1")) is None
    assert store.entries() == [] and store.status() == []
    assert list((tmp_path / ".tmp").iterdir()) == []


@pytest.mark.parametrize("name, text, message", [
    ("samples.jsonl", '{"text": "a\u2028b"}\n', r"samples.jsonl: line 0 holds a raw line-breaking character \(U\+2028\)"),
    ("scores.jsonl", '{"a": 1}\n{"a": \n', r"scores.jsonl: line 1 is not JSON"),
    ("sub/manifest-like.json", '{"a": ', r"sub/manifest-like.json is not JSON"),
])
def test_a_stage_whose_files_its_readers_cannot_parse_is_not_committed(tmp_path, name, text, message):
    store = RunStore(tmp_path)

    def compute(out):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text(text, encoding="utf-8")

    with pytest.raises(simplemix.store.StageOutputError, match=message):
        store.run("samples", compute, config={}, code_version="1")
    assert store.entries() == [] and list((tmp_path / ".tmp").iterdir()) == []


def test_non_dict_return_is_rejected_without_an_entry(tmp_path):
    store = RunStore(tmp_path)
    with pytest.raises(TypeError):
        store.run("mix", lambda out: 5, config={}, code_version="1")
    assert store.entries() == [] and list((tmp_path / ".tmp").iterdir()) == []


def test_a_stage_computes_with_the_earlier_heap_frozen_and_still_collects_its_own_garbage(tmp_path):
    import gc
    import weakref

    class Node:
        pass

    store, seen = RunStore(tmp_path), {}

    def inner(out):
        seen["inner"] = gc.get_freeze_count()

    def outer(out):
        seen["outer"] = gc.get_freeze_count()
        store.run("inner", inner, config={}, code_version="1")
        cycle = Node()
        cycle.self = cycle  # garbage only a collection frees
        ref = weakref.ref(cycle)
        del cycle
        gc.collect()
        seen["own cycle freed"] = ref() is None
        seen["after inner"] = gc.get_freeze_count()

    before = Node()
    before.self = before
    store.run("outer", outer, config={}, code_version="1")
    assert seen["outer"] > 0 and seen["inner"] > 0 and seen["after inner"] > 0  # nesting keeps the outer freeze
    assert seen["own cycle freed"]
    assert gc.get_freeze_count() == 0  # unfrozen after the stage
    def failing(out):
        raise ValueError("x")

    with pytest.raises(ValueError):
        store.run("failing", failing, config={}, code_version="1")
    assert gc.get_freeze_count() == 0  # and after a failing one


def test_killed_stage_leaves_no_entry_and_reruns_cleanly(tmp_path):
    root, marker = tmp_path / "run", tmp_path / "started"
    proc = spawn(tmp_path, """
        def compute(out):
            (out / "part1.txt").write_text("first half")
            Path(ARGS[1]).touch()
            time.sleep(60)
            (out / "part2.txt").write_text("second half")
        RunStore(ARGS[0]).run("sample", compute, config={"n": 2}, code_version="kill-test")
    """, str(root), str(marker))
    try:
        wait_for(marker)
        store = RunStore(root)
        assert [r["state"] for r in store.status()] == ["running"]
    finally:
        kill(proc)
    key = store.key_for("sample", {"n": 2}, {}, "kill-test")
    assert store.get("sample", key) is None
    assert [(r["stage"], r["key"], r["state"]) for r in store.status()] == [("sample", key, "interrupted")]

    def compute(out):
        (out / "part1.txt").write_text("first half")
        (out / "part2.txt").write_text("second half")
        return {"rows": 2}

    entry = store.run("sample", compute, config={"n": 2}, code_version="kill-test")
    assert not entry.hit and entry.key == key
    assert sorted(p.name for p in entry.path.iterdir()) == ["manifest.json", "part1.txt", "part2.txt"]
    assert list((root / ".tmp").iterdir()) == []
    assert [r["state"] for r in store.status()] == ["done"]


def test_killed_sharded_stage_resumes_from_durable_shards(tmp_path):
    root, marker, log = tmp_path / "run", tmp_path / "shard4_done", tmp_path / "computed.log"
    body = """
        def compute(out, shards):
            results = []
            for i in range(10):
                def work(i=i):
                    with open(ARGS[2], "a") as f:
                        f.write(f"{i}\\n")
                    if i == 5:
                        Path(ARGS[1]).touch()
                        time.sleep(60)
                    return {"i": i, "square": i * i}
                results.append(shards.get_or_compute(i, work))
            (out / "results.json").write_text(json.dumps(results))
            return {"rows": len(results)}
        entry = RunStore(ARGS[0]).run("sample", compute, config={}, code_version="shards")
        print(entry.hit)
    """
    proc = spawn(tmp_path, body, str(root), str(marker), str(log))
    try:
        wait_for(marker)
    finally:
        kill(proc)
    shard_dir = root / ".shards" / f"sample-{RunStore(root).key_for('sample', {}, {}, 'shards')}"
    assert sorted(p.name for p in shard_dir.glob("*.json")) == [f"{i}.json" for i in range(5)]

    rerun = spawn(tmp_path, body.replace("time.sleep(60)", "pass"), str(root), str(tmp_path / "m2"), str(log))
    assert rerun.communicate(timeout=20)[0].strip() == "False"
    assert rerun.returncode == 0
    assert log.read_text().split() == [str(i) for i in range(6)] + [str(i) for i in range(5, 10)]
    entry = RunStore(root).entries()[0]
    assert json.loads((entry.path / "results.json").read_text()) == [
        {"i": i, "square": i * i} for i in range(10)]
    assert entry.manifest["info"] == {"rows": 10}
    assert not shard_dir.exists()


def test_two_processes_asking_for_one_key_compute_it_once(tmp_path):
    root, log, go = tmp_path / "run", tmp_path / "calls.log", tmp_path / "go"
    body = """
        def compute(out):
            with open(ARGS[1], "a") as f:
                f.write("call\\n")
            Path(ARGS[2] + ".computing").touch()
            while not Path(ARGS[2]).exists():
                time.sleep(0.01)
            (out / "data.txt").write_text("once")
        Path(ARGS[3]).touch()
        entry = RunStore(ARGS[0]).run("reward", compute, config={"x": 1}, code_version="1")
        print(entry.hit, (entry.path / "data.txt").read_text())
    """
    first = spawn(tmp_path, body, str(root), str(log), str(go), str(tmp_path / "first_asked"))
    wait_for(Path(str(go) + ".computing"))
    second = spawn(tmp_path, body, str(root), str(log), str(go), str(tmp_path / "second_asked"))
    wait_for(tmp_path / "second_asked")
    time.sleep(0.2)  # let the second process reach the lock while the first still holds it
    go.touch()
    outputs = [p.communicate(timeout=20)[0].split() for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0]
    assert outputs == [["False", "once"], ["True", "once"]]
    assert log.read_text().splitlines() == ["call"]


def test_status_main_prints_done_and_interrupted(tmp_path, capsys):
    store = RunStore(tmp_path)
    done = store.run("generate", lambda out: {"rows": 42}, config={}, code_version="1")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".tmp" / f"train-0123456789abcdef-{dead.pid}-beef").mkdir()

    assert status_main(str(tmp_path)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["STAGE", "KEY", "STATE", "ROWS", "WALL_S", "CREATED"]
    table = {line.split()[0]: line.split() for line in lines[1:]}
    assert table["generate"][1:4] == [done.key, "done", "42"]
    assert table["train"][1:4] == ["0123456789abcdef", "interrupted", "-"]


def test_status_main_rejects_missing_or_foreign_dirs(tmp_path, capsys):
    assert status_main(str(tmp_path / "nope")) == 2
    assert "does not exist" in capsys.readouterr().err
    assert status_main(str(tmp_path)) == 2
    assert "not a run store" in capsys.readouterr().err
    assert format_status([]) == "(no stages in this run yet)"


def test_invalid_stage_names_are_rejected(tmp_path):
    with pytest.raises(ValueError):
        RunStore(tmp_path).run("../escape", write_stage, config={})
    assert not (tmp_path / "stages").exists()


def test_cli_status_lists_stages(tmp_path):
    """`simplemix status --run DIR` is wired to the store: a done stage shows with its key and state."""
    entry = RunStore(tmp_path).run("mix", lambda out: {"rows": 3}, {"r": 0.5}, code_version="1")
    r = subprocess.run([sys.executable, "-m", "simplemix.cli", "status", "--run", str(tmp_path)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    line = next(l for l in r.stdout.splitlines() if entry.key in l)
    assert "mix" in line and "done" in line
    missing = subprocess.run([sys.executable, "-m", "simplemix.cli", "status", "--run", str(tmp_path / "none")],
                             capture_output=True, text=True)
    assert missing.returncode == 2 and "none" in missing.stderr


# --- code versions: the stage's module and its transitive simplemix imports ---------------------------


def copy_package(tmp_path: Path) -> Path:
    """A private copy of the simplemix package under ``tmp_path/pkg``, for edits the real tree never sees."""
    shutil.copytree(Path(simplemix.__file__).parent, tmp_path / "pkg" / "simplemix",
                    ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path / "pkg"


def run_in_copy(root: Path, code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter that imports simplemix from the copy at ``root``; its stdout lines."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=root,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.splitlines()


def append(path: Path, line: str) -> None:
    path.write_text(path.read_text() + f"\n{line}\n")


def test_code_version_follows_imported_helpers_not_unrelated_modules(tmp_path):
    root = copy_package(tmp_path)
    probe = """
        import simplemix, simplemix.onpolicy
        from simplemix.store import default_code_version, module_closure
        closure = module_closure("simplemix.onpolicy")
        print(simplemix.__file__)
        print(default_code_version(simplemix.onpolicy.score_stage))
        print("simplemix.reward" in closure, "simplemix.plotting" in closure)
    """
    where, base, flags = run_in_copy(root, probe)
    assert Path(where) == root / "simplemix" / "__init__.py"
    assert base.startswith(simplemix.__version__ + "+src.")
    assert flags == "True False"  # reward is imported (lazily) by onpolicy, plotting is not

    append(root / "simplemix" / "plotting.py", "_unused = 0")
    assert run_in_copy(root, probe)[1] == base
    append(root / "simplemix" / "reward.py", "_unused = 0")
    assert run_in_copy(root, probe)[1] != base


def test_stored_stage_is_reused_until_an_imported_helper_changes(tmp_path):
    root = copy_package(tmp_path)
    pkg = root / "simplemix"
    (pkg / "_demo_helper.py").write_text("ROWS = 3\n")
    (pkg / "_demo_stage.py").write_text(textwrap.dedent("""
        from simplemix.store import RunStore

        def main(run_dir):
            from simplemix import _demo_helper
            entry = RunStore(run_dir).run("demo", lambda out: {"rows": _demo_helper.ROWS}, {"n": 1})
            print(entry.key, entry.hit, entry.manifest["info"]["rows"])
    """))
    demo = f"from simplemix._demo_stage import main; main({str(tmp_path / 'run')!r})"
    assert "simplemix.runner" not in run_in_copy(root, "from simplemix.store import module_closure;"
                                                      "print(*module_closure('simplemix._demo_stage'))")[0]

    key, hit, rows = run_in_copy(root, demo)[0].split()
    assert (hit, rows) == ("False", "3")
    append(pkg / "runner.py", "_unused = 0")
    assert run_in_copy(root, demo)[0].split() == [key, "True", "3"]
    (pkg / "_demo_helper.py").write_text("ROWS = 4\n")
    new_key, hit, rows = run_in_copy(root, demo)[0].split()
    assert new_key != key and (hit, rows) == ("False", "4")


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """A small synthetic simplemix tree that the store analyses instead of the real one."""
    files = {
        "__init__.py": "",
        "alpha.py": "import os\n\ndef f():\n    if True:\n        from simplemix.beta import g\n    return g\n",
        "beta.py": "import simplemix.gamma as gm\n",
        "gamma.py": "X = 1\n",
        "delta.py": "from simplemix import gamma, epsilon, __version__\n",
        "epsilon.py": "",
        "unused.py": "import simplemix.alpha\n",
        "mini/__init__.py": "from . import tasks\n",
        "mini/tasks.py": "",
        "mini/world.py": "from .tasks import Task\nfrom .. import gamma\n\ndef h():\n    from . import oracle\n",
        "mini/oracle.py": "import simplemixer\nimport simplemix.mini.nonexistent\n",
    }
    for name, text in files.items():
        path = tmp_path / "simplemix" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    monkeypatch.setattr(simplemix.store, "_PACKAGE_DIR", tmp_path / "simplemix")
    return tmp_path / "simplemix"


def test_module_closure_follows_lazy_from_and_relative_imports(fake_package):
    assert module_closure("simplemix.alpha") == ["simplemix", "simplemix.alpha", "simplemix.beta",
                                                 "simplemix.gamma"]  # lazy import inside a function
    assert module_closure("simplemix.delta") == ["simplemix", "simplemix.delta", "simplemix.epsilon",
                                                 "simplemix.gamma"]  # `from simplemix import a, b`
    assert module_closure("simplemix.mini.world") == [
        "simplemix", "simplemix.gamma", "simplemix.mini", "simplemix.mini.oracle",
        "simplemix.mini.tasks", "simplemix.mini.world"]  # relative imports; parent __init__ implied
    assert module_closure("simplemix.gamma") == ["simplemix", "simplemix.gamma"]
    assert module_closure("simplemix.nope") == [] and module_closure("os") == []


def test_closure_edits_change_the_code_version_in_process(fake_package):
    before = default_code_version("simplemix.alpha")
    assert before == default_code_version("simplemix.alpha")
    (fake_package / "unused.py").write_text("X = 2\n")
    assert default_code_version("simplemix.alpha") == before
    (fake_package / "gamma.py").write_text("X = 2\n")  # same size, read afresh: the parse cache is by content
    assert default_code_version("simplemix.alpha") != before


def test_real_closure_covers_what_importing_the_stage_loads():
    """Static analysis must find at least the simplemix modules a fresh import actually loads."""
    closure = module_closure("simplemix.onpolicy")
    assert closure == sorted(closure) and "simplemix.onpolicy" in closure
    assert {"simplemix", "simplemix.store", "simplemix.reward", "simplemix.sampling"} <= set(closure)
    # onpolicy names the world only for typing; what a world contributes reaches the keys through its identities
    assert not {m for m in closure if m.startswith(("simplemix.world", "simplemix.miniature", "simplemix.evaluation"))}
    r = subprocess.run([sys.executable, "-c", "import sys, simplemix.onpolicy; "
                        "print(*sorted(m for m in sys.modules if m.split('.')[0] == 'simplemix'))"],
                       capture_output=True, text=True, cwd=REPO, timeout=60)
    assert r.returncode == 0, r.stderr
    assert set(r.stdout.split()) <= set(closure)


def test_code_version_accepts_functions_modules_names_and_partials():
    by_name = default_code_version("simplemix.store")
    assert by_name.startswith(simplemix.__version__ + "+src.")
    assert default_code_version(simplemix.store) == by_name
    assert default_code_version(simplemix.store.stable_hash) == by_name
    assert default_code_version(functools.partial(functools.partial(simplemix.store.stable_hash), length=4)) == by_name


def test_explicit_stage_version_changes_the_code_version(tmp_path):
    plain = default_code_version("simplemix.store")
    v2 = default_code_version("simplemix.store", "2")
    assert v2 == plain.replace("+src.", "+v2+src.") and v2 != default_code_version("simplemix.store", "3")
    store = RunStore(tmp_path)
    a = store.run("s", write_stage, {})
    b = store.run("s", write_stage, {}, version="2")
    assert a.key != b.key and not b.hit and b.manifest["code_version"].split("+")[1] == "v2"
    with pytest.raises(ValueError):
        store.run("s", write_stage, {}, code_version="x", version="2")


def test_function_without_source_asks_for_an_explicit_code_version():
    namespace = {"__name__": "not_simplemix"}
    exec(compile("def generated(out):\n    pass\n", "<generated>", "exec"), namespace)
    with pytest.raises(ValueError, match="generated.*code_version="):
        default_code_version(namespace["generated"])


def test_code_versions_of_the_whole_package_are_cheap():
    names = [".".join(("simplemix", *p.relative_to(REPO / "simplemix").with_suffix("").parts))
             for p in sorted((REPO / "simplemix").rglob("*.py"))]
    names = [n.removesuffix(".__init__") for n in names]
    first = [default_code_version(n) for n in names]
    start = time.perf_counter()
    assert [default_code_version(n) for n in names] == first
    assert time.perf_counter() - start < 0.25  # ~20 ms measured; the bound leaves room for slow CI


def test_typing_only_imports_are_not_part_of_the_closure(fake_package):
    (fake_package / "typed.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                           "    from simplemix import epsilon\nelse:\n    from simplemix import beta\n")
    closure = module_closure("simplemix.typed")
    assert "simplemix.epsilon" not in closure and {"simplemix.beta", "simplemix.gamma"} <= set(closure)


def test_world_identities_carry_the_code_of_what_they_name(tiny_run):
    """The scores stage does not import the oracle; the world's reward identity carries the oracle's code version
    (and the judge's the judges'), so an edit to either reaches the keys of the stages built on them."""
    from conftest import tiny_world

    w = tiny_world(tiny_run)
    assert w.reward_key()["code"] == default_code_version("simplemix.miniature.oracle")
    assert w.judge_key()["code"] == default_code_version("simplemix.evaluation")
    assert "simplemix.miniature.oracle" in module_closure("simplemix.miniature.oracle")
