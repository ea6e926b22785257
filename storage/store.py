"""RunStore: every read and write of runs, metrics and samples goes through here.

Each method opens its own short Session and closes it, so one store object
can be shared by the training thread (the one writer) and any number of page
threads (readers) without sharing a session between threads.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

import pandas as pd
from sqlalchemy import (
    BigInteger,
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
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from gptcore.errors import GptdashError
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
        values = {f.name: getattr(run, f.name) for f in fields(cls)}
        values["config"] = dict(run.config or {})
        values["tags"] = list(run.tags or [])
        return cls(**values)


def _check_status(status: str) -> None:
    if status not in STATUSES:
        raise ValueError(f"unknown run status {status!r}; expected one of {', '.join(STATUSES)}")


def _missing(run_id: int) -> GptdashError:
    return GptdashError(f"run {run_id} does not exist")


def _metric_frame(rows: Sequence[Sequence[Any]]) -> pd.DataFrame:
    frame = pd.DataFrame.from_records(rows, columns=METRIC_COLUMNS)
    # NaN losses are stored as NULL by SQLite; astype turns them back into NaN.
    return frame.astype(METRIC_DTYPES)


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
                raise GptdashError(f"parent run {parent_id} does not exist")
            session.add(run)
            session.flush()
            return run.id

    def get_run(self, run_id: int) -> RunRecord:
        """The run's current row; GptdashError if there is no such run."""
        with Session(self.engine) as session:
            run = session.get(Run, run_id)
            if run is None:
                raise _missing(run_id)
            return RunRecord.from_row(run)

    def update_run(self, run_id: int, **changes: Any) -> None:
        """Set any columns of a run, e.g. ``update_run(3, last_step=100, device="cuda")``."""
        unknown = sorted(set(changes) - _UPDATABLE)
        if unknown:
            raise ValueError(f"runs has no updatable column(s) {', '.join(unknown)}")
        if "status" in changes:
            _check_status(changes["status"])
        if "tags" in changes:
            changes["tags"] = [str(t) for t in changes["tags"]]
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
        _check_status(status)
        now = utcnow()
        changes: dict[str, Any] = {"status": status}
        if status in FINISHED_STATUSES:
            changes.update(finished_at=now, error=error)
        else:
            changes.update(finished_at=None, error=error)
        if status == "running":
            changes["started_at"] = func.coalesce(Run.started_at, literal(now, Run.started_at.type))
        if status == "queued":
            changes["stop_requested"] = False
        self._update(run_id, **changes)

    def _update(self, run_id: int, **changes: Any) -> None:
        stmt = update(Run).where(Run.id == run_id).values(**changes)
        with Session(self.engine) as session, session.begin():
            result = session.execute(stmt, execution_options={"synchronize_session": False})
            if result.rowcount != 1:
                raise _missing(run_id)

    def _filtered(
        self,
        stmt: Select,
        status: str | Sequence[str] | None,
        tag: str | None,
        text: str | None,
        ids: Sequence[int] | None,
    ) -> Select:
        if status is not None:
            stmt = stmt.where(Run.status.in_([status] if isinstance(status, str) else list(status)))
        if ids is not None:
            stmt = stmt.where(Run.id.in_(list(ids)))
        tags_text = cast(Run.tags, String)
        if tag is not None:
            # A cheap prefilter on the stored JSON text; the caller checks the exact tag after.
            stmt = stmt.where(tags_text.contains(json.dumps(tag, ensure_ascii=False),
                                                 autoescape=True))
        if text:
            # Tags are matched in their JSON-escaped form, the way they are stored.
            escaped = json.dumps(text, ensure_ascii=False)[1:-1]
            stmt = stmt.where(or_(
                Run.name.icontains(text, autoescape=True),
                Run.notes.icontains(text, autoescape=True),
                tags_text.icontains(escaped, autoescape=True),
            ))
        return stmt.order_by(Run.created_at.desc(), Run.id.desc())

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
        stmt = self._filtered(select(Run), status, tag, text, ids)
        if limit is not None and tag is None:
            stmt = stmt.limit(limit)
        with Session(self.engine) as session:
            records = [RunRecord.from_row(run) for run in session.scalars(stmt)]
        if tag is not None:
            records = [r for r in records if tag in r.tags][:limit]
        return records

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
        stmt = self._filtered(select(*columns), status, tag, text, ids)
        if limit is not None and tag is None:
            stmt = stmt.limit(limit)
        with Session(self.engine) as session:
            rows = session.execute(stmt).all()
        frame = pd.DataFrame.from_records(rows, columns=[c.key for c in columns])
        if tag is not None:
            frame = frame[frame["tags"].map(lambda tags: tag in (tags or []))].head(limit)
        frame["tags"] = frame["tags"].map(lambda tags: ", ".join(tags or []))
        for col in ("created_at", "started_at", "finished_at"):
            frame[col] = pd.to_datetime(frame[col], utc=True)
        ended = frame["finished_at"].fillna(pd.Timestamp(utcnow()))
        frame["duration_s"] = (ended - frame["started_at"]).dt.total_seconds()
        frame = frame.astype({"n_params": "Int64", "parent_id": "Int64", "id": "int64",
                              "best_val_loss": "float64", "last_train_loss": "float64"})
        return frame[RUNS_FRAME_COLUMNS].reset_index(drop=True)

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
        folder = checkpoints_dir(run_id, create=False)
        if folder.exists():
            shutil.rmtree(folder)

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
        if not run_ids:
            return []
        stmt = (select(_metrics.c.key).where(_metrics.c.run_id.in_(list(run_ids)))
                .distinct().order_by(_metrics.c.key))
        with Session(self.engine) as session:
            return list(session.scalars(stmt))

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
        if not run_ids:
            return _metric_frame([])
        c = _metrics.c
        where = [c.run_id.in_(list(run_ids)), c.key == key]
        if min_step is not None:
            where.append(c.step >= min_step)
        if max_step is not None:
            where.append(c.step <= max_step)
        extents = (select(c.run_id, func.count(), func.min(c.step), func.max(c.step))
                   .where(*where).group_by(c.run_id))
        frames = []
        with Session(self.engine) as session:
            small, large = [], []
            for run_id, count, lo, hi in session.execute(extents).all():
                (small if count <= 2 * buckets else large).append((run_id, lo, hi))
            if small:
                stmt = (select(c.run_id, c.key, c.step, c.value, c.wall_time)
                        .where(c.run_id.in_([r for r, _, _ in small]), *where[1:]))
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
    """SELECT the min and max row of each equal-width step bucket, plus the first and last row.

    One window pass numbers the rows of each bucket by value; the first row
    is the bucket's minimum and the last (row number == bucket size) its
    maximum. Both SQLite (>= 3.25) and PostgreSQL run this.
    """
    c = _metrics.c
    # BigInteger: step * buckets overflows a 32-bit integer on PostgreSQL for long runs.
    bucket = ((cast(c.step, BigInteger) - lo) * buckets) // (hi - lo + 1)
    points = (select(c.step, c.value, c.wall_time, bucket.label("bucket"))
              .where(c.run_id == run_id, c.key == key, c.step >= lo, c.step <= hi)
              .subquery())
    ranked = select(
        points.c.step,
        points.c.value,
        points.c.wall_time,
        func.row_number().over(partition_by=points.c.bucket,
                               order_by=[points.c.value, points.c.step]).label("rank"),
        func.count().over(partition_by=points.c.bucket).label("size"),
    ).subquery()
    return (select(literal(run_id).label("run_id"), literal(key).label("key"),
                   ranked.c.step, ranked.c.value, ranked.c.wall_time)
            .where(or_(ranked.c.rank == 1, ranked.c.rank == ranked.c.size,
                       ranked.c.step == lo, ranked.c.step == hi))
            .order_by(ranked.c.step))
