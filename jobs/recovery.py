"""Who owns a running run, and turning runs whose owner is gone into ``interrupted``.

Every command that reads or changes runs calls ``recover_interrupted`` first, so a run's
state is true whether or not a dashboard was ever opened (where ``GPTDASH_RAY_ADDRESS`` is
set, ``jobs.ray_executor.reconcile`` goes before it: Ray knows why its job ended). An owner
is gone when it ran on this host and its process no longer exists, or, wherever it ran,
when its heartbeat is older than ``dead_after_s``. Kept free of torch and of the training
code, so the CLI's light commands can use it.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

from storage.store import RunStore

# A worker beats every few seconds; a minute of silence means it is gone.
DEFAULT_DEAD_AFTER_S = 60.0


def this_host() -> str:
    """This machine's name as an owner: ``$GPTDASH_HOST``, else the host name.

    Set GPTDASH_HOST where machines share a host name (containers, cloned VMs): a
    process id is checked only on the machine of the same name, so two machines with
    one name would take each other's live runs for dead ones.
    """
    return os.environ.get("GPTDASH_HOST") or socket.gethostname()


def worker_id() -> str:
    """This process's name as a run's owner: ``host:pid``."""
    return f"{this_host()}:{os.getpid()}"


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this host and has not died.

    A killed process whose parent has not reaped it yet (a zombie: ``gptdash train``
    killed from a shell whose parent is a container's init that never reaps) still
    answers signal 0, but it will never train again.
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


def recover_interrupted(store: RunStore,
                        dead_after_s: float = DEFAULT_DEAD_AFTER_S) -> list[int]:
    """Mark runs left ``running`` by an owner that is gone as ``interrupted``; their ids.

    A run owned by a live process on this host, or by one elsewhere that still
    beats, is left alone.
    """
    return store.recover_orphans(host=this_host(), pid_alive=pid_alive,
                                 dead_after_s=dead_after_s)
