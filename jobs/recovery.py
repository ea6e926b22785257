"""Who owns a running run, and turning runs whose owner is gone into ``interrupted``.

Every command that reads or changes runs calls ``recover_interrupted`` first, so
a run's state is true whether or not a dashboard was ever opened. Kept free of
torch and of the training code, so the CLI's light commands can use it.
"""

from __future__ import annotations

import os
import socket

from storage.store import RunStore


def worker_id() -> str:
    """This process's name as a run's owner: ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def recover_interrupted(store: RunStore) -> list[int]:
    """Mark runs left ``running`` by a process that no longer exists as ``interrupted``.

    A run claimed by a live process on this host (another server, a CLI) is left alone.
    """
    host = socket.gethostname()
    found = []
    for run in store.list_runs(status="running"):
        owner_host, _, pid = (run.worker or "").partition(":")
        if owner_host == host and pid.isdigit() and _pid_alive(int(pid)):
            continue
        store.set_status(run.id, "interrupted",
                         error=f"the process training this run ({run.worker}) is gone; "
                               "resume it to continue from its last checkpoint")
        found.append(run.id)
    return found
