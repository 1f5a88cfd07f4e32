"""``python -m simplemix._tether PARENT_PID COMMAND...``: run COMMAND under a guardian that ends it with all its
descendants when told to (SIGTERM) or when the process that started the guardian dies, even by SIGKILL (Linux's
PR_SET_PDEATHSIG). The batch runner starts papermill this way: a kernel runs in a session of its own and its
children outlive it, so killing papermill alone would leave them running."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys

PR_SET_PDEATHSIG = 1
GRACE_S = 5.0


def end_tree(pid: int, grace_s: float = GRACE_S) -> None:
    """SIGTERM ``pid`` and every descendant (collected first, so none is missed when a parent exits), then SIGKILL
    whatever is still alive after ``grace_s``."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=grace_s)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    psutil.wait_procs(alive, timeout=grace_s)


def main(argv: list[str]) -> int:
    parent, command = int(argv[0]), argv[1:]
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the tether was tied
        return 128 + signal.SIGTERM
    import psutil  # noqa: F401  (imported now: a handler that imports can be re-entered by a second signal mid-import)

    child = subprocess.Popen(command)

    def end(signum, frame):
        for s in (signal.SIGTERM, signal.SIGINT):  # the parent's death can signal more than once
            signal.signal(s, signal.SIG_IGN)
        end_tree(child.pid)
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, end)
    signal.signal(signal.SIGINT, end)
    rc = child.wait()
    return 128 - rc if rc < 0 else rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
