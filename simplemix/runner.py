"""The batch: execute the notebooks with papermill into ``runs/<profile>/``, then render the book.

The repository root is the book's source. Rendering happens from a staged copy in the run
directory in which the notebooks are the executed ones, so the source tree never holds outputs.
Owns the papermill batch, its execution records and the book build; imports config and store.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from simplemix import resources
from simplemix.store import STAGE_LOG_ENV

REPO = resources.root()  # a checkout, or the tree a wheel bundles
BOOK_SOURCES = ("_config.yml", "_toc.yml", "book")


def notebooks(only: list[str] | None = None, source: Path | None = None) -> list[Path]:
    """The book's notebooks in order, optionally those whose name starts with one of ``only``."""
    found = sorted((source or REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if only:
        found = [p for p in found if any(p.stem.startswith(o) or p.name == o for o in only)]
    return found


def _fingerprint(nb: Path, profile: str, run_dir: Path) -> str:
    """What an executed notebook depends on besides the run store: its source, the package's code, the profile's
    recipe and the parameters. A notebook whose fingerprint is unchanged since it last completed is skipped."""
    import hashlib

    from simplemix.config import recipes_dir

    digest = hashlib.sha256()
    recipe = Path(profile) if Path(profile).suffix in (".yaml", ".yml") else recipes_dir() / f"{profile}.yaml"
    for path in [nb, recipe, *sorted(Path(__file__).parent.rglob("*.py"))]:
        digest.update(path.read_bytes() if path.exists() else b"")
    digest.update(f"{profile}\0{run_dir}".encode())
    return digest.hexdigest()[:16]


def _failed_cell(executed: Path) -> str:
    """'cell N: Ename: evalue' of the first cell with an error output; N counts the source notebook's cells from 1
    (papermill's injected-parameters cell is not one of them)."""
    import json

    try:
        cells = json.loads(executed.read_text())["cells"]
    except (OSError, ValueError, KeyError):
        return "the notebook did not start (see the log)"
    added = {"injected-parameters", "papermill-error-cell-tag"}  # papermill's own cells are not the notebook's
    cells = [c for c in cells if not added & set(c.get("metadata", {}).get("tags", []))]
    for number, cell in enumerate(cells, 1):
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                return f"cell {number}: {out.get('ename')}: {out.get('evalue')}"
    return "no error cell (killed or timed out? see the log)"


def run_notebooks(profile: str, only: list[str] | None = None, runs_dir: str | Path | None = None, *, jobs: int = 1,
                  gpus: list[str] | None = None, force: bool = False, source: Path | None = None) -> int:
    """Execute each notebook with papermill, ``profile`` and ``run_dir`` injected, into the profile's run directory
    (:func:`simplemix.config.default_run_dir`: ``<runs_dir>/<profile name>``, the same rule as every command's).

    Each notebook runs in its own process with its log in ``logs/<name>.log``; ``jobs`` run at once, each pinned
    to one of ``gpus`` (``CUDA_VISIBLE_DEVICES``) when given. Stages shared between notebooks are computed once
    through the run store (its locks serialise concurrent requests). A notebook that completed with the same
    source, code, recipe and parameters is skipped unless ``force``, so a killed batch resumes where it stopped.
    Keeps going past failures and ends with a summary of each (notebook, cell, error, log).
    """
    import json
    import os
    import queue

    from tqdm import tqdm

    from simplemix.config import default_run_dir

    run_dir = default_run_dir(profile, runs_dir)
    out_dir, log_dir = run_dir / "notebooks", run_dir / "logs"
    out_dir.mkdir(parents=True, exist_ok=True)
    log_dir.mkdir(parents=True, exist_ok=True)
    done_file = out_dir / ".completed.json"
    done = json.loads(done_file.read_text()) if done_file.exists() else {}
    todo = notebooks(only, source)
    workers = len(gpus) if gpus else max(1, jobs)
    free = queue.Queue()  # GPU ids (or None) not in use: a notebook takes one while it runs
    for slot in (gpus or [None] * workers):
        free.put(slot)

    batch = _Batch()

    def execute(nb: Path) -> tuple[Path, int, float]:
        slot = free.get()
        env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}  # figures must render inline
        if slot is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(slot)
        stage_log = log_dir / f"{nb.stem}.stages.jsonl"  # the stages the chapter requested, cell by cell
        stage_log.unlink(missing_ok=True)
        env[STAGE_LOG_ENV] = str(stage_log)
        if workers > 1 and "OMP_NUM_THREADS" not in env:
            # notebooks running side by side share the cores: torch's default (all of them each) oversubscribes
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // workers))
        cmd = [sys.executable, "-m", "papermill", str(nb), str(out_dir / nb.name), "-p", "profile", profile,
               "-p", "run_dir", str(run_dir), "--cwd", str(source or REPO / "notebooks"), "-k", "python3", "--log-output",
               "--no-progress-bar"]
        start = time.time()
        try:
            with open(log_dir / f"{nb.stem}.log", "w") as log:
                rc = batch.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        finally:
            free.put(slot)
        return nb, rc, time.time() - start

    failures, skipped = [], []
    pending = []
    world = _profile_world(profile)
    elsewhere = [nb for nb in todo if not applies(nb, world)]
    for nb in elsewhere:
        write_not_run(nb, out_dir / nb.name, profile, world)
        done.pop(nb.name, None)  # its page is the stand-in now: back in one of its worlds, it runs again
    if elsewhere:
        print(f"not part of world {world!r}, not run: {', '.join(nb.name for nb in elsewhere)}", flush=True)
    for nb in todo:
        if nb in elsewhere:
            continue
        fingerprint = _fingerprint(nb, profile, run_dir)
        if not force and done.get(nb.name) == fingerprint and (out_dir / nb.name).exists():
            skipped.append(nb.name)
        else:
            pending.append((nb, fingerprint))
    if skipped:
        print(f"up to date, skipped: {', '.join(skipped)}", flush=True)
    bar = tqdm(total=len(pending), desc=f"notebooks ({profile})", unit="nb", disable=not pending)
    # 9x notebooks summarise the others (results, execution table): they run once the rest have finished, one at a time
    waves = [[p for p in pending if not p[0].name.startswith("9")], [p for p in pending if p[0].name.startswith("9")]]
    if workers > 1:
        waves[0] = longest_first(waves[0], out_dir / ".durations.json")
    with batch.stop_on_signals():
        for wave, width in zip(waves, (workers, 1)):
            # the 9x chapters one at a time, in book order: each reads what the ones before it wrote
            _run_wave(wave, width, execute, bar, done, done_file, failures, out_dir, log_dir, batch)
            if batch.stopped:
                break
    bar.close()
    if batch.stopped:
        name = signal.Signals(batch.stopped).name
        print(f"stopped by {name}: {len(done)} notebooks completed are kept; run the same command to resume",
              file=sys.stderr)
        return 128 + batch.stopped
    ran = len(todo) - len(elsewhere)
    print(f"{ran - len(failures)} of {ran} notebooks up to date in {out_dir}")
    for line in failures:
        print(f"FAILED {line}", file=sys.stderr)
    return 1 if failures else 0


def _meta(nb: Path) -> dict:
    import json

    return json.loads(nb.read_text(encoding="utf-8")).get("metadata", {}).get("simplemix", {})


def _profile_world(profile: str) -> str:
    from simplemix.config import load_profile

    return load_profile(profile).world


def applies(nb: Path, world: str) -> bool:
    """Whether a chapter runs in a profile of ``world``: one whose metadata lists ``simplemix.worlds`` (chapter 00
    describes the miniature world and builds it) runs only in those, every other chapter everywhere."""
    worlds = _meta(nb).get("worlds")
    return worlds is None or world in worlds


def write_not_run(nb: Path, out: Path, profile: str, world: str) -> None:
    """In place of an executed chapter that is not part of the profile's world: the chapter's title and a line that
    says so, for the book (its page then says why it is empty) and the reproducibility table."""
    import json

    source = json.loads(nb.read_text(encoding="utf-8"))
    first = next((c for c in source["cells"] if c["cell_type"] == "markdown"), None)
    title = "".join(first["source"]).splitlines()[0] if first else f"# {nb.stem}"
    worlds = " or ".join(f"`{w}`" for w in _meta(nb)["worlds"])
    text = (f"{title}\n\nThis chapter belongs to profiles of world {worlds}. Profile `{profile}` takes its models and "
            f"data from world `{world}`, so the chapter was not run here; the `smoke` profile's book shows it.")
    stand_in = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": text, "id": "not-run"}],
                "metadata": {**source.get("metadata", {}), "simplemix": {**_meta(nb), "not_run": world}},
                "nbformat": source.get("nbformat", 4), "nbformat_minor": source.get("nbformat_minor", 5)}
    out.write_text(json.dumps(stand_in, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def longest_first(wave: list, durations_file: Path) -> list:
    """Chapter 00 first (it builds the world the others wait for), then the rest longest first, so the longest one
    is not left to run alone at the end. A notebook's length is its last wall time in this run directory, else the
    ``simplemix.relative_cost`` of its metadata (measured on the smoke profile), else 1; ties keep book order."""
    import json

    known = json.loads(durations_file.read_text()) if durations_file.exists() else {}

    def cost(item) -> float:
        nb = item[0]
        return known[nb.name] if nb.name in known else float(_meta(nb).get("relative_cost", 1.0))

    first = [p for p in wave if p[0].name.startswith("00")]
    return first + sorted((p for p in wave if p not in first), key=cost, reverse=True)


def _run_wave(wave, workers, execute, bar, done, done_file, failures, out_dir, log_dir, batch) -> None:
    """Execute one wave of notebooks, ``workers`` at a time, recording completions as they come."""
    import json
    from concurrent.futures import ThreadPoolExecutor, as_completed

    from tqdm import tqdm

    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {}
        for i, (nb, fingerprint) in enumerate(wave):
            futures[pool.submit(execute, nb)] = fingerprint
            if i == 0 and workers > 1 and nb.name.startswith("00"):
                # chapter 00 builds the shared world: let it start first so the others wait on its stages' locks
                time.sleep(2)
        for future in as_completed(futures):
            if future.cancelled():
                continue
            nb, rc, seconds = future.result()
            if batch.stopped:  # a notebook killed by the stop is neither completed nor a failure of its own
                for pending in futures:
                    pending.cancel()
                continue
            bar.update(1)
            if rc == 0:
                done[nb.name] = futures[future]
                tqdm.write(f"ok      {nb.name}  {seconds:.1f} s")
            else:
                done.pop(nb.name, None)
                failures.append(f"{nb.name}: {_failed_cell(out_dir / nb.name)} (log: {log_dir / (nb.stem + '.log')})")
                tqdm.write(f"FAILED  {nb.name}  {seconds:.1f} s")
            done_file.write_text(json.dumps(done, indent=1, sort_keys=True))
            record_execution(out_dir, nb, rc, seconds)
            durations = out_dir / ".durations.json"
            known = json.loads(durations.read_text()) if durations.exists() else {}
            durations.write_text(json.dumps(known | {nb.name: round(seconds, 1)}, indent=1, sort_keys=True))


EXECUTIONS = ".executions.json"


def execution_record(executed: Path, rc: int, seconds: float) -> dict:
    """What the reproducibility chapter shows of one executed chapter: whether it completed, its wall time, the
    code cells it ran, how many ``assert`` statements its source holds (a failing one fails the chapter), the
    failing cell if any."""
    import ast
    import json

    try:
        cells = json.loads(executed.read_text(encoding="utf-8"))["cells"]
    except (OSError, ValueError, KeyError):
        cells = []
    code = [c for c in cells if c.get("cell_type") == "code"]
    asserts = 0
    for c in code:
        source = "".join(c.get("source", ""))
        try:
            asserts += sum(isinstance(n, ast.Assert) for n in ast.walk(ast.parse(source)))
        except SyntaxError:  # an IPython magic: not Python, holds no assert
            pass
    return {"status": "ok" if rc == 0 else "failed", "seconds": round(seconds, 1),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "code_cells": len(code),
            "cells_run": sum(c.get("execution_count") is not None for c in code), "asserts": asserts,
            "error": None if rc == 0 else _failed_cell(executed)}


def record_execution(out_dir: Path, nb: Path, rc: int, seconds: float) -> None:
    """Merge one chapter's :func:`execution_record` into ``<out_dir>/.executions.json`` (written whole, atomically)."""
    import json
    import os

    path = out_dir / EXECUTIONS
    known = json.loads(path.read_text()) if path.exists() else {}
    known[nb.name] = execution_record(out_dir / nb.name, rc, seconds)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(known, indent=1, sort_keys=True))
    tmp.replace(path)


class _Batch:
    """The papermill processes of a batch, each under a :mod:`simplemix._tether` guardian that ends it, its kernel
    and whatever the kernel started if the runner dies (even by SIGKILL). On SIGINT or SIGTERM the runner starts no
    more notebooks, ends every running one the same way, and exits 128 + the signal."""

    def __init__(self):
        self.stopped = 0  # the signal that stopped the batch, or 0
        self._running: set = set()
        self._lock = threading.Lock()

    def call(self, cmd: list[str], **kwargs) -> int:
        import os

        with self._lock:
            if self.stopped:
                return 128 + self.stopped
            proc = subprocess.Popen([sys.executable, "-m", "simplemix._tether", str(os.getpid()), *cmd],
                                    start_new_session=True, **kwargs)  # the terminal's Ctrl-C reaches the runner only
            self._running.add(proc)
        try:
            return proc.wait()
        finally:
            with self._lock:
                self._running.discard(proc)

    def stop(self, signum: int) -> None:
        """Stop the batch: no new notebook starts, every running one is ended with all its descendants."""
        from simplemix._tether import end_tree

        with self._lock:
            self.stopped = self.stopped or signum
            running = list(self._running)
        threads = [threading.Thread(target=end_tree, args=(proc.pid,)) for proc in running]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    @contextlib.contextmanager
    def stop_on_signals(self):
        """While the batch runs, SIGINT and SIGTERM stop it (see :meth:`stop`); outside the main thread, nothing."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

        def handle(signum, frame):
            print(f"\n{signal.Signals(signum).name}: stopping the running notebooks...", file=sys.stderr, flush=True)
            threading.Thread(target=self.stop, args=(signum,), daemon=True).start()

        for s in handlers:
            signal.signal(s, handle)
        try:
            yield
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)


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
    for nb in (stage / "notebooks").glob("*.ipynb"):
        _collapse_injected_parameters(nb)
    jupyter_book = [sys.executable, "-c", "from jupyter_book.cli.main import main; main()"]
    cmd = [*jupyter_book, "build", str(stage), "--path-output", str(run_dir), "-W", "-n", "--keep-going"]
    rc = subprocess.call(cmd)
    index = (run_dir / "_build" / "html" / "index.html").resolve()
    if rc == 0:
        print(f"book: {index}")
    else:
        failed = [p.name for p in notebooks() if _failed_cell(executed / p.name).startswith("cell ")]
        where = f"the HTML is in {index}" if index.exists() else "no HTML was written"
        print(f"simplemix book: jupyter-book exited {rc} (warnings are errors); {where}"
              + (f"; chapters with an error cell: {', '.join(failed)}" if failed else ""), file=sys.stderr)
    return rc


def _collapse_injected_parameters(nb: Path) -> None:
    """The cell papermill adds (the run's parameters) collapsed on the page like the chapter's own parameters."""
    import json

    data = json.loads(nb.read_text(encoding="utf-8"))
    changed = False
    for cell in data.get("cells", []):
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        if "injected-parameters" in tags and "hide-input" not in tags:
            tags.append("hide-input")
            changed = True
    if changed:
        nb.write_text(json.dumps(data, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def record(run_dir: str | Path, chapter: str, values: dict) -> Path:
    """Merge a chapter's headline numbers into ``<run_dir>/results.json`` (what the book's prose quotes)."""
    import json

    import fcntl
    import os

    path = Path(run_dir) / "results.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "a") as lock:  # chapters running side by side record one at a time
        fcntl.flock(lock, fcntl.LOCK_EX)
        results = json.loads(path.read_text()) if path.exists() else {}
        results[chapter] = {**results.get(chapter, {}), **values}
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(results, indent=1, sort_keys=True, default=float) + "\n")
        tmp.replace(path)
    return path
