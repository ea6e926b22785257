"""The queue is the runs table: claiming queued runs, owning them, and reaping dead owners.

Part of ``storage.store.RunStore``. A claimed run records its owner (worker name,
host, pid) and a heartbeat the owner renews; ``recover_orphans`` turns a run
whose owner is gone into ``interrupted`` so it can be resumed from its last
checkpoint (or restarted from step 0 when it saved none). Its ``finished_at`` is
its owner's last sign of life, not the moment someone noticed.

Each claim hands its owner the run's next fencing token, and declaring the owner gone
takes the next one too, so an owner that was only slow writes nothing more once it was
given up on (``storage.ownership``).

Declaring a run's owner gone also schedules its automatic resume (``auto_resume_plan``;
``storage.auto_resume`` takes it up).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, case, func, literal, select, update
from sqlalchemy.orm import Session

from storage.errors import StorageError, missing_run
from storage.schema import Event, Run, utcnow
from storage.status import ACTIVE, Executor, RunStatus

INTERRUPTED_ERROR = (
    "the server stopped while this run was training; resume it from its last checkpoint"
)
INTERRUPTED_NO_CHECKPOINT_ERROR = (
    "the server stopped while this run was training, before its first checkpoint; resume it "
    "to restart from step 0"
)
RESUME_HINT = "resume it to continue from its last checkpoint"
RESTART_HINT = "it saved no checkpoint yet: resume it to restart from step 0"
# The wait before the 1st, 2nd, 3rd and later automatic resume of a run. The first leaves
# a trainer that only lost the database (and trains on) time to take its run back.
AUTO_RESUME_BACKOFF_S = (10.0, 30.0, 90.0)
_NO_SYNC = {"synchronize_session": False}
# Taking the run from its owner, by a claim or by declaring the owner gone: the owner's
# token no longer matches, so its next write is refused.
_NEXT_TOKEN = {"claim_token": Run.claim_token + 1}
# The event of a run its stopping worker put back in the queue (``hand_back``).
HANDED_ON_EVENT = "handed_on"


@dataclass(frozen=True)
class Claim:
    """A run taken by a claim, and the fencing token its owner passes with every write."""

    run_id: int
    token: int


def claimed(worker: str, host: str | None, pid: int | None) -> dict:
    """The column values of a run that ``worker`` (``host``, ``pid``) has just taken."""
    now = utcnow()
    return {"status": RunStatus.RUNNING, "worker": worker, "owner_host": host,
            "owner_pid": pid, "heartbeat_at": now, "finished_at": None, "error": None,
            "started_at": func.coalesce(Run.started_at, literal(now, Run.started_at.type)),
            "attempts": Run.attempts + 1, "resume_after": None, **_NEXT_TOKEN}


def auto_resume_plan(auto_resumes: int, max_auto_resumes: int | None,
                     stop_requested: bool) -> tuple[datetime | None, str]:
    """For a run whose owner was just declared gone: when it resumes by itself (None: it
    does not), and, when it does not, why, for its error text.

    A run whose own limit (``max_auto_resumes``) is used up does not; one that leaves the
    limit to its worker is scheduled, and the worker that finds it decides.
    """
    if stop_requested:
        return None, "not resumed automatically: a stop was asked of it"
    if max_auto_resumes is not None and auto_resumes >= max_auto_resumes:
        return None, f"not resumed automatically: {used_up(auto_resumes, max_auto_resumes)}"
    wait = AUTO_RESUME_BACKOFF_S[min(auto_resumes, len(AUTO_RESUME_BACKOFF_S) - 1)]
    return utcnow() + timedelta(seconds=wait), ""


def used_up(auto_resumes: int, limit: int) -> str:
    """Why a run with ``auto_resumes`` of ``limit`` automatic resumes gets no more."""
    if limit == 0:
        return "automatic resumes are off for it (max_auto_resumes 0)"
    return f"it resumed by itself {auto_resumes} time(s), its limit of {limit}"


def current_token(session: Session, run_id: int) -> int:
    """The token a claim just gave the run, read in the claim's own transaction."""
    return session.scalar(select(Run.claim_token).where(Run.id == run_id))


def owner_gone(run: Any, *, host: str, pid_alive: Callable[[int], bool],
               dead_after_s: float, by_pid: bool = True) -> str | None:
    """Why the run's recorded owner is gone, for its error text; None while it may still
    be alive. ``run`` has the runs row's owner columns and timestamps.

    On ``host`` (this machine; with ``by_pid``) the owner's process decides: alive however
    late its heartbeat, gone as soon as it has exited. Elsewhere the owner is gone once its
    last sign of life (heartbeat, else start, else creation) is over ``dead_after_s`` old.
    """
    owner = run.worker or "an unknown worker"
    if by_pid and run.owner_host == host and run.owner_pid is not None:
        if pid_alive(run.owner_pid):
            return None
        return f"the process training this run ({owner}, pid {run.owner_pid} on {host}) is gone"
    silent = (utcnow() - (run.heartbeat_at or run.started_at or run.created_at)).total_seconds()
    return f"no heartbeat from {owner} for {silent:.0f} s" if silent > dead_after_s else None


def last_sign_of_life(heartbeat_at: datetime | None, checkpoint_path: str | None,
                      fallback: datetime) -> datetime:
    """When a dead owner was last known to work on its run: its last heartbeat (else
    ``fallback``), or its last checkpoint's write where that came later (the owner beats
    every few seconds; one saved after the last beat was part of the run's time, and the
    run must not seem to end before its own ``latest.pt``)."""
    last = heartbeat_at or fallback
    try:
        saved = datetime.fromtimestamp(os.stat(checkpoint_path).st_mtime, UTC)
    except (OSError, TypeError, ValueError):  # none yet, or on a folder this host lacks
        return last
    return max(last, saved)


class QueueMixin:
    """Claims, ownership and heartbeats of runs."""

    engine: Engine

    def claim_next_queued(self, worker: str, *, host: str | None = None,
                          pid: int | None = None) -> Claim | None:
        """Atomically take the oldest queued local run for ``worker``; the claim (its id and
        token), or None if none is queued. A run queued for Ray (``executor`` ``ray``) is its
        own Ray job's alone.

        The run becomes ``running``, owned by ``worker`` on ``host`` as ``pid``,
        with a fresh heartbeat. On PostgreSQL the SELECT locks the row it picks
        (``FOR UPDATE SKIP LOCKED``), so racing workers each take a different
        run without waiting. SQLite has no row locks (one writer at a time): there
        the UPDATE repeats ``status = 'queued'`` in its WHERE, so of two
        processes racing for one run exactly one sees rowcount 1 and the other
        tries the next queued run.
        """
        pick = (select(Run.id).where(Run.status == RunStatus.QUEUED,
                                     Run.executor == Executor.LOCAL)
                .order_by(Run.id).limit(1).with_for_update(skip_locked=True))
        while True:
            with Session(self.engine) as session, session.begin():
                run_id = session.scalar(pick)
                if run_id is None:
                    return None
                result = session.execute(
                    update(Run)
                    .where(Run.id == run_id, Run.status == RunStatus.QUEUED,
                           Run.executor == Executor.LOCAL)
                    .values(claimed(worker, host, pid)),
                    execution_options=_NO_SYNC,
                )
                if result.rowcount == 1:
                    return Claim(run_id, current_token(session, run_id))

    def claim_ray_run(self, run_id: int, job: str, *, host: str, pid: int) -> int | None:
        """Take a run queued for Ray by the job it names (``worker`` = the job's submission
        id, set when it was queued); the claim's token, or None when this call did not take it.

        None when the run is no longer queued for that job: cancelled meanwhile, resumed as
        a newer attempt, or already taken by this job's duplicate.
        """
        with Session(self.engine) as session, session.begin():
            result = session.execute(
                update(Run)
                .where(Run.id == run_id, Run.status == RunStatus.QUEUED,
                       Run.executor == Executor.RAY, Run.worker == job)
                .values(claimed(job, host, pid)),
                execution_options=_NO_SYNC,
            )
            return current_token(session, run_id) if result.rowcount == 1 else None

    def claim_run(self, run_id: int, worker: str, *, host: str, pid: int) -> int:
        """Take a queued run for this process (a run trained in the foreground); the claim's
        token. StorageError when the run is not queued: a worker took it first, or it is
        not waiting to be trained."""
        with Session(self.engine) as session, session.begin():
            result = session.execute(
                update(Run).where(Run.id == run_id, Run.status == RunStatus.QUEUED)
                .values(claimed(worker, host, pid)),
                execution_options=_NO_SYNC,
            )
            if result.rowcount == 1:
                return current_token(session, run_id)
            row = session.execute(select(Run.status, Run.worker).where(Run.id == run_id)).first()
        if row is None:
            raise missing_run(run_id)
        by = f" by {row.worker}" if row.status in ACTIVE and row.worker else ""
        raise StorageError(f"run {run_id} is {row.status}{by}, not queued: this process "
                           "cannot take it")

    def end_if_still(self, run_id: int, *, worker: str, was: str, status: str,
                     error: str, resume_after: datetime | None = None) -> bool:
        """Move a run that is still ``was`` and still names ``worker`` to the final ``status``
        with ``error`` (and, for ``interrupted``, its automatic resume's ``resume_after``);
        whether it did. A run that moved on meanwhile (it ended, or was queued again for
        someone else) is left alone. A run that was training ends at its owner's last
        heartbeat, as ``recover_orphans`` ends it."""
        now = utcnow()
        with Session(self.engine) as session, session.begin():
            ended = now
            if was == RunStatus.RUNNING:
                row = session.execute(select(Run.heartbeat_at, Run.checkpoint_path)
                                      .where(Run.id == run_id)).first()
                if row is not None:
                    ended = min(last_sign_of_life(row.heartbeat_at, row.checkpoint_path, now),
                                now)
            result = session.execute(
                update(Run).where(Run.id == run_id, Run.status == was, Run.worker == worker)
                .values(status=status, error=error, finished_at=ended,
                        resume_after=resume_after, **_NEXT_TOKEN),
                execution_options=_NO_SYNC,
            )
            return result.rowcount == 1

    def heartbeat(self, run_id: int, *, claim: int | None = None) -> None:
        """The run's owner is alive now. Does nothing once the run is no longer running, or
        with ``claim``, once that claim no longer owns it (a lost owner keeps no run alive)."""
        stmt = update(Run).where(Run.id == run_id, Run.status == RunStatus.RUNNING)
        if claim is not None:
            stmt = stmt.where(Run.claim_token == claim)
        with Session(self.engine) as session, session.begin():
            session.execute(stmt.values(heartbeat_at=utcnow()), execution_options=_NO_SYNC)

    def queued_ids(self) -> list[int]:
        """Ids of queued runs, oldest first (the order ``claim_next_queued`` takes them)."""
        with Session(self.engine) as session:
            return list(session.scalars(
                select(Run.id).where(Run.status == RunStatus.QUEUED).order_by(Run.id)
            ))

    def recover_orphans(self, *, host: str, pid_alive: Callable[[int], bool],
                        dead_after_s: float) -> list[int]:
        """Turn every ``running`` run whose owner is gone into ``interrupted``; return their ids.

        Gone as ``owner_gone`` says: on ``host`` (this machine) a local run's owner is gone
        once its pid is no longer alive (a live one that is only slow to beat keeps its
        run: interrupting it would take the run from a working trainer); elsewhere once the
        run's last heartbeat (its start if it never beat) is more than ``dead_after_s``
        seconds old. Each row changes only if it is still running with the heartbeat read
        here, so a run whose owner beats meanwhile is left alone. A dead Ray job's run is
        left to the Ray reconciler, which says why Ray's job ended, until its heartbeat is
        old too. An interrupted run's owner, should it still live, can write no more to it.
        """
        now = utcnow()
        columns = (Run.id, Run.worker, Run.owner_host, Run.owner_pid, Run.heartbeat_at,
                   Run.started_at, Run.created_at, Run.checkpoint_path, Run.executor,
                   Run.stop_requested, Run.auto_resumes, Run.max_auto_resumes)
        with Session(self.engine) as session:
            rows = session.execute(
                select(*columns).where(Run.status == RunStatus.RUNNING).order_by(Run.id)).all()
        recovered = []
        for row in rows:
            cause = owner_gone(row, host=host, pid_alive=pid_alive, dead_after_s=dead_after_s,
                               by_pid=row.executor == Executor.LOCAL)
            if cause is None:
                continue
            last_sign = last_sign_of_life(row.heartbeat_at, row.checkpoint_path,
                                          row.started_at or row.created_at)
            resume_after, why_not = auto_resume_plan(row.auto_resumes, row.max_auto_resumes,
                                                     row.stop_requested)
            then = RESUME_HINT if row.checkpoint_path else RESTART_HINT
            error = f"{cause}; {why_not}; {then}" if why_not else f"{cause}; {then}"
            if self._interrupt_if_unchanged(row.id, row.heartbeat_at, error,
                                            finished_at=min(last_sign, now),
                                            resume_after=resume_after):
                recovered.append(row.id)
        return recovered

    def _interrupt_if_unchanged(self, run_id: int, heartbeat_at: datetime | None,
                                error: str, *, finished_at: datetime,
                                resume_after: datetime | None) -> bool:
        """Interrupt the run if it is still running with this heartbeat (compare-and-set)."""
        same_beat = (Run.heartbeat_at.is_(None) if heartbeat_at is None
                     else Run.heartbeat_at == heartbeat_at)
        with Session(self.engine) as session, session.begin():
            result = session.execute(
                update(Run).where(Run.id == run_id, Run.status == RunStatus.RUNNING, same_beat)
                .values(status=RunStatus.INTERRUPTED, error=error, finished_at=finished_at,
                        resume_after=resume_after, **_NEXT_TOKEN),
                execution_options=_NO_SYNC,
            )
            return result.rowcount == 1

    def hand_back(self, run_id: int, claim: int, why: str) -> bool:
        """A run its worker stopped because the worker itself was stopping (Ctrl-C, SIGTERM,
        ``gptdash serve`` shutting down, a scheduler's pre-emption), not because a stop was
        asked of the run: put it back in the queue, where the next worker (this one
        restarted, or another) goes on with it from the checkpoint it just saved, with a
        ``handed_on`` event saying ``why``. Only while ``claim`` still owns the stopped run
        and nobody asked it to stop (compare-and-set); whether it changed. No automatic
        resume is spent on it: those are for runs whose owner died."""
        with Session(self.engine) as session, session.begin():
            row = session.execute(
                select(Run.status, Run.stop_requested, Run.claim_token, Run.last_step)
                .where(Run.id == run_id).with_for_update()).one_or_none()
            if (row is None or row.status != RunStatus.STOPPED or row.stop_requested
                    or row.claim_token != claim):
                return False
            session.execute(update(Run).where(Run.id == run_id)
                            .values(status=RunStatus.QUEUED, error=None, finished_at=None,
                                    resume_after=None, **_NEXT_TOKEN),
                            execution_options=_NO_SYNC)
            session.add(Event(run_id=run_id, step=row.last_step, kind=HANDED_ON_EVENT,
                              message=f"{why}; back in the queue for the next worker",
                              wall_time=time.time()))
            return True

    def mark_interrupted(self, *, worker_prefix: str | None = None) -> list[int]:
        """Turn runs left ``running`` by a dead process into ``interrupted``; return their ids.

        ``worker_prefix`` limits this to runs claimed by workers whose name
        starts with it (e.g. this host), leaving other machines' runs alone.
        """
        stmt = select(Run.id).where(Run.status == RunStatus.RUNNING).order_by(Run.id)
        if worker_prefix is not None:
            stmt = stmt.where(Run.worker.startswith(worker_prefix, autoescape=True))
        marked = []
        # Worded by whether the run has a checkpoint; it ended at its last heartbeat.
        error = case((Run.checkpoint_path.is_(None), INTERRUPTED_NO_CHECKPOINT_ERROR),
                     else_=INTERRUPTED_ERROR)
        ended = func.coalesce(Run.heartbeat_at, literal(utcnow(), Run.heartbeat_at.type))
        with Session(self.engine) as session, session.begin():
            for run_id in list(session.scalars(stmt)):
                # Re-check the status per row: the run may have finished meanwhile.
                result = session.execute(
                    update(Run)
                    .where(Run.id == run_id, Run.status == RunStatus.RUNNING)
                    .values(status=RunStatus.INTERRUPTED, error=error, finished_at=ended,
                            **_NEXT_TOKEN),
                    execution_options=_NO_SYNC,
                )
                if result.rowcount == 1:
                    marked.append(run_id)
        return marked
