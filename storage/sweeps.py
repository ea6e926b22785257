"""Sweeps: a named spec that a group of runs was made from; runs point to it by sweep_id.

Part of ``storage.store.RunStore``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from storage.errors import StorageError
from storage.names import check_name
from storage.schema import Sweep, utcnow


@dataclass(frozen=True)
class SweepRecord:
    """A plain snapshot of one ``sweeps`` row."""

    id: int
    name: str
    created_at: datetime
    spec: dict
    cut: bool
    notes: str

    @classmethod
    def from_row(cls, sweep: Sweep) -> SweepRecord:
        """Copy a loaded ``Sweep`` (with a fresh spec dict, detached from the ORM)."""
        return cls(id=sweep.id, name=sweep.name, created_at=sweep.created_at,
                   spec=dict(sweep.spec or {}), cut=bool(sweep.cut), notes=sweep.notes)


class SweepsMixin:
    """The ``sweeps`` table."""

    engine: Engine

    def create_sweep(self, name: str, spec: dict, *, cut: bool = False) -> int:
        """Insert a sweep and return its id; its runs are created with ``sweep_id=`` it."""
        check_name(name, "sweep name")
        sweep = Sweep(name=name, spec=dict(spec), cut=cut, notes="", created_at=utcnow())
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
