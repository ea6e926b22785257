"""One owner at a time: the fencing token a claim gives its owner, and the check its writes make.

Every claim of a run takes the row's next ``claim_token`` and hands it to the claimer
(``storage.queue``); declaring the owner gone (``interrupted``) takes the next one too. The
owner passes its token (``claim=``) with each write, and that write's transaction first
re-checks that the row still carries it, locking the row until it commits (a row lock on
PostgreSQL, the write lock on SQLite). So a claim or a revocation lands either before the
write, which is then refused with ``ClaimLost``, or after it commits, never in between:
whatever the executor, only one process writes a run. Writes without a token (a person's
edit, a stop request) are not fenced.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, select, update
from sqlalchemy.orm import Session

from storage.errors import ClaimLost, StorageError, missing_run
from storage.schema import Run, utcnow
from storage.status import ACTIVE, RunStatus


@contextmanager
def writing(engine: Engine, run_id: int, claim: int | None) -> Iterator[Session]:
    """A session in one transaction for a write to ``run_id``; with ``claim``, the run is
    held first (``hold``), so the write happens only while that claim owns it."""
    with Session(engine) as session, session.begin():
        if claim is not None:
            hold(session, run_id, claim)
        yield session


def hold(session: Session, run_id: int, claim: int) -> None:
    """Lock the run's row for the rest of this transaction if ``claim`` still owns it;
    ClaimLost when another claim took it, RunMissing when it was deleted."""
    result = session.execute(
        update(Run).where(Run.id == run_id, Run.claim_token == claim)
        .values(claim_token=Run.claim_token),  # a write: it takes the row's lock
        execution_options={"synchronize_session": False},
    )
    if result.rowcount != 1:
        raise not_owned(session, run_id)


def check_owned(session: Session, run_id: int, claim: int) -> None:
    """ClaimLost (or RunMissing) unless ``claim`` owns the run now: a read, for an owner
    that polls between its writes (the trainer's stop-flag poll)."""
    if session.scalar(select(Run.claim_token).where(Run.id == run_id)) != claim:
        raise not_owned(session, run_id)


def not_owned(session: Session, run_id: int) -> StorageError:
    """The error for a write to a run that the writer's claim no longer owns."""
    row = session.execute(select(Run.status, Run.worker).where(Run.id == run_id)).first()
    if row is None:
        return missing_run(run_id)
    by = f" under {row.worker}" if row.status in ACTIVE and row.worker else ""
    return ClaimLost(f"run {run_id} is no longer this process's: it is {row.status}{by} now; "
                     "this process writes nothing more to it")


class OwnershipMixin:
    """What an owner does to keep its run through a database outage."""

    engine: Engine

    def beat_after_outage(self, run_id: int, claim: int) -> int:
        """The first write of an owner whose database was away: its heartbeat, and the token
        it owns the run by now.

        While ``claim`` still owns the run this is a heartbeat and returns ``claim``. A process
        that looked while the owner was silent may have declared it gone (``interrupted``,
        which takes the next token) although it trained on: when nobody has claimed the run
        since (its token is exactly one on, still ``interrupted``), the owner takes it back,
        ``running`` again under the token after that, which is returned. Otherwise the run
        is someone else's (ClaimLost) or gone (RunMissing).
        """
        now = utcnow()
        with Session(self.engine) as session, session.begin():
            beat = session.execute(
                update(Run).where(Run.id == run_id, Run.claim_token == claim,
                                  Run.status == RunStatus.RUNNING)
                .values(heartbeat_at=now), execution_options={"synchronize_session": False})
            if beat.rowcount == 1:
                return claim
            back = session.execute(
                update(Run).where(Run.id == run_id, Run.claim_token == claim + 1,
                                  Run.status == RunStatus.INTERRUPTED)
                .values(status=RunStatus.RUNNING, heartbeat_at=now, error=None,
                        finished_at=None, resume_after=None,
                        claim_token=Run.claim_token + 1),
                execution_options={"synchronize_session": False})
            if back.rowcount == 1:
                return claim + 2
            raise not_owned(session, run_id)
