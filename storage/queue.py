"""The queue is the runs table: claiming queued runs, owning them, and reaping dead owners.

Part of ``storage.store.RunStore``. A claimed run records its owner (worker name,
host, pid) and a heartbeat the owner renews; ``recover_orphans`` turns a run
whose owner is gone into ``interrupted`` so it can be resumed from its last
checkpoint (or restarted from step 0 when it saved none). Its ``finished_at`` is
its owner's last sign of life, not the moment someone noticed.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import Engine, case, func, literal, select, update
from sqlalchemy.orm import Session

from storage.errors import missing_run
from storage.runs import status_changes
from storage.schema import Run, utcnow
from storage.status import Executor, RunStatus

INTERRUPTED_ERROR = (
    "the server stopped while this run was training; resume it from its last checkpoint"
)
INTERRUPTED_NO_CHECKPOINT_ERROR = (
    "the server stopped while this run was training, before its first checkpoint; resume it "
    "to restart from step 0"
)
_NO_SYNC = {"synchronize_session": False}


def _claimed(worker: str, host: str | None, pid: int | None) -> dict:
    """The column values of a run that ``worker`` (``host``, ``pid``) has just taken."""
    now = utcnow()
    return {"status": RunStatus.RUNNING, "worker": worker, "owner_host": host,
            "owner_pid": pid, "heartbeat_at": now, "finished_at": None, "error": None,
            "started_at": func.coalesce(Run.started_at, literal(now, Run.started_at.type))}


class QueueMixin:
    """Claims, ownership and heartbeats of runs."""

    engine: Engine

    def claim_next_queued(self, worker: str, *, host: str | None = None,
                          pid: int | None = None) -> int | None:
        """Atomically take the oldest queued local run for ``worker``; its id, or None if none
        is queued. A run queued for Ray (``executor`` ``ray``) is its own Ray job's alone.

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
                    return run_id

    def claim_ray_run(self, run_id: int, job: str, *, host: str, pid: int) -> bool:
        """Take a run queued for Ray by the job it names (``worker`` = the job's submission
        id, set when it was queued); whether this call took it.

        False when the run is no longer queued for that job: cancelled meanwhile, resumed as
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
            return result.rowcount == 1

    def claim_run(self, run_id: int, worker: str, *, host: str, pid: int) -> None:
        """Mark a run as ``running`` and owned by this process (a run trained in the foreground)."""
        with Session(self.engine) as session, session.begin():
            result = session.execute(
                update(Run).where(Run.id == run_id).values(
                    **status_changes(RunStatus.RUNNING, None), worker=worker, owner_host=host,
                    owner_pid=pid, heartbeat_at=utcnow()),
                execution_options=_NO_SYNC,
            )
            if result.rowcount != 1:
                raise missing_run(run_id)

    def end_if_still(self, run_id: int, *, worker: str, was: str, status: str,
                     error: str) -> bool:
        """Move a run that is still ``was`` and still names ``worker`` to the final ``status``
        with ``error``; whether it did. A run that moved on meanwhile (it ended, or was
        queued again for someone else) is left alone. A run that was training ends at its
        owner's last heartbeat, as ``recover_orphans`` ends it."""
        now = literal(utcnow(), Run.finished_at.type)
        ended = func.coalesce(Run.heartbeat_at, now) if was == RunStatus.RUNNING else now
        with Session(self.engine) as session, session.begin():
            result = session.execute(
                update(Run).where(Run.id == run_id, Run.status == was, Run.worker == worker)
                .values(status=status, error=error, finished_at=ended),
                execution_options=_NO_SYNC,
            )
            return result.rowcount == 1

    def heartbeat(self, run_id: int) -> None:
        """The run's owner is alive now. Does nothing once the run is no longer running."""
        with Session(self.engine) as session, session.begin():
            session.execute(
                update(Run).where(Run.id == run_id, Run.status == RunStatus.RUNNING)
                .values(heartbeat_at=utcnow()),
                execution_options=_NO_SYNC,
            )

    def queued_ids(self) -> list[int]:
        """Ids of queued runs, oldest first (the order ``claim_next_queued`` takes them)."""
        with Session(self.engine) as session:
            return list(session.scalars(
                select(Run.id).where(Run.status == RunStatus.QUEUED).order_by(Run.id)
            ))

    def recover_orphans(self, *, host: str, pid_alive: Callable[[int], bool],
                        dead_after_s: float) -> list[int]:
        """Turn every ``running`` run whose owner is gone into ``interrupted``; return their ids.

        An owner is gone when it ran on ``host`` (this machine) and its pid is no
        longer alive, or, on any machine, when the run's last heartbeat (its
        start if it never beat) is more than ``dead_after_s`` seconds old. Each
        row changes only if it is still running with the heartbeat read here, so
        a run whose owner beats meanwhile is left alone. A dead Ray job's run is left to
        the Ray reconciler, which says why Ray's job ended, until its heartbeat is old too.
        """
        now = utcnow()
        columns = (Run.id, Run.worker, Run.owner_host, Run.owner_pid, Run.heartbeat_at,
                   Run.started_at, Run.created_at, Run.checkpoint_path, Run.executor)
        with Session(self.engine) as session:
            rows = session.execute(
                select(*columns).where(Run.status == RunStatus.RUNNING).order_by(Run.id)).all()
        recovered = []
        for row in rows:
            owner = row.worker or "an unknown worker"
            last_sign = row.heartbeat_at or row.started_at or row.created_at
            if row.executor == Executor.LOCAL and row.owner_host == host \
                    and row.owner_pid is not None and not pid_alive(row.owner_pid):
                cause = (f"the process training this run ({owner}, pid {row.owner_pid} on "
                         f"{host}) is gone")
            elif now - last_sign > timedelta(seconds=dead_after_s):
                cause = f"no heartbeat from {owner} for {(now - last_sign).total_seconds():.0f} s"
            else:
                continue
            then = (" resume it to continue from its last checkpoint" if row.checkpoint_path
                    else " it saved no checkpoint yet: resume it to restart from step 0")
            if self._interrupt_if_unchanged(row.id, row.heartbeat_at, f"{cause};{then}",
                                            finished_at=min(last_sign, now)):
                recovered.append(row.id)
        return recovered

    def _interrupt_if_unchanged(self, run_id: int, heartbeat_at: datetime | None,
                                error: str, *, finished_at: datetime) -> bool:
        """Interrupt the run if it is still running with this heartbeat (compare-and-set)."""
        same_beat = (Run.heartbeat_at.is_(None) if heartbeat_at is None
                     else Run.heartbeat_at == heartbeat_at)
        with Session(self.engine) as session, session.begin():
            result = session.execute(
                update(Run).where(Run.id == run_id, Run.status == RunStatus.RUNNING, same_beat)
                .values(status=RunStatus.INTERRUPTED, error=error, finished_at=finished_at),
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
                    .values(status=RunStatus.INTERRUPTED, error=error, finished_at=ended),
                    execution_options=_NO_SYNC,
                )
                if result.rowcount == 1:
                    marked.append(run_id)
        return marked
