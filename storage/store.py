"""RunStore: every read and write of runs, metrics and samples goes through here.

Each method opens its own short Session and closes it, so one store object
can be shared by the training thread (the one writer) and any number of page
threads (readers) without sharing a session between threads.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import (
    BigInteger,
    Row,
    Select,
    String,
    bindparam,
    cast,
    delete,
    func,
    insert,
    literal,
    or_,
    select,
    union,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from storage.errors import StorageError
from storage.home import checkpoints_dir, db_url
from storage.schema import (
    FINISHED_STATUSES,
    STATUSES,
    Base,
    Metric,
    Run,
    Sample,
    make_engine,
    utcnow,
)

INTERRUPTED_ERROR = (
    "the server stopped while this run was training; resume it from its last checkpoint"
)
METRIC_COLUMNS = ["run_id", "key", "step", "value", "wall_time"]
METRIC_DTYPES = {"run_id": "int64", "key": "object", "step": "int64", "value": "float64",
                 "wall_time": "float64"}
RUNS_FRAME_COLUMNS = ["id", "name", "status", "tags", "created_at", "duration_s", "last_step",
                      "max_steps", "tokens_seen", "best_val_loss", "last_train_loss", "n_params",
                      "device", "parent_id"]
SAMPLE_COLUMNS = ["step", "prompt", "text", "created_at"]

# Core table objects: bulk metric reads and writes skip the ORM's per-row work.
_metrics = Metric.__table__
# Every column a caller may change through update_run (the primary key stays fixed).
_UPDATABLE = frozenset(c.key for c in Run.__table__.columns) - {"id"}


@dataclass(frozen=True)
class RunRecord:
    """A plain snapshot of one ``runs`` row, safe to keep after the session closes."""

    id: int
    name: str
    status: str
    config: dict
    tags: list[str]
    notes: str
    device: str | None
    n_params: int | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    stop_requested: bool
    checkpoint_path: str | None
    parent_id: int | None
    worker: str | None
    last_step: int
    max_steps: int
    tokens_seen: int
    best_val_loss: float | None
    last_train_loss: float | None

    @property
    def duration_s(self) -> float | None:
        """Seconds from start to finish, or to now while the run has not finished."""
        if self.started_at is None:
            return None
        return ((self.finished_at or utcnow()) - self.started_at).total_seconds()

    @classmethod
    def from_row(cls, run: Run) -> RunRecord:
        """Copy a loaded ``Run`` into a record (fresh dict and list, detached from the ORM)."""
        values = {f.name: getattr(run, f.name) for f in fields(cls)}
        values["config"] = dict(run.config or {})
        values["tags"] = list(run.tags or [])
        return cls(**values)


def _check_status(status: str) -> None:
    if status not in STATUSES:
        raise ValueError(f"unknown run status {status!r}; expected one of {', '.join(STATUSES)}")


def _status_changes(status: str, error: str | None) -> dict[str, Any]:
    """The column values that moving a run to ``status`` implies (see ``set_status``)."""
    _check_status(status)
    now = utcnow()
    changes: dict[str, Any] = {
        "status": status,
        "error": error,
        "finished_at": now if status in FINISHED_STATUSES else None,
    }
    if status == "running":
        # Only the first start counts, so a resumed run keeps its original start time.
        changes["started_at"] = func.coalesce(Run.started_at, literal(now, Run.started_at.type))
    if status == "queued":
        changes["stop_requested"] = False
    return changes


def _missing(run_id: int) -> StorageError:
    return StorageError(f"run {run_id} does not exist")


def _metric_frame(rows: Sequence[Sequence[Any]]) -> pd.DataFrame:
    """Build the long-format frame column by column (several times faster than from_records)."""
    columns = list(zip(*rows, strict=True)) if rows else [()] * len(METRIC_COLUMNS)
    # np.array(dtype=float64) also turns the NULL that SQLite stores for a NaN back into NaN.
    return pd.DataFrame({name: np.array(values, dtype=METRIC_DTYPES[name])
                         for name, values in zip(METRIC_COLUMNS, columns, strict=True)})


class RunStore:
    """Runs, metrics and samples in one SQLAlchemy database (SQLite by default)."""

    def __init__(self, url: str | None = None) -> None:
        """Connect to ``url`` (default: the home folder's SQLite file) and create missing tables."""
        self.url = url or db_url()
        self.engine = make_engine(self.url)
        Base.metadata.create_all(self.engine)

    def close(self) -> None:
        """Close the pooled connections (the store may still be used; it reconnects)."""
        self.engine.dispose()

    # ---- runs -------------------------------------------------------------------------------

    def create_run(
        self,
        name: str,
        config: dict,
        *,
        tags: Iterable[str] = (),
        notes: str = "",
        parent_id: int | None = None,
        status: str = "queued",
        max_steps: int = 0,
        n_params: int | None = None,
    ) -> int:
        """Insert a run and return its id. A run created as ``running`` starts its clock now."""
        _check_status(status)
        now = utcnow()
        run = Run(
            name=name,
            config=dict(config),
            tags=[str(t) for t in tags],
            notes=notes,
            parent_id=parent_id,
            status=status,
            max_steps=max_steps,
            n_params=n_params,
            created_at=now,
            started_at=now if status == "running" else None,
            finished_at=now if status in FINISHED_STATUSES else None,
            stop_requested=False,
            last_step=0,
            tokens_seen=0,
        )
        with Session(self.engine) as session, session.begin():
            if parent_id is not None and session.get(Run, parent_id) is None:
                raise StorageError(f"parent run {parent_id} does not exist")
            session.add(run)
            session.flush()
            return run.id

    def get_run(self, run_id: int) -> RunRecord:
        """The run's current row; StorageError if there is no such run."""
        with Session(self.engine) as session:
            run = session.get(Run, run_id)
            if run is None:
                raise _missing(run_id)
            return RunRecord.from_row(run)

    def update_run(self, run_id: int, **changes: Any) -> None:
        """Set any columns of a run, e.g. ``update_run(3, last_step=100, device="cuda")``.

        A ``status`` among the changes follows the rules of ``set_status``
        (timestamps, error, stop flag) unless those columns are given too.
        """
        unknown = sorted(set(changes) - _UPDATABLE)
        if unknown:
            raise ValueError(f"runs has no updatable column(s) {', '.join(unknown)}")
        if "tags" in changes:
            changes["tags"] = [str(t) for t in changes["tags"]]
        if "status" in changes:
            changes = {**_status_changes(changes["status"], changes.get("error")), **changes}
        if not changes:
            self.get_run(run_id)  # still report a missing run
            return
        self._update(run_id, **changes)

    def set_status(self, run_id: int, status: str, *, error: str | None = None) -> None:
        """Move a run to ``status`` and keep its timestamps and error text consistent.

        ``running`` sets started_at (first time only); a finished status sets
        finished_at and ``error``; ``running`` or ``queued`` clear finished_at
        and error. ``queued`` also clears an old stop request, so a run that
        was stopped and queued again does not stop at once.
        """
        self._update(run_id, **_status_changes(status, error))

    def _update(self, run_id: int, **changes: Any) -> None:
        stmt = update(Run).where(Run.id == run_id).values(**changes)
        with Session(self.engine) as session, session.begin():
            result = session.execute(stmt, execution_options={"synchronize_session": False})
            if result.rowcount != 1:
                raise _missing(run_id)

    def _runs_matching(
        self,
        columns: list[Any],
        tags_of: Callable[[Row], list[str] | None],
        status: str | Sequence[str] | None,
        tag: str | None,
        text: str | None,
        ids: Sequence[int] | None,
        limit: int | None,
    ) -> list[Row]:
        """Rows of ``select(*columns)`` for the runs matching every filter, newest first."""
        stmt = select(*columns).order_by(Run.created_at.desc(), Run.id.desc())
        if status is not None:
            stmt = stmt.where(Run.status.in_([status] if isinstance(status, str) else list(status)))
        if ids is not None:
            stmt = stmt.where(Run.id.in_(list(ids)))
        # Tags are a JSON list, searched as their stored text so it works on any backend.
        tags_text = cast(Run.tags, String)
        if tag is not None:
            # Only a prefilter ("a" also finds 'x"a'); the exact check follows below.
            stmt = stmt.where(tags_text.contains(json.dumps(tag, ensure_ascii=False),
                                                 autoescape=True))
        elif limit is not None:
            stmt = stmt.limit(limit)
        if text:
            escaped = json.dumps(text, ensure_ascii=False)[1:-1]  # as it appears in the JSON
            stmt = stmt.where(or_(
                Run.name.icontains(text, autoescape=True),
                Run.notes.icontains(text, autoescape=True),
                tags_text.icontains(escaped, autoescape=True),
            ))
        with Session(self.engine) as session:
            rows = session.execute(stmt).all()
        if tag is not None:
            rows = [row for row in rows if tag in (tags_of(row) or [])][:limit]
        return rows

    def list_runs(
        self,
        *,
        status: str | Sequence[str] | None = None,
        tag: str | None = None,
        text: str | None = None,
        ids: Sequence[int] | None = None,
        limit: int | None = None,
    ) -> list[RunRecord]:
        """Runs matching every given filter, newest first.

        ``status`` is one status or several; ``tag`` must be one of the run's
        tags exactly; ``text`` is found in name, notes or tags ignoring case.
        """
        rows = self._runs_matching([Run], lambda row: row.Run.tags,
                                   status, tag, text, ids, limit)
        return [RunRecord.from_row(row.Run) for row in rows]

    def runs_frame(
        self,
        *,
        status: str | Sequence[str] | None = None,
        tag: str | None = None,
        text: str | None = None,
        ids: Sequence[int] | None = None,
        limit: int | None = None,
    ) -> pd.DataFrame:
        """One row per run for the Runs table, with the filters of ``list_runs``, in one query.

        Columns: id, name, status, tags (comma-joined), created_at, duration_s,
        last_step, max_steps, tokens_seen, best_val_loss, last_train_loss,
        n_params, device, parent_id.
        """
        columns = [Run.id, Run.name, Run.status, Run.tags, Run.created_at, Run.started_at,
                   Run.finished_at, Run.last_step, Run.max_steps, Run.tokens_seen,
                   Run.best_val_loss, Run.last_train_loss, Run.n_params, Run.device,
                   Run.parent_id]
        rows = self._runs_matching(columns, lambda row: row.tags, status, tag, text, ids, limit)
        frame = pd.DataFrame({col.key: [row[i] for row in rows]
                              for i, col in enumerate(columns)})
        frame["tags"] = frame["tags"].map(lambda tags: ", ".join(tags or []))
        for col in ("created_at", "started_at", "finished_at"):
            # One fixed unit: a column of only NaT would otherwise get a coarser one.
            frame[col] = pd.to_datetime(frame[col], utc=True).dt.as_unit("us")
        ended = frame["finished_at"].fillna(pd.Timestamp(utcnow()))
        frame["duration_s"] = (ended - frame["started_at"]).dt.total_seconds()
        frame = frame.astype({"id": "int64", "last_step": "int64", "max_steps": "int64",
                              "tokens_seen": "int64", "n_params": "Int64", "parent_id": "Int64",
                              "best_val_loss": "float64", "last_train_loss": "float64"})
        return frame[RUNS_FRAME_COLUMNS]

    def delete_run(self, run_id: int) -> None:
        """Delete a run with its metrics, samples and checkpoint folder.

        Runs resumed or fine-tuned from it stay, with ``parent_id`` set to NULL.
        """
        with Session(self.engine) as session, session.begin():
            if session.get(Run, run_id) is None:
                raise _missing(run_id)
            # Explicit deletes, so this works even where foreign keys are not enforced.
            session.execute(delete(Sample).where(Sample.run_id == run_id))
            session.execute(delete(_metrics).where(_metrics.c.run_id == run_id))
            session.execute(update(Run).where(Run.parent_id == run_id).values(parent_id=None),
                            execution_options={"synchronize_session": False})
            session.execute(delete(Run).where(Run.id == run_id),
                            execution_options={"synchronize_session": False})
        remove_run_folder(run_id)

    # ---- stop requests and the queue ----------------------------------------------------------

    def request_stop(self, run_id: int) -> None:
        """Ask the trainer of this run to stop at its next poll."""
        self._update(run_id, stop_requested=True)

    def stop_requested(self, run_id: int) -> bool:
        """Whether a stop was requested. A run deleted while training also reads as stopped."""
        with Session(self.engine) as session:
            flag = session.scalar(select(Run.stop_requested).where(Run.id == run_id))
        return True if flag is None else bool(flag)

    def claim_next_queued(self, worker: str) -> int | None:
        """Atomically take the oldest queued run for ``worker``; its id, or None if none is queued.

        The UPDATE repeats ``status = 'queued'`` in its WHERE, so when two
        processes race for the same run exactly one sees rowcount 1; the other
        tries the next queued run.
        """
        while True:
            with Session(self.engine) as session, session.begin():
                run_id = session.scalar(
                    select(Run.id).where(Run.status == "queued").order_by(Run.id).limit(1)
                )
                if run_id is None:
                    return None
                now = literal(utcnow(), Run.started_at.type)
                result = session.execute(
                    update(Run)
                    .where(Run.id == run_id, Run.status == "queued")
                    .values(status="running", worker=worker, finished_at=None, error=None,
                            started_at=func.coalesce(Run.started_at, now)),
                    execution_options={"synchronize_session": False},
                )
                if result.rowcount == 1:
                    return run_id

    def queued_ids(self) -> list[int]:
        """Ids of queued runs, oldest first (the order ``claim_next_queued`` takes them)."""
        with Session(self.engine) as session:
            return list(session.scalars(
                select(Run.id).where(Run.status == "queued").order_by(Run.id)
            ))

    def mark_interrupted(self, *, worker_prefix: str | None = None) -> list[int]:
        """Turn runs left ``running`` by a dead process into ``interrupted``; return their ids.

        ``worker_prefix`` limits this to runs claimed by workers whose name
        starts with it (e.g. this host), leaving other machines' runs alone.
        """
        stmt = select(Run.id).where(Run.status == "running").order_by(Run.id)
        if worker_prefix is not None:
            stmt = stmt.where(Run.worker.startswith(worker_prefix, autoescape=True))
        marked = []
        with Session(self.engine) as session, session.begin():
            for run_id in list(session.scalars(stmt)):
                # Re-check the status per row: the run may have finished meanwhile.
                result = session.execute(
                    update(Run)
                    .where(Run.id == run_id, Run.status == "running")
                    .values(status="interrupted", error=INTERRUPTED_ERROR, finished_at=utcnow()),
                    execution_options={"synchronize_session": False},
                )
                if result.rowcount == 1:
                    marked.append(run_id)
        return marked

    # ---- metrics --------------------------------------------------------------------------------

    def log_metrics(self, run_id: int, rows: Iterable[tuple[str, int, float, float]]) -> None:
        """Write ``(key, step, value, wall_time)`` rows in one transaction.

        A row for an existing (run, key, step) replaces it; within one call the
        last row for a (key, step) wins.
        """
        # Deduplicate first: one multi-row upsert may not touch the same row twice (PostgreSQL).
        latest = {(key, int(step)): (float(value), float(wall)) for key, step, value, wall in rows}
        if not latest:
            return
        params = [{"run_id": run_id, "key": key, "step": step, "value": value, "wall_time": wall}
                  for (key, step), (value, wall) in latest.items()]
        dialect = self.engine.dialect.name
        with Session(self.engine) as session, session.begin():
            try:
                if dialect in ("sqlite", "postgresql"):
                    dialect_insert = sqlite.insert if dialect == "sqlite" else postgresql.insert
                    stmt = dialect_insert(_metrics)
                    stmt = stmt.on_conflict_do_update(
                        index_elements=["run_id", "key", "step"],
                        set_={"value": stmt.excluded.value, "wall_time": stmt.excluded.wall_time},
                    )
                    session.execute(stmt, params)
                else:
                    c = _metrics.c
                    session.execute(
                        delete(_metrics).where(c.run_id == bindparam("b_run"),
                                               c.key == bindparam("b_key"),
                                               c.step == bindparam("b_step")),
                        [{"b_run": run_id, "b_key": p["key"], "b_step": p["step"]}
                         for p in params],
                    )
                    session.execute(insert(_metrics), params)
            except IntegrityError as exc:
                raise _missing(run_id) from exc

    def log_sample(self, run_id: int, step: int, prompt: str, text: str) -> None:
        """Record text generated from ``prompt`` at ``step``."""
        with Session(self.engine) as session, session.begin():
            try:
                session.add(Sample(run_id=run_id, step=step, prompt=prompt, text=text,
                                   created_at=utcnow()))
                session.flush()
            except IntegrityError as exc:
                raise _missing(run_id) from exc

    def samples(self, run_id: int) -> pd.DataFrame:
        """The run's samples, newest step first: columns step, prompt, text, created_at."""
        stmt = (select(Sample.step, Sample.prompt, Sample.text, Sample.created_at)
                .where(Sample.run_id == run_id)
                .order_by(Sample.step.desc(), Sample.id.desc()))
        with Session(self.engine) as session:
            rows = session.execute(stmt).all()
        frame = pd.DataFrame.from_records(rows, columns=SAMPLE_COLUMNS)
        frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True)
        return frame.astype({"step": "int64"})

    def metric_keys(self, run_ids: Sequence[int]) -> list[str]:
        """The metric keys any of these runs has logged, sorted."""
        keys: set[str] = set()
        with Session(self.engine) as session:
            for run_id in dict.fromkeys(run_ids):
                keys.update(session.scalars(_distinct_keys(run_id)))
        return sorted(keys)

    def metrics(
        self,
        run_ids: Sequence[int],
        keys: Sequence[str] | None = None,
        *,
        after_step: int | None = None,
        max_step: int | None = None,
    ) -> pd.DataFrame:
        """Metrics in long format (run_id, key, step, value, wall_time), sorted by run, key, step.

        ``after_step`` keeps only steps after it (exclusive), for reading just
        what is new since the last refresh; ``max_step`` is inclusive.
        """
        if not run_ids or (keys is not None and not keys):
            return _metric_frame([])
        c = _metrics.c
        stmt = select(c.run_id, c.key, c.step, c.value, c.wall_time).where(
            c.run_id.in_(list(run_ids)))
        if keys is not None:
            stmt = stmt.where(c.key.in_(list(keys)))
        if after_step is not None:
            stmt = stmt.where(c.step > after_step)
        if max_step is not None:
            stmt = stmt.where(c.step <= max_step)
        stmt = stmt.order_by(c.run_id, c.key, c.step)
        with Session(self.engine) as session:
            return _metric_frame(session.execute(stmt).all())

    def metrics_downsampled(
        self,
        run_ids: Sequence[int],
        key: str,
        *,
        buckets: int = 2000,
        min_step: int | None = None,
        max_step: int | None = None,
    ) -> pd.DataFrame:
        """One metric of several runs, thinned for plotting without losing spikes.

        A run with at most ``2 * buckets`` points in [min_step, max_step]
        comes back whole. A longer one is cut into ``buckets`` equal-width
        step ranges and each range keeps its lowest and its highest point,
        plus the run's first and last point, so no spike disappears. The work
        happens in SQL over the (run_id, key, step) index. Same columns as
        ``metrics``, sorted by run_id then step.
        """
        c = _metrics.c
        series = [c.key == key]
        if min_step is not None:
            series.append(c.step >= min_step)
        if max_step is not None:
            series.append(c.step <= max_step)
        cap = 2 * buckets
        frames = []
        with Session(self.engine) as session:
            small, large = [], []
            for run_id in dict.fromkeys(run_ids):
                count, lo, hi = session.execute(_extent(run_id, series, cap)).one()
                if count > cap:
                    large.append((run_id, lo, hi))
                elif count:
                    small.append(run_id)
            if small:
                stmt = (select(c.run_id, c.key, c.step, c.value, c.wall_time)
                        .where(c.run_id.in_(small), *series))
                frames.append(_metric_frame(session.execute(stmt).all()))
            for run_id, lo, hi in large:
                stmt = _extremes_per_bucket(run_id, key, lo, hi, buckets)
                frames.append(_metric_frame(session.execute(stmt).all()))
        if not frames:
            return _metric_frame([])
        frame = pd.concat(frames, ignore_index=True)
        return frame.sort_values(["run_id", "step"], kind="stable").reset_index(drop=True)

    def last_step(self, run_id: int, key: str) -> int | None:
        """The highest step logged for ``key``, or None if there is none yet."""
        stmt = select(func.max(_metrics.c.step)).where(
            _metrics.c.run_id == run_id, _metrics.c.key == key)
        with Session(self.engine) as session:
            return session.scalar(stmt)


def _extremes_per_bucket(run_id: int, key: str, lo: int, hi: int, buckets: int) -> Select:
    """SELECT the lowest and highest row of each equal-width step bucket, plus the first and last.

    Bucket ``i`` holds the steps with ``(step - lo) * buckets // (hi - lo + 1) == i``.
    A recursive CTE lists each bucket's step bounds, and two correlated
    ``ORDER BY value LIMIT 1`` subqueries per bucket pick its extremes through
    a short range read of the (run_id, key, step) index. That reads every row
    about twice but sorts nothing big, several times faster on SQLite than a
    GROUP BY or window function over a computed bucket (which sorts all rows).
    """
    c = _metrics.c
    width = hi - lo + 1
    # BigInteger: i * width overflows a 32-bit integer on PostgreSQL for long runs.
    seed = select(literal(0, BigInteger).label("i")).cte("bucket", recursive=True)
    index = seed.union_all(select(seed.c.i + 1).where(seed.c.i < buckets - 1))
    bounds = select(
        (lo + (index.c.i * width + buckets - 1) // buckets).label("first"),
        (lo + ((index.c.i + 1) * width + buckets - 1) // buckets - 1).label("last"),
    ).cte("bounds")
    inner = _metrics.alias("inner")

    def extreme(*order: Any) -> Select:
        step = (select(inner.c.step)
                .where(inner.c.run_id == run_id, inner.c.key == key,
                       inner.c.step.between(bounds.c.first, bounds.c.last))
                .order_by(*order, inner.c.step)
                .limit(1)
                .correlate(bounds)
                .scalar_subquery())
        return select(step).select_from(bounds)

    steps = union(extreme(inner.c.value), extreme(inner.c.value.desc()),
                  select(literal(lo, BigInteger)), select(literal(hi, BigInteger)))
    return (select(c.run_id, c.key, c.step, c.value, c.wall_time)
            .where(c.run_id == run_id, c.key == key, c.step.in_(steps))
            .order_by(c.step))


def _extent(run_id: int, series: list[Any], cap: int) -> Select:
    """SELECT (number of points capped at cap + 1, first step, last step) of one run's series.

    Separate scalar subqueries let min and max each be one index probe, and
    the capped count stops reading after ``cap + 1`` rows instead of counting
    a million.
    """
    c = _metrics.c
    rows = [c.run_id == run_id, *series]
    capped = select(c.step).where(*rows).limit(cap + 1).subquery()
    return select(
        select(func.count()).select_from(capped).scalar_subquery(),
        select(func.min(c.step)).where(*rows).scalar_subquery(),
        select(func.max(c.step)).where(*rows).scalar_subquery(),
    )


def _distinct_keys(run_id: int) -> Select:
    """SELECT the run's distinct metric keys by hopping from key to key through the index.

    A plain DISTINCT reads every metric row of the run; this recursive
    "loose index scan" does one index probe per key instead.
    """
    c = _metrics.c
    keys = select(func.min(c.key).label("key")).where(c.run_id == run_id).cte(
        "run_keys", recursive=True)
    inner = _metrics.alias("inner")
    following = (select(func.min(inner.c.key))
                 .where(inner.c.run_id == run_id, inner.c.key > keys.c.key)
                 .scalar_subquery())
    keys = keys.union_all(select(following).where(keys.c.key.is_not(None)))
    return select(keys.c.key).where(keys.c.key.is_not(None))


def remove_run_folder(run_id: int) -> None:
    """Remove ``runs/<id>/``, also while a trainer may be writing a checkpoint into it.

    A file that appears during the walk makes rmtree fail with "directory not empty";
    trying again a few times lets the writer's rename land first.
    """
    folder = checkpoints_dir(run_id, create=False)
    for _ in range(5):
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            return
        time.sleep(0.05)
