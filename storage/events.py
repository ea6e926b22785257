"""Events: moments of a run worth a marker on its charts (spikes, roll-backs, early stops).

Part of ``storage.store.RunStore``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sqlalchemy import Engine, Row, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.errors import missing_run
from storage.ownership import writing
from storage.schema import Event

if TYPE_CHECKING:
    import pandas as pd

EVENT_COLUMNS = ["run_id", "step", "kind", "message", "wall_time"]


class EventsMixin:
    """The ``events`` table."""

    engine: Engine

    def log_event(self, run_id: int, step: int, kind: str, message: str,
                  wall_time: float | None = None, *, claim: int | None = None,
                  once: bool = False) -> None:
        """Record an event of ``kind`` (e.g. "spike") at ``step``; wall time defaults to now.
        With ``claim``, only while that claim owns the run. ``once``: not again when the same
        event (kind and message at that step) is there already: a write retried after its
        connection dropped, or a resumed attempt's evaluation at its checkpoint's step, which
        the attempt before it had made (and reported the same new best of) after saving."""
        event = Event(run_id=run_id, step=step, kind=kind, message=message,
                      wall_time=time.time() if wall_time is None else wall_time)
        with writing(self.engine, run_id, claim) as session:
            if once and session.scalar(
                    select(Event.id).where(Event.run_id == run_id, Event.step == step,
                                           Event.kind == kind, Event.message == message)
                    .limit(1)) is not None:
                return
            try:
                session.add(event)
                session.flush()
            except IntegrityError as exc:
                raise missing_run(run_id) from exc

    def event_count(self, run_ids: Sequence[int]) -> int:
        """How many events the runs have: one cheap query, so a live page re-reads the
        events only when this moves (a roll-back rewrites old steps, so new metric rows
        alone do not tell)."""
        if not run_ids:
            return 0
        stmt = select(func.count()).select_from(Event).where(Event.run_id.in_(list(run_ids)))
        with Session(self.engine) as session:
            return int(session.scalar(stmt) or 0)

    def event_rows(self, run_ids: Sequence[int]) -> list[Row]:
        """The runs' events as rows with attributes run_id, step, kind, message, wall_time,
        sorted by run then step: for the CLI, which should not wait for pandas."""
        stmt = (select(Event.run_id, Event.step, Event.kind, Event.message, Event.wall_time)
                .where(Event.run_id.in_(list(run_ids)))
                .order_by(Event.run_id, Event.step, Event.id))
        with Session(self.engine) as session:
            return list(session.execute(stmt).all()) if run_ids else []

    def events(self, run_ids: Sequence[int]) -> pd.DataFrame:
        """The runs' events (run_id, step, kind, message, wall_time), sorted by run then step."""
        import pandas as pd  # here, not at the top: `gptdash list` should not wait for pandas

        frame = pd.DataFrame.from_records(self.event_rows(run_ids), columns=EVENT_COLUMNS)
        return frame.astype({"run_id": "int64", "step": "int64", "wall_time": "float64"})
