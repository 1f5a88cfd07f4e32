"""The batch runner on tiny notebooks: logs, a failure summary naming the cell, keep-going, skipping what is up to
date, resuming after a fix, and one GPU per parallel notebook."""

import json

import nbformat
import pytest

from simplemix import runner


def _notebook(path, *cells):
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell('profile = "smoke"\nrun_dir = None')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, *(nbformat.v4.new_code_cell(c) for c in cells)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture
def source(tmp_path):
    src = tmp_path / "nbs"
    src.mkdir()
    marker = tmp_path / "gpus"
    marker.mkdir()
    for name in ("00_first", "01_second"):
        _notebook(src / f"{name}.ipynb", "import os, pathlib",
                  f"pathlib.Path({str(marker)!r}, {name!r}).write_text(os.environ.get('CUDA_VISIBLE_DEVICES', '-'))",
                  "print('ran', profile, run_dir)")
    _notebook(src / "02_broken.ipynb", "x = 1", "raise ValueError('bad value in the third cell')")
    return src


def test_keeps_going_summarises_failures_and_skips_what_is_up_to_date(source, tmp_path, capsys):
    runs = tmp_path / "runs"
    assert runner.run_notebooks("smoke", runs_dir=runs, source=source) == 1
    err = capsys.readouterr().err
    assert "FAILED 02_broken.ipynb: cell 3: ValueError: bad value in the third cell" in err
    assert str(runs / "smoke" / "logs" / "02_broken.log") in err
    executed = json.loads((runs / "smoke" / "notebooks" / "01_second.ipynb").read_text())
    assert any("ran smoke" in "".join(o.get("text", "")) for c in executed["cells"] for o in c.get("outputs", []))
    assert (runs / "smoke" / "logs" / "00_first.log").exists()

    _notebook(source / "02_broken.ipynb", "x = 1", "print('fixed')")  # only the fixed notebook runs again
    assert runner.run_notebooks("smoke", runs_dir=runs, source=source) == 0
    out = capsys.readouterr().out
    assert "up to date, skipped: 00_first.ipynb, 01_second.ipynb" in out and "ok      02_broken.ipynb" in out
    assert runner.run_notebooks("smoke", runs_dir=runs, source=source, force=True) == 0
    assert "skipped" not in capsys.readouterr().out


def test_parallel_notebooks_get_one_gpu_each(source, tmp_path):
    (source / "02_broken.ipynb").unlink()
    assert runner.run_notebooks("smoke", runs_dir=tmp_path / "runs", source=source, gpus=["3", "5"]) == 0
    seen = sorted((tmp_path / "gpus" / name).read_text() for name in ("00_first", "01_second"))
    assert seen == ["3", "5"]  # a GPU is handed back to the end of the queue: the next notebook gets the other


def _sleepers(tmp_path):
    """Three notebooks that record their kernel's pid and the pid of a child the kernel starts, then sleep."""
    src, pids = tmp_path / "slow", tmp_path / "pids"
    src.mkdir()
    pids.mkdir()
    for name in ("00_a", "01_b", "02_never"):
        _notebook(src / f"{name}.ipynb", "import os, pathlib, subprocess, sys, time",
                  f"child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])\n"
                  f"pathlib.Path({str(pids)!r}, {name!r}).write_text(f'{{os.getpid()}} {{child.pid}}')",
                  "time.sleep(600)")
    return src, pids


def _start_batch(src, tmp_path):
    import subprocess
    import sys

    code = ("import sys; from simplemix import runner; "
            f"sys.exit(runner.run_notebooks('smoke', runs_dir={str(tmp_path / 'runs')!r}, jobs=2, "
            f"source=__import__('pathlib').Path({str(src)!r})))")
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(predicate, timeout=120.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def _batch_pids(proc, pids):
    """Every process of a running batch below the runner: papermills, kernels and the kernels' children."""
    import psutil

    started = [int(x) for f in pids.iterdir() for x in f.read_text().split()]
    return started + [p.pid for p in psutil.Process(proc.pid).children(recursive=True)]


def _all_gone(pid_list):
    import psutil

    def gone(pid):
        try:
            return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True
    return all(gone(p) for p in pid_list)


@pytest.mark.parametrize("how", ["SIGINT", "SIGKILL"])
def test_a_stopped_or_killed_runner_leaves_nothing_running(tmp_path, how):
    import signal

    src, pids = _sleepers(tmp_path)
    proc = _start_batch(src, tmp_path)
    try:
        assert _wait_for(lambda: len(list(pids.iterdir())) == 2), proc.stderr.read() if proc.poll() else "not started"
        everything = _batch_pids(proc, pids)
        assert len(everything) >= 8  # per notebook: tether-exec'd papermill, kernel, the kernel's child (+ pid file)
        proc.send_signal(getattr(signal, how))
        rc = proc.wait(timeout=60)
        assert _wait_for(lambda: _all_gone(everything), timeout=30), [p for p in everything if not _all_gone([p])]
        if how == "SIGINT":
            assert rc == 130
            err = proc.stderr.read()
            assert "stopped by SIGINT" in err and "run the same command to resume" in err
            assert not (tmp_path / "pids" / "02_never").exists()  # nothing started after the stop
            done = tmp_path / "runs" / "smoke" / "notebooks" / ".completed.json"
            assert not done.exists() or json.loads(done.read_text()) == {}
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_parallel_batch_starts_chapter_00_then_the_longest(tmp_path):
    src = tmp_path / "nbs"
    src.mkdir()
    for name, cost in [("00_world", 5), ("01_short", 2), ("02_long", 50), ("03_plain", None)]:
        _notebook(src / f"{name}.ipynb", "x = 1")
        if cost is not None:
            nb = nbformat.read(src / f"{name}.ipynb", as_version=4)
            nb.metadata["simplemix"] = {"relative_cost": cost}
            nbformat.write(nb, src / f"{name}.ipynb")
    wave = [(p, "fingerprint") for p in runner.notebooks(source=src)]
    history = tmp_path / ".durations.json"
    assert [p.stem for p, _ in runner.longest_first(wave, history)] == ["00_world", "02_long", "01_short", "03_plain"]
    history.write_text(json.dumps({"01_short.ipynb": 90.0, "03_plain.ipynb": 60.0}))  # the last run's wall times win
    assert [p.stem for p, _ in runner.longest_first(wave, history)] == ["00_world", "01_short", "03_plain", "02_long"]
    assert runner.run_notebooks("smoke", runs_dir=tmp_path / "runs", source=src, jobs=2) == 0
    recorded = json.loads((tmp_path / "runs" / "smoke" / "notebooks" / ".durations.json").read_text())
    assert set(recorded) == {"00_world.ipynb", "01_short.ipynb", "02_long.ipynb", "03_plain.ipynb"}


def test_the_summary_chapters_run_last_one_at_a_time_in_book_order(tmp_path):
    # 91 reads 90's executed notebook: side by side it read a half-written file (JSONDecodeError in CI)
    src, times = tmp_path / "nbs", tmp_path / "times"
    src.mkdir()
    times.mkdir()
    for name in ("00_world", "01_chapter", "90_results", "91_status"):
        _notebook(src / f"{name}.ipynb", "import pathlib, time",
                  f"t0 = time.time(); time.sleep(1.5)\npathlib.Path({str(times)!r}, {name!r}).write_text(f'{{t0}} {{time.time()}}')")
    assert runner.run_notebooks("smoke", runs_dir=tmp_path / "runs", source=src, jobs=2) == 0
    span = {f.name: [float(x) for x in f.read_text().split()] for f in times.iterdir()}
    assert span["90_results"][0] >= max(span["00_world"][1], span["01_chapter"][1])
    assert span["91_status"][0] >= span["90_results"][1]


def test_the_runner_records_each_chapters_execution_and_the_stages_each_cell_requested(tmp_path):
    src = tmp_path / "nbs"
    src.mkdir()
    store = str(tmp_path / "store")
    _notebook(src / "00_stages.ipynb", "from simplemix.store import RunStore\nx = 1\nassert x == 1",
              f"e = RunStore({store!r}).run('demo', lambda out: (out / 'f.txt').write_text('1') and None, {{'a': 1}})\n"
              "assert e.stage == 'demo'; assert True")
    _notebook(src / "01_fails.ipynb", "assert 1 == 2, 'the check'")
    assert runner.run_notebooks("smoke", runs_dir=tmp_path / "runs", source=src) == 1
    run = tmp_path / "runs" / "smoke"
    record = json.loads((run / "notebooks" / runner.EXECUTIONS).read_text())
    assert record["00_stages.ipynb"] | {"seconds": 0, "finished": ""} == {
        "status": "ok", "seconds": 0, "finished": "", "code_cells": 4, "cells_run": 4, "asserts": 3, "error": None}
    assert record["01_fails.ipynb"]["status"] == "failed" and "AssertionError: the check" in record["01_fails.ipynb"]["error"]
    logged = [json.loads(line) for line in (run / "logs" / "00_stages.stages.jsonl").read_text().splitlines()]
    executed = json.loads((run / "notebooks" / "00_stages.ipynb").read_text())
    asking = next(c for c in executed["cells"] if "RunStore(" in "".join(c["source"]) and ".run(" in "".join(c["source"]))
    assert logged == [{"stage": "demo", "key": logged[0]["key"], "hit": False, "cell": asking["execution_count"]}]


def test_a_failed_book_build_says_where_the_html_is_and_which_chapters_failed(tmp_path, monkeypatch, capsys):
    executed = tmp_path / "run" / "notebooks"
    executed.mkdir(parents=True)
    names = [p.name for p in runner.notebooks()]
    for name in names:
        nb = nbformat.v4.new_notebook()
        cell = nbformat.v4.new_code_cell("x")
        if name == names[2]:
            cell.outputs = [nbformat.v4.new_output("error", ename="KeyError", evalue="'group'", traceback=[])]
        nb.cells = [cell]
        nbformat.write(nb, executed / name)

    def fake_build(cmd):  # jupyter-book writes the pages it could, then exits 1 for the warnings
        html = tmp_path / "run" / "_build" / "html"
        html.mkdir(parents=True)
        (html / "index.html").write_text("<html></html>")
        return 1

    monkeypatch.setattr(runner.subprocess, "call", fake_build)
    assert runner.build_book(tmp_path / "run") == 1
    err = capsys.readouterr().err
    assert f"the HTML is in {(tmp_path / 'run' / '_build' / 'html' / 'index.html').resolve()}" in err
    assert f"chapters with an error cell: {names[2]}" in err


def test_a_data_error_is_one_line_naming_file_row_and_field(monkeypatch, capsys):
    from simplemix import cli
    from simplemix.data import DataValidationError

    def bad(args):
        raise DataValidationError("pairs.jsonl", 3, "chosen", "empty_response", "is empty")

    monkeypatch.setattr(cli, "_config_show", bad)
    assert cli.main(["config", "show"]) == 2
    err = capsys.readouterr().err
    assert err == "simplemix: data error: pairs.jsonl: row 3: field 'chosen': is empty (reason: empty_response)\n"
