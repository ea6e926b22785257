"""Whether a process on this host is still alive, for whoever must tell a live owner from a
dead one (a run's trainer, a worker, a corpus being tokenized)."""

from __future__ import annotations

import os
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host and has not died.

    A killed process whose parent has not reaped it yet (a zombie: ``gptdash train``
    killed from a shell whose parent is a container's init that never reaps) still
    answers signal 0, but it will never work again.
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (macOS) or it just went: signal 0 said it exists
    # "pid (comm) state ...": comm may hold spaces or parentheses, so split after the last ')'.
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")
