"""The queue is the runs table: claiming queued runs, owning them, and reaping dead owners.

Part of ``storage.store.RunStore``. A claimed run records its owner (worker name,
host, pid) and a heartbeat the owner renews; ``recover_orphans`` turns a run
whose owner is gone into ``interrupted`` so it can be resumed from its last
checkpoint (or restarted from step 0 when it saved none). Its ``finished_at`` is
its owner's last sign of life, not the moment someone noticed.

Each claim hands its owner the run's next fencing token, and declaring the owner gone
takes the next one too, so an owner that was only slow writes nothing more once it was
given up on (``storage.ownership``).

Runs resume themselves: declaring a run's owner gone also schedules it (``resume_after``,
after a back-off that grows with each automatic resume), unless a stop was asked of it or
its own limit is used up; then a free worker takes it as it takes a queued run
(``claim_auto_resume``; a run on Ray gets a new job, ``queue_auto_resume``), with an
``auto_resume`` event that says which attempt this is and why the last one ended. Only
this verdict schedules a resume: a run stopped, cancelled, failed or completed by its own
trainer, or aborted by a person, never resumes by itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
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
AUTO_RESUME_EVENT = "auto_resume"
_NO_SYNC = {"synchronize_session": False}
# Taking the run from its owner, by a claim or by declaring the owner gone: the owner's
# token no longer matches, so its next write is refused.
_NEXT_TOKEN = {"claim_token": Run.claim_token + 1}


@dataclass(frozen=True)
class Claim:
    """A run taken by a claim, and the fencing token its owner passes with every write."""

    run_id: int
    token: int


def _claimed(worker: str, host: str | None, pid: int | None) -> dict:
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
        return None, f"not resumed automatically: {_used(auto_resumes, max_auto_resumes)}"
    wait = AUTO_RESUME_BACKOFF_S[min(auto_resumes, len(AUTO_RESUME_BACKOFF_S) - 1)]
    return utcnow() + timedelta(seconds=wait), ""


def _used(auto_resumes: int, limit: int) -> str:
    if limit == 0:
        return "automatic resumes are off for it (max_auto_resumes 0)"
    return f"it resumed by itself {auto_resumes} time(s), its limit of {limit}"


def _ended_because(error: str | None) -> str:
    """The reason an attempt ended, from the error its verdict left (hints dropped)."""
    text = error or "its owner was lost"
    for hint in (RESUME_HINT, RESTART_HINT):
        text = text.removesuffix(f"; {hint}")
    return text


def _token(session: Session, run_id: int) -> int:
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
                    .values(_claimed(worker, host, pid)),
                    execution_options=_NO_SYNC,
                )
                if result.rowcount == 1:
                    return Claim(run_id, _token(session, run_id))

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
                .values(_claimed(job, host, pid)),
                execution_options=_NO_SYNC,
            )
            return _token(session, run_id) if result.rowcount == 1 else None

    def claim_run(self, run_id: int, worker: str, *, host: str, pid: int) -> int:
        """Take a queued run for this process (a run trained in the foreground); the claim's
        token. StorageError when the run is not queued: a worker took it first, or it is
        not waiting to be trained."""
        with Session(self.engine) as session, session.begin():
            result = session.execute(
                update(Run).where(Run.id == run_id, Run.status == RunStatus.QUEUED)
                .values(_claimed(worker, host, pid)),
                execution_options=_NO_SYNC,
            )
            if result.rowcount == 1:
                return _token(session, run_id)
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
        now = literal(utcnow(), Run.finished_at.type)
        ended = func.coalesce(Run.heartbeat_at, now) if was == RunStatus.RUNNING else now
        with Session(self.engine) as session, session.begin():
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
            last_sign = row.heartbeat_at or row.started_at or row.created_at
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

    def claim_auto_resume(self, worker: str, *, host: str, pid: int, default_limit: int,
                          pid_alive: Callable[[int], bool], dead_after_s: float
                          ) -> Claim | None:
        """Take the interrupted local run that has waited longest for its automatic resume,
        as ``claim_next_queued`` takes a queued one (the claim, or None).

        Its owner must be gone by ``owner_gone``'s test as this worker sees it. A run whose
        limit (its own, else ``default_limit``) is used up is not taken: its schedule is
        dropped and its error says so. The take is a compare-and-set on the run's token, so
        of workers racing for one run exactly one takes it, and records the ``auto_resume``
        event in the same transaction.
        """
        for row in self._due_auto_resumes(Executor.LOCAL):
            limit = default_limit if row.max_auto_resumes is None else row.max_auto_resumes
            if row.auto_resumes >= limit:
                self._give_up_auto_resume(row, _used(row.auto_resumes, limit))
                continue
            if owner_gone(row, host=host, pid_alive=pid_alive,
                          dead_after_s=dead_after_s) is None:
                continue  # its owner may still live: a second trainer must not start beside it
            if self._take_auto_resume(row, limit, _claimed(worker, host, pid)):
                with Session(self.engine) as session:
                    return Claim(row.id, _token(session, row.id))
        return None

    def queue_auto_resume(self, run_id: int, token: int, job: str, limit: int) -> bool:
        """Queue an interrupted Ray run for its new job ``job`` as an automatic resume,
        if it is still due with ``token`` (compare-and-set); whether this call did."""
        for row in self._due_auto_resumes(Executor.RAY, run_id=run_id):
            if row.claim_token == token and row.auto_resumes < limit:
                return self._take_auto_resume(
                    row, limit, {"status": RunStatus.QUEUED, "worker": job, "error": None,
                                 "finished_at": None, "resume_after": None})
        return False

    def give_up_auto_resume(self, run_id: int, limit: int) -> bool:
        """Drop the schedule of an interrupted run whose ``limit`` is used up (its error says
        so); whether this call did."""
        for row in self._due_auto_resumes(run_id=run_id):
            if row.auto_resumes >= limit:
                return self._give_up_auto_resume(row, _used(row.auto_resumes, limit))
        return False

    def _due_auto_resumes(self, executor: str | None = None, *,
                          run_id: int | None = None) -> list[Any]:
        """Interrupted runs whose automatic resume is due, longest waiting first."""
        stmt = (select(Run.id, Run.claim_token, Run.worker, Run.owner_host, Run.owner_pid,
                       Run.heartbeat_at, Run.started_at, Run.created_at, Run.error,
                       Run.last_step, Run.attempts, Run.auto_resumes, Run.max_auto_resumes)
                .where(Run.status == RunStatus.INTERRUPTED, Run.resume_after <= utcnow())
                .order_by(Run.resume_after, Run.id).limit(20))
        if executor is not None:
            stmt = stmt.where(Run.executor == executor)
        if run_id is not None:
            stmt = stmt.where(Run.id == run_id)
        with Session(self.engine) as session:
            return list(session.execute(stmt).all())

    def _take_auto_resume(self, row: Any, limit: int, values: dict) -> bool:
        """Move a due run (as read in ``row``) on with ``values`` and one more automatic
        resume, if nothing changed it since; with its ``auto_resume`` event."""
        message = (f"attempt {row.attempts + 1}, automatic resume {row.auto_resumes + 1} of "
                   f"{limit}: the previous attempt ended: {_ended_because(row.error)}")
        with Session(self.engine) as session, session.begin():
            result = session.execute(
                update(Run).where(Run.id == row.id, Run.claim_token == row.claim_token,
                                  Run.status == RunStatus.INTERRUPTED,
                                  Run.resume_after.is_not(None))
                .values(auto_resumes=Run.auto_resumes + 1, stop_requested=False, **values),
                execution_options=_NO_SYNC,
            )
            if result.rowcount != 1:
                return False
            # At the step the last attempt reached; the attempt moves it to the step it
            # starts from (RunStore.discard_after).
            session.add(Event(run_id=row.id, step=row.last_step, kind=AUTO_RESUME_EVENT,
                              message=message, wall_time=time.time()))
            return True

    def _give_up_auto_resume(self, row: Any, why_not: str) -> bool:
        note = f"not resumed automatically: {why_not}"
        error = f"{row.error}; {note}" if row.error else note
        with Session(self.engine) as session, session.begin():
            result = session.execute(
                update(Run).where(Run.id == row.id, Run.claim_token == row.claim_token,
                                  Run.status == RunStatus.INTERRUPTED,
                                  Run.resume_after.is_not(None))
                .values(resume_after=None, error=error),
                execution_options=_NO_SYNC,
            )
            return result.rowcount == 1

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
