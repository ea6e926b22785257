"""A run's status: one closed set every module imports, never string literals.

``RunStatus`` is a ``StrEnum``, so a member is stored as its plain value and equals it
(``RunStatus.QUEUED == "queued"``); rows read back as plain strings compare equal too.
"""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    """Where a run is in its life."""

    QUEUED = "queued"            # waiting for a worker
    RUNNING = "running"          # a worker trains it
    COMPLETED = "completed"      # reached max_steps (or an early stop rule)
    STOPPED = "stopped"          # a person (or the sweep's early cut) stopped it; resumable
    CANCELLED = "cancelled"      # removed from the queue before it started
    FAILED = "failed"            # an error ended it; the error column says which
    INTERRUPTED = "interrupted"  # its process died; resumable


STATUSES: tuple[RunStatus, ...] = tuple(RunStatus)
# Not finished yet: a live view refreshes, a Stop applies.
ACTIVE: frozenset[RunStatus] = frozenset({RunStatus.QUEUED, RunStatus.RUNNING})
# Ended: the run has a finished_at timestamp.
FINISHED: frozenset[RunStatus] = frozenset(STATUSES) - ACTIVE
# May be queued again: from its last checkpoint, or from step 0 when it never saved one.
RESUMABLE: frozenset[RunStatus] = frozenset(
    {RunStatus.STOPPED, RunStatus.CANCELLED, RunStatus.FAILED, RunStatus.INTERRUPTED})

# How often a run whose worker, machine or Ray job was lost resumes by itself when neither
# the run (``max_auto_resumes``) nor its worker (``--auto-resume``) says (storage.queue).
DEFAULT_AUTO_RESUMES = 3

WORKER_STATUSES = ("idle", "training", "stopped")


class Executor(StrEnum):
    """Who trains a queued run."""

    LOCAL = "local"  # any plain worker (`gptdash worker`, `gptdash serve`) or the CLI
    RAY = "ray"      # a Ray job of its own (`--on ray`); plain workers never claim it


EXECUTORS: tuple[Executor, ...] = tuple(Executor)
