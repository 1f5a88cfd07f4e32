"""The batch: execute the notebooks with papermill into ``runs/<profile>/``, then render the book.

The repository root is the book's source. Rendering happens from a staged copy in the run
directory in which the notebooks are the executed ones, so the source tree never holds outputs.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BOOK_SOURCES = ("_config.yml", "_toc.yml", "book")


def notebooks(only: list[str] | None = None) -> list[Path]:
    """The book's notebooks in order, optionally those whose name starts with one of ``only``."""
    found = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if only:
        found = [p for p in found if any(p.stem.startswith(o) or p.name == o for o in only)]
    return found


def run_notebooks(profile: str, only: list[str] | None = None, runs_dir: str | Path = "runs") -> int:
    """Execute each notebook with ``profile`` injected; keep going past failures and summarize them."""
    import papermill

    run_dir = (Path(runs_dir) / profile).resolve()
    out_dir = run_dir / "notebooks"
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = notebooks(only)
    failures = []
    for i, nb in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] {nb.name} (profile {profile})", flush=True)
        start = time.time()
        try:
            papermill.execute_notebook(
                str(nb), str(out_dir / nb.name), parameters={"profile": profile, "run_dir": str(run_dir)},
                cwd=str(REPO / "notebooks"), kernel_name="python3", progress_bar=True,
            )
        except papermill.PapermillExecutionError as e:
            failures.append(f"{nb.name}: cell {e.exec_count}: {e.ename}: {e.evalue}")
        print(f"    {time.time() - start:.1f} s", flush=True)
    print(f"{len(todo) - len(failures)} of {len(todo)} notebooks executed into {out_dir}")
    for line in failures:
        print(f"FAILED {line}", file=sys.stderr)
    return 1 if failures else 0


def build_book(run_dir: str | Path = "runs/smoke") -> int:
    """Stage the book sources with the run's executed notebooks and build HTML, warnings as errors."""
    run_dir = Path(run_dir)
    executed = run_dir / "notebooks"
    missing = [p.name for p in notebooks() if not (executed / p.name).is_file()]
    if missing:
        print(f"simplemix book: {run_dir} lacks executed notebooks {missing}; run `simplemix run` first",
              file=sys.stderr)
        return 2
    stage = run_dir / "book-src"
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    for name in BOOK_SOURCES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, stage / name)
        elif src.is_file():
            shutil.copy2(src, stage / name)
    shutil.copytree(executed, stage / "notebooks", ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    jupyter_book = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()"]
    cmd = [*jupyter_book, "build", str(stage), "--path-output", str(run_dir), "-W", "-n", "--keep-going"]
    rc = subprocess.call(cmd)
    if rc == 0:
        print(f"book: {(run_dir / '_build' / 'html' / 'index.html').resolve()}")
    return rc


def record(run_dir: str | Path, chapter: str, values: dict) -> Path:
    """Merge a chapter's headline numbers into ``<run_dir>/results.json`` (what the book's prose quotes)."""
    import json

    path = Path(run_dir) / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results[chapter] = {**results.get(chapter, {}), **values}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1, sort_keys=True, default=float) + "\n")
    tmp.replace(path)
    return path
