"""The run store: content-addressed stage outputs with manifests and atomic writes.

Layout under a run directory ``root``::

    stages/<stage>/<key>/manifest.json   completed entries (the manifest is written last)
    .tmp/<stage>-<key>-<pid>-<rand>/     work in progress, renamed into stages/ when done
    .shards/<stage>-<key>/<i>.json       durable shards of an unfinished stage (see ShardCache)
    .locks/<stage>-<key>.lock            per-key flock, so concurrent requests compute once

A stage's key hashes its name, config, input keys and code version. The default code version is
``simplemix.__version__``, an optional explicit stage version, and a hash of the source files of the
stage's module and of every ``simplemix`` module it imports, transitively (see ``module_closure``).
Owns stage keys and the store layout; imports nothing else of simplemix.
"""

from __future__ import annotations

import ast
import fcntl
import contextlib
import functools
import gc
import hashlib
import importlib.metadata
import inspect
import json
import os
import platform
import re
import secrets
import shutil
import sys
import time
import types
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import simplemix
from simplemix import __version__
from simplemix.quiet import quiet


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no whitespace, so equal values give equal text."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def stable_hash(obj: Any, length: int = 16) -> str:
    """A short hex digest of ``obj`` that is the same on every machine and Python run."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()[:length]


_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_PACKAGE_DIR = Path(simplemix.__file__).parent  # the running interpreter's copy, analysed from its own files
_PACKAGES = ("torch", "transformers", "trl", "datasets", "peft", "accelerate", "vllm", "numpy")


@dataclass(frozen=True)
class Entry:
    """A completed stage output: its directory and manifest; ``hit`` is True when it came from the store."""

    stage: str
    key: str
    path: Path
    manifest: dict
    hit: bool = True


class ShardCache:
    """Durable per-shard results of one in-progress stage, so a killed run loses at most the shard in flight."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def get_or_compute(self, index: int | str, compute: Callable[[], Any]) -> Any:
        """Return shard ``index`` from disk if a previous attempt finished it, else compute and persist it."""
        name = _check_name(str(index), "shard index")
        path = self.directory / f"{name}.json"
        if path.exists():
            return json.loads(path.read_text(encoding="utf-8"))
        value = compute()
        self.directory.mkdir(parents=True, exist_ok=True)
        tmp = self.directory / f".{name}.{os.getpid()}.tmp"
        _write_synced(tmp, json.dumps(value, ensure_ascii=False))
        os.replace(tmp, path)
        return value


class StageOutputError(ValueError):
    """A file a stage wrote that its readers could not parse: the stage is not committed."""


def check_readable(directory: Path, what: str) -> None:
    """Re-read every JSON and JSONL file under ``directory`` as its readers will, before it is committed: a JSONL
    line must parse and hold no character that ends a line for ``str.splitlines`` (U+2028, U+2029, U+0085...)."""
    for path in sorted(directory.rglob("*.json*")):
        name = path.relative_to(directory)
        if path.suffix == ".jsonl":
            with open(path, encoding="utf-8", newline="\n") as f:
                for index, line in enumerate(f):
                    if len(line.splitlines()) > 1:
                        raise StageOutputError(f"{what}: {name}: line {index} holds a raw line-breaking character "
                                               f"(U+{ord(_first_break(line)):04X}); write JSONL with "
                                               f"simplemix.data.write_jsonl")
                    try:
                        if line.strip():
                            json.loads(line)
                    except ValueError as e:
                        raise StageOutputError(f"{what}: {name}: line {index} is not JSON: {e}") from None
        elif path.suffix == ".json":
            try:
                json.loads(path.read_text(encoding="utf-8"))
            except ValueError as e:
                raise StageOutputError(f"{what}: {name} is not JSON: {e}") from None


def _first_break(line: str) -> str:
    return next(c for c in line.rstrip("\n") if len(f"a{c}b".splitlines()) > 1)


_FROZEN: list[bool] = []


@contextlib.contextmanager
def frozen_heap():
    """Exclude the objects alive before a stage from garbage-collector scans while it computes. Libraries collect
    on every run (accelerate's ``free_memory`` at each ``Trainer.train``), and in a notebook kernel each full
    collection walks every frame, table and figure the chapter holds; frozen, it walks only the stage's own."""
    if _FROZEN:  # a stage inside a stage: the outer one owns the freeze
        yield
        return
    gc.freeze()
    _FROZEN.append(True)
    try:
        yield
    finally:
        _FROZEN.clear()
        gc.unfreeze()


class RunStore:
    """Content-addressed cache of stage outputs under one run directory; creates nothing until ``run``."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def key_for(self, stage: str, config: dict, inputs: dict | None, code_version: str) -> str:
        """The key of a stage request, for dry runs; use ``default_code_version(fn)`` to mirror ``run``."""
        return stable_hash({"stage": _check_name(stage, "stage"), "config": config,
                            "inputs": _input_keys(inputs), "code_version": code_version})

    def run(self, stage: str, fn: Callable[..., dict | None], config: dict,
            inputs: dict | None = None, code_version: str | None = None, *,
            version: str | None = None) -> Entry:
        """Return the stored entry for this request, computing it with ``fn`` on a miss.

        ``fn(out_dir)`` or ``fn(out_dir, shards)`` (a parameter named ``shards`` gets a ShardCache)
        writes its files into ``out_dir`` and may return a dict recorded as the manifest's ``info``.
        ``inputs`` maps names to Entries or raw key strings. The default ``code_version`` is
        ``default_code_version(fn, version)``: the package version, ``version`` if given, and a hash of
        the source of fn's module and every simplemix module it imports (at any depth, lazy ones too),
        so a fix to a helper invalidates the stage and an edit to unrelated modules does not.
        """
        if code_version is None:
            code_version = default_code_version(fn, version)
        elif version is not None:
            raise ValueError("pass either code_version= or version=, not both")
        key = self.key_for(stage, config, inputs, code_version)
        if (entry := self.get(stage, key)) is None:
            for sub in ("stages", ".tmp", ".locks", ".shards"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            self._remove_stale_temps()
            with open(self.root / ".locks" / f"{stage}-{key}.lock", "a") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or by the kernel on death
                if (entry := self.get(stage, key)) is None:
                    entry = self._compute(stage, key, fn, config, inputs, code_version)
        log_access(entry)
        return entry

    def _compute(self, stage, key, fn, config, inputs, code_version) -> Entry:
        tmp = self.root / ".tmp" / f"{stage}-{key}-{os.getpid()}-{secrets.token_hex(4)}"
        shard_dir = self.root / ".shards" / f"{stage}-{key}"
        tmp.mkdir()
        try:
            start = time.monotonic()
            wants_shards = "shards" in inspect.signature(fn).parameters
            with frozen_heap(), quiet():  # library chatter stays out of logs and pages; errors do not
                info = fn(tmp, shards=ShardCache(shard_dir)) if wants_shards else fn(tmp)
            if info is not None and not isinstance(info, dict):
                raise TypeError(f"stage {stage!r} returned {type(info).__name__}, expected dict or None")
            check_readable(tmp, f"stage {stage}/{key}")
            manifest = {
                "stage": stage, "key": key,
                "config": json.loads(canonical_json(config)),
                "inputs": _input_keys(inputs), "code_version": code_version,
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "wall_s": round(time.monotonic() - start, 3),
                "versions": package_versions(), "hardware": hardware(), "info": info or {},
            }
            text = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False, default=str)
            _write_synced(tmp / "manifest.json", text)
            manifest = json.loads(text)
            final = self.root / "stages" / stage / key
            final.parent.mkdir(parents=True, exist_ok=True)
            if final.exists() and not (final / "manifest.json").exists():
                shutil.rmtree(final)  # an incomplete final dir left by hand or by a foreign tool
            try:
                os.rename(tmp, final)
            except OSError:
                if (entry := self.get(stage, key)) is None:
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # another process finished first
                return entry
            _fsync_dir(final.parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        shutil.rmtree(shard_dir, ignore_errors=True)
        return Entry(stage, key, final, manifest, hit=False)

    def get(self, stage: str, key: str) -> Entry | None:
        """The completed entry for ``(stage, key)``, or None if there is none."""
        path = self.root / "stages" / stage / key
        try:
            manifest = json.loads((path / "manifest.json").read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        return Entry(stage, key, path, manifest, hit=True)

    def entries(self) -> list[Entry]:
        """All completed entries, ordered by stage then key."""
        stages = self.root / "stages"
        found = (self.get(s.name, k.name) for s in _subdirs(stages) for k in _subdirs(s))
        return [e for e in found if e is not None]

    def status(self) -> list[dict]:
        """One row per entry: stage, key, state (done | running | interrupted), rows, wall_s, created."""
        rows = [{"stage": e.stage, "key": e.key, "state": "done",
                 "rows": (e.manifest.get("info") or {}).get("rows"),
                 "wall_s": e.manifest.get("wall_s"), "created": e.manifest.get("created")}
                for e in self.entries()]
        for tmp, stage, key, pid in self._temps():
            try:
                started = datetime.fromtimestamp(tmp.stat().st_mtime, timezone.utc)
            except FileNotFoundError:  # finished or cleaned up since listed
                continue
            rows.append({"stage": stage, "key": key,
                         "state": "running" if _pid_alive(pid) else "interrupted",
                         "rows": None, "wall_s": None, "created": started.isoformat(timespec="seconds")})
        return sorted(rows, key=lambda r: (r["created"] or "", r["stage"], r["key"]))

    def _temps(self):
        for tmp in _subdirs(self.root / ".tmp"):
            parts = tmp.name.rsplit("-", 3)
            if len(parts) == 4 and parts[2].isdigit():
                yield tmp, parts[0], parts[1], int(parts[2])

    def _remove_stale_temps(self) -> None:
        for tmp, _, _, pid in self._temps():
            if not _pid_alive(pid):
                shutil.rmtree(tmp, ignore_errors=True)


STAGE_LOG_ENV = "SIMPLEMIX_STAGE_LOG"


def log_access(entry: Entry) -> None:
    """Append the stage a request returned (hit or computed) to the file ``$SIMPLEMIX_STAGE_LOG`` names, with the
    notebook cell running it (IPython's execution count): the runner sets it per chapter, so the reproducibility
    chapter can name the stages behind each figure. Without the variable, nothing."""
    path = os.environ.get(STAGE_LOG_ENV)
    if not path:
        return
    shell = sys.modules["IPython"].get_ipython() if "IPython" in sys.modules else None
    # IPython counts the running cell before running it: its number is one less than the shell's count now
    cell = shell.execution_count - 1 if getattr(shell, "execution_count", None) else None
    record = {"stage": entry.stage, "key": entry.key, "hit": entry.hit, "cell": cell}
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def default_code_version(fn_or_module: Callable | types.ModuleType | str, version: str | None = None) -> str:
    """``<simplemix version>[+v<version>]+src.<hash>``, the hash over ``module_closure`` of the module
    defining the function (a module object or a module name also work). A function outside simplemix
    falls back to hashing its own source; ValueError when even that is unavailable."""
    target = fn_or_module
    while isinstance(target, functools.partial):
        target = target.func
    if isinstance(target, str):
        name = target
    elif isinstance(target, types.ModuleType):
        name = target.__name__
    else:
        name = getattr(target, "__module__", None) or ""
    spec = getattr(sys.modules.get(name), "__spec__", None)
    name = spec.name if spec is not None and name == "__main__" else name  # a simplemix module run with -m
    prefix = __version__ if version is None else f"{__version__}+v{version}"
    if _module_file(name) is not None:
        files = [(m, _read_module(m)[0]) for m in module_closure(name)]
        return f"{prefix}+src.{stable_hash(files, 12)}"
    try:
        source = inspect.getsource(target)
    except (OSError, TypeError) as err:
        raise ValueError(f"cannot find the source of {fn_or_module!r} (not in a simplemix module file); "
                         "pass code_version= explicitly") from err
    return f"{prefix}+src.{stable_hash(source, 12)}"


def module_closure(name: str) -> list[str]:
    """Sorted names of ``name`` and every simplemix module it imports, transitively, by static analysis.

    Imports at any depth count (lazy imports in functions), except those under ``if TYPE_CHECKING:``, which
    never run; a module implies its parent packages' ``__init__``; names without a file under the package are
    skipped.
    """
    seen: set[str] = set()
    todo = [name]
    while todo:
        module = todo.pop()
        if module in seen or _module_file(module) is None:
            continue
        seen.add(module)
        todo.extend(_read_module(module)[1])
        todo.extend(_parents(module))
    return sorted(seen)


def _module_file(name: str) -> Path | None:
    """The file of simplemix module ``name`` under the running package directory, or None."""
    parts = name.split(".")
    if parts[0] != "simplemix" or not all(p.isidentifier() for p in parts):
        return None
    base = _PACKAGE_DIR.joinpath(*parts[1:])
    candidates = [base / "__init__.py"] + ([base.with_suffix(".py")] if len(parts) > 1 else [])
    return next((path for path in candidates if path.is_file()), None)


def _read_module(name: str) -> tuple[str, tuple[str, ...]]:
    """(sha256 of the module file's bytes, simplemix names it imports); parsing is cached on the content."""
    path = _module_file(name)
    data = path.read_bytes()
    return hashlib.sha256(data).hexdigest(), _imports(name, path.name == "__init__.py", data)


@functools.cache
def _imports(name: str, is_package: bool, source: bytes) -> tuple[str, ...]:
    """Candidate simplemix module names imported anywhere in ``source``; non-modules are dropped later."""
    package = name if is_package else name.rpartition(".")[0]
    found = []
    for node in _runtime_nodes(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # `from . import x` in package p.q is `from p.q import x`; each extra dot goes up
                parts = package.split(".")
                base = ".".join(filter(None, [".".join(parts[: len(parts) - node.level + 1]), base]))
            found.append(base)
            found += [f"{base}.{alias.name}" for alias in node.names if alias.name != "*"]
    return tuple(sorted({m for m in found if m == "simplemix" or m.startswith("simplemix.")}))


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` except the bodies of ``if TYPE_CHECKING:`` (typing-only imports never run)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


def _is_type_checking(test: ast.AST) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def package_versions() -> dict[str, str]:
    """Python, simplemix and the installed ML packages, read from metadata without importing them."""
    versions = {"python": platform.python_version(), "simplemix": __version__}
    for name in _PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def hardware() -> dict[str, Any]:
    """Platform, CPU count, memory, and GPU names when torch is already imported (never imports it)."""
    info: dict[str, Any] = {"platform": platform.platform(), "cpu_count": os.cpu_count()}
    try:
        info["memory_gib"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError, AttributeError):
        pass
    torch = sys.modules.get("torch")
    try:
        if torch is not None and torch.cuda.is_available():
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # a broken CUDA setup must not fail the stage that already succeeded
        pass
    return info


def format_status(rows: list[dict]) -> str:
    """A plain-text table of ``RunStore.status()`` rows."""
    if not rows:
        return "(no stages in this run yet)"
    columns = ["stage", "key", "state", "rows", "wall_s", "created"]
    cells = [[c.upper() for c in columns]]
    cells += [["-" if r.get(c) is None else str(r[c]) for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(line, widths)).rstrip() for line in cells)


def status_main(run_dir: str) -> int:
    """Print the status table of a run directory; exit code 2 if it is not a run store."""
    root = Path(run_dir)
    if not (root / "stages").is_dir():
        what = "does not exist" if not root.exists() else "is not a run store (no stages/ directory)"
        print(f"simplemix status: {run_dir} {what}", file=sys.stderr)
        return 2
    print(format_status(RunStore(root).status()))
    return 0


def _check_name(name: str, what: str) -> str:
    if not _NAME.match(name):
        raise ValueError(f"invalid {what} {name!r}: use letters, digits, '_', '.', '-'")
    return name


def _input_keys(inputs: dict | None) -> dict[str, str]:
    keys = {}
    for name, value in (inputs or {}).items():
        if isinstance(value, Entry):
            keys[name] = value.key
        elif isinstance(value, str):
            keys[name] = value
        else:
            raise TypeError(f"input {name!r} must be an Entry or a key string, not {type(value).__name__}")
    return keys


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir()) if path.is_dir() else []


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 only checks existence; PermissionError means alive, another user's
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return pid > 0


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
