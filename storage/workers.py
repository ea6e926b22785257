"""Workers: the processes that claim and train queued runs, each with its heartbeat.

Part of ``storage.store.RunStore``. A worker's name is unique (e.g. ``host:pid``);
registering the same name again takes the row over.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import datetime

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.errors import StorageError
from storage.schema import Worker, utcnow
from storage.status import WORKER_STATUSES


@dataclass(frozen=True)
class WorkerRecord:
    """A plain snapshot of one ``workers`` row."""

    name: str
    host: str
    pid: int
    device: str | None
    status: str
    current_run_id: int | None
    started_at: datetime
    heartbeat_at: datetime

    @classmethod
    def from_row(cls, worker: Worker) -> WorkerRecord:
        """Copy a loaded ``Worker`` into a record."""
        return cls(**{f.name: getattr(worker, f.name) for f in fields(cls)})


class WorkersMixin:
    """The ``workers`` table."""

    engine: Engine

    def register_worker(self, name: str, *, host: str, pid: int, device: str | None) -> None:
        """Record that worker ``name`` started now and is idle (replacing a row of that name)."""
        now = utcnow()
        worker = Worker(name=name, host=host, pid=pid, device=device, status="idle",
                        current_run_id=None, started_at=now, heartbeat_at=now)
        with Session(self.engine) as session, session.begin():
            session.merge(worker)

    def take_worker_name(self, name: str, *, host: str, pid: int, dead_after_s: float,
                         gone: Callable[[WorkerRecord], bool] | None = None) -> None:
        """Register worker ``name`` for this process (``host``, ``pid``), unless a live
        worker holds the name: StorageError then, saying which.

        A holder is live while it is not stopped, has beaten within ``dead_after_s``, and
        ``gone`` (e.g. "its pid on this host has died") does not say otherwise. Of two
        processes taking one name at once, one wins: the take-over only changes the row
        while it still names the holder that was read, and an insert fails on the key.
        """
        now = utcnow()
        row = {"host": host, "pid": pid, "device": None, "status": "idle", "current_run_id": None,
               "started_at": now, "heartbeat_at": now}
        with Session(self.engine) as session, session.begin():
            held = session.get(Worker, name)
            if held is None:
                session.add(Worker(name=name, **row))
                try:
                    session.flush()
                    return
                except IntegrityError:
                    raise _name_taken(name, None) from None
            holder = WorkerRecord.from_row(held)
            age = (now - holder.heartbeat_at).total_seconds()
            if (holder.status != "stopped" and age < dead_after_s
                    and not (gone is not None and gone(holder))):
                raise _name_taken(name, holder, age)
            result = session.execute(
                update(Worker).where(Worker.name == name, Worker.host == holder.host,
                                     Worker.pid == holder.pid).values(**row),
                execution_options={"synchronize_session": False})
            if result.rowcount != 1:
                raise _name_taken(name, None)

    def worker_beat(self, name: str, *, status: str, current_run_id: int | None) -> None:
        """The worker is alive now, in ``status`` (idle, training, stopped), on that run."""
        if status not in WORKER_STATUSES:
            raise ValueError(f"unknown worker status {status!r}; "
                             f"expected one of {', '.join(WORKER_STATUSES)}")
        self._update_worker(name, status=status, current_run_id=current_run_id)

    def worker_stopped(self, name: str) -> None:
        """The worker has exited cleanly: stopped, with no current run."""
        self._update_worker(name, status="stopped", current_run_id=None)

    def workers(self) -> list[WorkerRecord]:
        """Every worker ever registered, by name."""
        with Session(self.engine) as session:
            return [WorkerRecord.from_row(w)
                    for w in session.scalars(select(Worker).order_by(Worker.name))]

    def _update_worker(self, name: str, **changes: object) -> None:
        stmt = (update(Worker).where(Worker.name == name)
                .values(heartbeat_at=utcnow(), **changes))
        with Session(self.engine) as session, session.begin():
            result = session.execute(stmt, execution_options={"synchronize_session": False})
            if result.rowcount != 1:
                raise StorageError(f"worker {name!r} is not registered")


def _name_taken(name: str, holder: WorkerRecord | None, age: float = 0.0) -> StorageError:
    who = (f" ({holder.host} pid {holder.pid}, last heartbeat {age:.0f} s ago)"
           if holder is not None else " (it started just now)")
    return StorageError(f"worker name {name!r} is in use by a live worker{who}: choose another "
                        "--name, or stop that worker first")
