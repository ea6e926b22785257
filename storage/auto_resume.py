"""Runs resume themselves: a run whose worker, machine or Ray job was lost is taken up again.

Part of ``storage.store.RunStore``. Declaring a run's owner gone (``storage.queue``) also
schedules its automatic resume (``runs.resume_after``, after a back-off that grows with each
one), unless a stop was asked of it or its own limit is used up. Then a free worker takes
it as it takes a queued run (``claim_auto_resume``; a run on Ray is queued for a new job,
``queue_auto_resume``), counting the attempt and recording an ``auto_resume`` event that
says which attempt this is and why the last one ended. Only that verdict schedules a
resume: a run stopped, cancelled, failed or completed by its own trainer, or aborted by a
person, never resumes by itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from storage.queue import (
    RESTART_HINT,
    RESUME_HINT,
    Claim,
    claimed,
    current_token,
    owner_gone,
    used_up,
)
from storage.schema import Event, Run, utcnow
from storage.status import Executor, RunStatus

AUTO_RESUME_EVENT = "auto_resume"
_NO_SYNC = {"synchronize_session": False}


def _ended_because(error: str | None) -> str:
    """The reason an attempt ended, from the error its verdict left (hints dropped)."""
    text = error or "its owner was lost"
    for hint in (RESUME_HINT, RESTART_HINT):
        text = text.removesuffix(f"; {hint}")
    return text



class AutoResumeMixin:
    """Taking up interrupted runs whose automatic resume is due."""

    engine: Engine

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
                self._give_up_auto_resume(row, used_up(row.auto_resumes, limit))
                continue
            if owner_gone(row, host=host, pid_alive=pid_alive,
                          dead_after_s=dead_after_s) is None:
                continue  # its owner may still live: a second trainer must not start beside it
            token = self._take_auto_resume(row, limit, claimed(worker, host, pid))
            if token is not None:
                return Claim(row.id, token)
        return None

    def queue_auto_resume(self, run_id: int, token: int, job: str, limit: int) -> bool:
        """Queue an interrupted Ray run for its new job ``job`` as an automatic resume,
        if it is still due with ``token`` (compare-and-set); whether this call did."""
        for row in self._due_auto_resumes(Executor.RAY, run_id=run_id):
            if row.claim_token == token and row.auto_resumes < limit:
                return self._take_auto_resume(
                    row, limit, {"status": RunStatus.QUEUED, "worker": job, "error": None,
                                 "finished_at": None, "resume_after": None}) is not None
        return False

    def give_up_auto_resume(self, run_id: int, limit: int) -> bool:
        """Drop the schedule of an interrupted run whose ``limit`` is used up (its error says
        so); whether this call did."""
        for row in self._due_auto_resumes(run_id=run_id):
            if row.auto_resumes >= limit:
                return self._give_up_auto_resume(row, used_up(row.auto_resumes, limit))
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

    def _take_auto_resume(self, row: Any, limit: int, values: dict) -> int | None:
        """Move a due run (as read in ``row``) on with ``values`` and one more automatic
        resume, if nothing changed it since, with its ``auto_resume`` event; the run's token
        then, or None when it had changed."""
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
                return None
            # At the step the last attempt reached; the attempt moves it to the step it
            # starts from (RunStore.discard_after).
            session.add(Event(run_id=row.id, step=row.last_step, kind=AUTO_RESUME_EVENT,
                              message=message, wall_time=time.time()))
            return current_token(session, row.id)

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
