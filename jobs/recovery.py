"""Who owns a running run, and turning runs whose owner is gone into ``interrupted``.

Every command that reads or changes runs calls ``recover_interrupted`` first, so a run's
state is true whether or not a dashboard was ever opened (where ``GPTDASH_RAY_ADDRESS`` is
set, ``jobs.ray_executor.reconcile`` goes before it: Ray knows why its job ended). An owner
is gone when it ran on this host and its process no longer exists, or, wherever it ran,
when its heartbeat is older than ``dead_after_s``. Kept free of torch and of the training
code, so the CLI's light commands can use it.

The same test keeps a run from getting a second owner: an interrupted run whose recorded
owner may still be alive is not resumed (``check_owner_gone``).
"""

from __future__ import annotations

import os
import socket

from gptcore.errors import GptdashError
from gptcore.processes import pid_alive
from storage.queue import owner_gone
from storage.status import RunStatus
from storage.store import RunRecord, RunStore

# A worker beats every few seconds; a minute of silence means it is gone.
DEFAULT_DEAD_AFTER_S = 60.0
# Owners beat every 5 s: one heard from within three beats may still be at work, whatever
# silence the process that declared it gone allowed it.
FRESH_BEAT_S = 15.0


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


def recover_interrupted(store: RunStore,
                        dead_after_s: float = DEFAULT_DEAD_AFTER_S) -> list[int]:
    """Mark runs left ``running`` by an owner that is gone as ``interrupted``; their ids.

    A run owned by a live process on this host, or by one elsewhere that still
    beats, is left alone.
    """
    return store.recover_orphans(host=this_host(), pid_alive=pid_alive,
                                 dead_after_s=dead_after_s)


def attempt_summary(run: RunRecord) -> str:
    """Which try at training the run this is, how many were automatic resumes after its
    owner was lost, and, while one is due, when it resumes by itself."""
    limit = ("the worker's limit" if run.max_auto_resumes is None
             else f"at most {run.max_auto_resumes}")
    text = f"attempt {run.attempts} (automatic resumes: {run.auto_resumes} of {limit})"
    if run.status == RunStatus.INTERRUPTED and run.resume_after is not None:
        text += f"; resumes by itself after {run.resume_after:%H:%M:%S} UTC"
    return text


def check_owner_gone(run: RunRecord, dead_after_s: float = FRESH_BEAT_S) -> None:
    """GptdashError while an interrupted run's recorded owner may still be alive: its process
    on this host exists, or, elsewhere, it was heard from within ``dead_after_s``.

    Only ``interrupted`` is someone else's verdict on the owner (a stopped, failed or
    completed run was ended by its owner itself). Its owner's writes are refused already
    (the verdict took the next fencing token); this also keeps a second trainer from
    starting while the first may still write its checkpoint files.
    """
    if run.status != RunStatus.INTERRUPTED or run.worker is None:  # no owner on record
        return
    if owner_gone(run, host=this_host(), pid_alive=pid_alive, dead_after_s=dead_after_s):
        return
    if run.owner_host == this_host() and run.owner_pid is not None:
        raise GptdashError(f"run {run.id}'s process ({run.worker}, pid {run.owner_pid} on "
                           "this host) is still alive and may still be training it: end that "
                           "process before resuming the run")
    where = f" on {run.owner_host}" if run.owner_host else ""
    raise GptdashError(f"run {run.id}'s owner {run.worker}{where} was heard from less than "
                       f"{dead_after_s:.0f} s ago and may still be training it: resume the "
                       "run once it has been silent that long")
