"""The database schema: runs, their metrics in long format, samples, events, sweeps, workers.

The database is the bus between the training worker and the pages, so the
schema stays small: new metric keys need no migration, and the run row
carries a few denormalised summaries (last step, best val loss, ...) so the
Runs page lists hundreds of runs without aggregating metrics.

Every change to these models needs an Alembic revision in ``storage/migrations``
(``tests/test_storage_migrations.py`` checks that the two agree).
"""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    create_engine,
    event,
)
from sqlalchemy.exc import ArgumentError
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.pool import StaticPool
from sqlalchemy.types import TypeDecorator

from storage.diagnose import engine_error, parse_url, translate_errors
from storage.names import NAME_MAX
from storage.status import Executor, RunStatus


def utcnow() -> datetime:
    """The current time as a timezone-aware UTC datetime."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """A datetime stored as UTC and always read back timezone-aware.

    SQLite keeps no zone, so without this a value written aware would come
    back naive and could not be subtracted from ``utcnow()``.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            # Naive values are taken to be UTC already, as everything here writes UTC.
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


class NulSafeText(TypeDecorator):
    """Text that any backend stores: a NUL character (a byte-level model may generate one,
    a user may paste one) becomes the visible symbol U+2400, which PostgreSQL accepts and
    a page shows, where PostgreSQL would refuse the whole row."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Any) -> str | None:
        return value.replace("\x00", "\u2400") if isinstance(value, str) else value


class NulSafeString(NulSafeText):
    """A bounded ``NulSafeText`` (names)."""

    impl = String
    cache_ok = True


class Base(DeclarativeBase):
    """Declarative base for the gptdash tables."""


class Run(Base):
    """One training run: its config, lifecycle and a few summaries for listing."""

    __tablename__ = "runs"
    # AUTOINCREMENT: SQLite would otherwise reuse a deleted run's id, and with it the
    # checkpoint folder runs/<id>/ that a deleted run's trainer may still be writing.
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(NulSafeString(NAME_MAX))
    status: Mapped[str] = mapped_column(String(20), index=True, default=RunStatus.QUEUED)
    config: Mapped[dict] = mapped_column(JSON, default=dict)
    tags: Mapped[list] = mapped_column(JSON, default=list)
    notes: Mapped[str] = mapped_column(NulSafeText, default="")
    device: Mapped[str | None] = mapped_column(String(100), nullable=True)
    n_params: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    error: Mapped[str | None] = mapped_column(NulSafeText, nullable=True)
    stop_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    checkpoint_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    parent_id: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("runs.id", ondelete="SET NULL"), nullable=True
    )
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # Who trains it and when it last said so: a run whose owner is gone becomes interrupted.
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    owner_host: Mapped[str | None] = mapped_column(String(200), nullable=True)
    owner_pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    sweep_id: Mapped[int | None] = mapped_column(
        Integer,
        # Named as revision 0003 creates it (Alembic batch mode on SQLite needs a name).
        ForeignKey("sweeps.id", ondelete="SET NULL", name="fk_runs_sweep_id_sweeps"),
        nullable=True,
        index=True,
    )
    # Denormalised summaries the trainer bridge updates at each flush.
    last_step: Mapped[int] = mapped_column(Integer, default=0)
    max_steps: Mapped[int] = mapped_column(Integer, default=0)
    tokens_seen: Mapped[int] = mapped_column(BigInteger, default=0)
    best_val_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    last_train_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Seconds spent training, summed over the run's attempts (a stop and a resume a day
    # later do not count the day); its trainer rewrites it every second. NULL: not yet known.
    trained_s: Mapped[float | None] = mapped_column(Float, nullable=True)
    # Who trains it: plain workers claim only ``local`` runs; a ``ray`` run is claimed by
    # its own Ray job, named in ``worker`` from the moment it is queued (jobs.ray_executor).
    executor: Mapped[str] = mapped_column(String(20), default=Executor.LOCAL,
                                          server_default=Executor.LOCAL.value)
    # The fencing token of the run's current claim: every claim takes the next one, and so does
    # declaring its owner gone; an owner writes only while the row still carries its own
    # (storage.ownership), so a process that lost the run can write nothing more to it.
    claim_token: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Runs resume themselves (storage.queue): each claim is an attempt; a run whose owner was
    # lost is resumed automatically after ``resume_after`` (NULL: never), up to
    # ``max_auto_resumes`` times (NULL: the claiming worker's default, ``--auto-resume``).
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    auto_resumes: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    max_auto_resumes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    resume_after: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


class Metric(Base):
    """One scalar of one run at one step, e.g. ``("train/loss", 100, 3.2)``.

    The primary key (run_id, key, step) is also the index that every chart
    query and the downsampler read in step order.
    """

    __tablename__ = "metrics"
    # On SQLite the rows live in the primary-key b-tree itself, so a step range is
    # one sequential read instead of an index walk plus a table lookup per row.
    __table_args__ = {"sqlite_with_rowid": False}

    run_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("runs.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(100), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Nullable because SQLite stores a NaN (a diverged loss) as NULL; it reads back as NaN.
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    wall_time: Mapped[float] = mapped_column(Float)


class Sample(Base):
    """Text generated from a prompt during training."""

    __tablename__ = "samples"
    __table_args__ = (Index("ix_samples_run_step", "run_id", "step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(Integer, ForeignKey("runs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    prompt: Mapped[str] = mapped_column(NulSafeText)
    text: Mapped[str] = mapped_column(NulSafeText)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Event(Base):
    """Something worth a marker on a run's charts: a spike, a roll-back, an early stop."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_run_step", "run_id", "step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(Integer, ForeignKey("runs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(40))
    message: Mapped[str] = mapped_column(NulSafeText)
    wall_time: Mapped[float] = mapped_column(Float)


class Sweep(Base):
    """A group of runs made from one spec (a grid or random search over hyperparameters)."""

    __tablename__ = "sweeps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(NAME_MAX))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    spec: Mapped[dict] = mapped_column(JSON, default=dict)
    cut: Mapped[bool] = mapped_column(Boolean, default=False)
    notes: Mapped[str] = mapped_column(Text, default="")
    # A search sweep's Optuna study in this database (jobs.search); NULL for grid or random.
    study: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # Its ended runs (their number plus their claims) when the study was last told of them:
    # a worker's cheap "any news?" (jobs.search.has_news).
    told: Mapped[int] = mapped_column(Integer, default=0, server_default="0")


class Worker(Base):
    """A process that claims and trains queued runs, with its heartbeat."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    host: Mapped[str] = mapped_column(String(200))
    pid: Mapped[int] = mapped_column(Integer)
    device: Mapped[str | None] = mapped_column(String(100), nullable=True)
    status: Mapped[str] = mapped_column(String(20))
    current_run_id: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("runs.id", ondelete="SET NULL"), nullable=True
    )
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime)


def _json_dumps(value: Any) -> str:
    # Keep non-ASCII readable in the stored text, so a text search over tags finds "ü".
    return json.dumps(value, ensure_ascii=False)


# How long a new connection waits for other processes switching a new database file to WAL.
WAL_SWITCH_WAIT_S = 30.0


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run while the trainer writes; busy_timeout makes writers
    # wait for each other instead of failing with "database is locked".
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA busy_timeout=10000")
    _switch_to_wal(cursor)
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()
    # SQLite's own lower() folds only ASCII; case-insensitive search (ILIKE) should find "Ü" too.
    dbapi_connection.create_function("lower", 1, _lower, deterministic=True)


def _switch_to_wal(cursor: Any) -> None:
    """``PRAGMA journal_mode=WAL``, waiting while another process holds a new file's lock.

    Two processes that open a new database at once (the ranks of ``torchrun -m jobs train``
    on a fresh home) both switch it from its first journal mode to WAL. SQLite answers the
    one that finds the other's lock "database is locked" at once rather than wait (waiting
    could deadlock), so the wait is here; the switch persists, later opens find WAL.
    """
    deadline = time.monotonic() + WAL_SWITCH_WAIT_S
    pause = 0.01
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
        time.sleep(pause)
        pause = min(2 * pause, 0.25)


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


def make_engine(url: str) -> Engine:
    """An engine for ``url``, with the SQLite settings that make it a safe multi-thread bus.

    A URL that is malformed or names a driver that is missing raises StorageError here;
    any later database-side error on the engine is a one-line StorageError too
    (``storage.diagnose``).
    """
    parsed = parse_url(url)
    kwargs: dict[str, Any] = {"json_serializer": _json_dumps}
    if parsed.get_backend_name() != "sqlite":
        # A dropped connection is noticed before use and replaced (a restarted server);
        # an unreachable host is given up on after 10 s rather than waited on for ever.
        kwargs["pool_pre_ping"] = True
        if parsed.get_backend_name() == "postgresql" and "connect_timeout" not in parsed.query:
            kwargs["connect_args"] = {"connect_timeout": 10}
    else:
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        if parsed.database in (None, "", ":memory:"):
            # An in-memory database exists once per connection: share one connection.
            kwargs["poolclass"] = StaticPool
    try:
        engine = create_engine(parsed, **kwargs)
    except (ArgumentError, ImportError) as exc:  # NoSuchModuleError is an ArgumentError
        raise engine_error(parsed, exc) from None
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    translate_errors(engine)
    return engine
