"""Sweeps: a named spec that a group of runs was made from; runs point to it by sweep_id.

Part of ``storage.store.RunStore``.
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy import Engine, func, select, text, update
from sqlalchemy.orm import Session

from storage.errors import StorageError
from storage.names import check_name
from storage.schema import Run, Sweep, utcnow

# PostgreSQL's advisory lock of a sweep is (this, sweep id): apart from the migration's.
_PG_SWEEP_LOCK = 0x73776570  # "swep"


@dataclass(frozen=True)
class SweepRecord:
    """A plain snapshot of one ``sweeps`` row."""

    id: int
    name: str
    created_at: datetime
    spec: dict
    cut: bool
    notes: str
    study: str | None = None  # a search sweep's Optuna study in this database
    told: int = 0  # its ended runs (number plus claims) when the study was last told

    @classmethod
    def from_row(cls, sweep: Sweep) -> SweepRecord:
        """Copy a loaded ``Sweep`` (with a fresh spec dict, detached from the ORM)."""
        return cls(id=sweep.id, name=sweep.name, created_at=sweep.created_at,
                   spec=dict(sweep.spec or {}), cut=bool(sweep.cut), notes=sweep.notes,
                   study=sweep.study, told=sweep.told or 0)


class SweepsMixin:
    """The ``sweeps`` table."""

    engine: Engine

    def create_sweep(self, name: str, spec: dict, *, cut: bool = False,
                     study: str | None = None) -> int:
        """Insert a sweep and return its id; its runs are created with ``sweep_id=`` it.
        ``study``: the Optuna study of a search sweep."""
        check_name(name, "sweep name")
        sweep = Sweep(name=name, spec=dict(spec), cut=cut, notes="", created_at=utcnow(),
                      study=study, told=0)
        with Session(self.engine) as session, session.begin():
            session.add(sweep)
            session.flush()
            return sweep.id

    def get_sweep(self, sweep_id: int) -> SweepRecord:
        """The sweep's row; StorageError if there is no such sweep."""
        with Session(self.engine) as session:
            sweep = session.get(Sweep, sweep_id)
            if sweep is None:
                raise StorageError(f"sweep {sweep_id} does not exist")
            return SweepRecord.from_row(sweep)

    def list_sweeps(self) -> list[SweepRecord]:
        """Every sweep, newest first."""
        stmt = select(Sweep).order_by(Sweep.created_at.desc(), Sweep.id.desc())
        with Session(self.engine) as session:
            return [SweepRecord.from_row(sweep) for sweep in session.scalars(stmt)]

    def search_sweeps(self) -> list[SweepRecord]:
        """The sweeps that are searches (they have a study), oldest first."""
        stmt = select(Sweep).where(Sweep.study.is_not(None)).order_by(Sweep.id)
        with Session(self.engine) as session:
            return [SweepRecord.from_row(sweep) for sweep in session.scalars(stmt)]

    def sweep_status_counts(self, sweep_id: int) -> dict[str, tuple[int, int]]:
        """For each status, how many of the sweep's runs are in it and how many times they
        were claimed in all (one grouped query): a resumed run that ended again changes it."""
        stmt = (select(Run.status, func.count(), func.coalesce(func.sum(Run.attempts), 0))
                .where(Run.sweep_id == sweep_id).group_by(Run.status))
        with Session(self.engine) as session:
            return {str(status): (int(n), int(claims))
                    for status, n, claims in session.execute(stmt)}

    def set_sweep_spec(self, sweep_id: int, spec: dict) -> None:
        """Replace the sweep's spec (a search records there that it was stopped)."""
        with Session(self.engine) as session, session.begin():
            session.execute(update(Sweep).where(Sweep.id == sweep_id).values(spec=dict(spec)))

    def set_sweep_told(self, sweep_id: int, told: int) -> None:
        """Record the mark of the sweep's ended runs its study was last told at."""
        with Session(self.engine) as session, session.begin():
            session.execute(update(Sweep).where(Sweep.id == sweep_id).values(told=told))

    @contextmanager
    def sweep_lock(self, sweep_id: int) -> Iterator[None]:
        """Hold the sweep for one process at a time (across processes and machines), while
        the block may write through other connections: on PostgreSQL an advisory lock on a
        connection of its own, on SQLite (one machine's file) a lock on a file beside it."""
        if self.engine.dialect.name == "postgresql":
            with self.engine.connect() as connection:
                connection.execute(text("SELECT pg_advisory_lock(:a, :b)"),
                                   {"a": _PG_SWEEP_LOCK, "b": sweep_id})
                try:
                    yield
                finally:
                    connection.execute(text("SELECT pg_advisory_unlock(:a, :b)"),
                                       {"a": _PG_SWEEP_LOCK, "b": sweep_id})
                    connection.commit()
            return
        database = self.engine.url.database
        if not database or database == ":memory:":  # one process's database: nobody else
            yield
            return
        with open(Path(f"{database}.sweep-{sweep_id}.lock"), "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
