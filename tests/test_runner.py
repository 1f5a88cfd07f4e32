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
