"""Runs: create, read, filter, change and delete rows of the ``runs`` table.

Part of ``storage.store.RunStore``; each method opens its own short Session.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, Row, String, cast, delete, func, literal, or_, select, update
from sqlalchemy.orm import Session

from storage.auto_resume import AUTO_RESUME_EVENT
from storage.errors import StorageError, missing_run
from storage.home import checkpoints_dir
from storage.names import check_name, check_notes
from storage.ownership import check_owned, writing
from storage.schema import (
    Event,
    Metric,
    Run,
    Sample,
    Sweep,
    Worker,
    utcnow,
)
from storage.status import ACTIVE, EXECUTORS, FINISHED, STATUSES, Executor, RunStatus
from storage.tags import check_tags, format_tags

if TYPE_CHECKING:
    import pandas as pd

RUNS_FRAME_COLUMNS = ["id", "name", "status", "tags", "created_at", "duration_s", "last_step",
                      "max_steps", "tokens_seen", "best_val_loss", "last_train_loss", "n_params",
                      "device", "parent_id", "worker", "sweep_id"]
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
    heartbeat_at: datetime | None
    owner_host: str | None
    owner_pid: int | None
    sweep_id: int | None
    trained_s: float | None = None
    executor: str = Executor.LOCAL  # who trains it
    claim_token: int = 0  # the fencing token of its current claim (storage.ownership)
    attempts: int = 0  # claims: tries at training it
    auto_resumes: int = 0  # of them, automatic resumes after its owner was lost
    max_auto_resumes: int | None = None  # its own limit; None: the claiming worker's
    resume_after: datetime | None = None  # interrupted: when it resumes by itself; None: never

    @property
    def duration_s(self) -> float | None:
        """Seconds spent training, summed over the run's attempts (the time a stopped run
        waited to be resumed does not count); until its trainer first records that, the
        time from its start to its finish, or to now."""
        if self.trained_s is not None:
            return self.trained_s
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


def check_status(status: str) -> None:
    """ValueError unless ``status`` is one of the run statuses."""
    if status not in STATUSES:
        raise ValueError(f"unknown run status {status!r}; expected one of {', '.join(STATUSES)}")


def status_changes(status: str, error: str | None) -> dict[str, Any]:
    """The column values that moving a run to ``status`` implies (see ``set_status``)."""
    check_status(status)
    now = utcnow()
    changes: dict[str, Any] = {
        "status": status,
        "error": error,
        "finished_at": now if status in FINISHED else None,
        "resume_after": None,  # only a lost owner's run resumes by itself (storage.queue)
    }
    if status == RunStatus.RUNNING:
        # Only the first start counts, so a resumed run keeps its original start time.
        changes["started_at"] = func.coalesce(Run.started_at, literal(now, Run.started_at.type))
    if status == RunStatus.QUEUED:
        changes["stop_requested"] = False
    return changes


class RunsMixin:
    """The ``runs`` table: one row per run, its config, lifecycle and summaries."""

    engine: Engine

    def create_run(
        self,
        name: str,
        config: dict,
        *,
        tags: Iterable[str] = (),
        notes: str = "",
        parent_id: int | None = None,
        status: str = RunStatus.QUEUED,
        max_steps: int = 0,
        n_params: int | None = None,
        sweep_id: int | None = None,
        executor: str = Executor.LOCAL,
        max_auto_resumes: int | None = None,
    ) -> int:
        """Insert a run and return its id. A run created as ``running`` starts its clock now.

        ``executor`` ``ray`` keeps it from plain workers (``storage.status.Executor``).
        ``max_auto_resumes``: how often it may resume by itself after its owner is lost
        (None: as often as the worker that finds it allows; ``storage.queue``).
        """
        check_status(status)
        if executor not in EXECUTORS:
            raise ValueError(f"unknown executor {executor!r}; expected one of "
                             f"{', '.join(EXECUTORS)}")
        check_name(name)
        tags = check_tags(tags)
        check_notes(notes)
        now = utcnow()
        run = Run(
            name=name,
            config=dict(config),
            tags=tags,
            notes=notes,
            parent_id=parent_id,
            sweep_id=sweep_id,
            executor=executor,
            max_auto_resumes=max_auto_resumes,
            status=status,
            max_steps=max_steps,
            n_params=n_params,
            created_at=now,
            started_at=now if status == RunStatus.RUNNING else None,
            finished_at=now if status in FINISHED else None,
            stop_requested=False,
            last_step=0,
            tokens_seen=0,
        )
        with Session(self.engine) as session, session.begin():
            if parent_id is not None and session.get(Run, parent_id) is None:
                raise StorageError(f"parent run {parent_id} does not exist")
            if sweep_id is not None and session.get(Sweep, sweep_id) is None:
                raise StorageError(f"sweep {sweep_id} does not exist")
            session.add(run)
            session.flush()
            return run.id

    def get_run(self, run_id: int) -> RunRecord:
        """The run's current row; StorageError if there is no such run."""
        with Session(self.engine) as session:
            run = session.get(Run, run_id)
            if run is None:
                raise missing_run(run_id)
            return RunRecord.from_row(run)

    def update_run(self, run_id: int, *, claim: int | None = None, **changes: Any) -> None:
        """Set any columns of a run, e.g. ``update_run(3, last_step=100, device="cuda")``.

        A ``status`` among the changes follows the rules of ``set_status``
        (timestamps, error, stop flag) unless those columns are given too. An owner passes
        its ``claim``: the write is refused (ClaimLost) once another claim took the run.
        """
        unknown = sorted(set(changes) - _UPDATABLE)
        if unknown:
            raise ValueError(f"runs has no updatable column(s) {', '.join(unknown)}")
        if "name" in changes:
            check_name(changes["name"])
        if "tags" in changes:
            changes["tags"] = check_tags(changes["tags"])
        if "notes" in changes:
            check_notes(changes["notes"])
        if "status" in changes:
            changes = {**status_changes(changes["status"], changes.get("error")), **changes}
        if not changes:
            self.get_run(run_id)  # still report a missing run
            return
        self._update(run_id, claim=claim, **changes)

    def set_status(self, run_id: int, status: str, *, error: str | None = None,
                   claim: int | None = None) -> None:
        """Move a run to ``status`` and keep its timestamps and error text consistent.

        ``running`` sets started_at (first time only); a finished status sets
        finished_at and ``error``; ``running`` or ``queued`` clear finished_at
        and error. ``queued`` also clears an old stop request, so a run that
        was stopped and queued again does not stop at once. With ``claim``, only while
        that claim owns the run (ClaimLost otherwise).
        """
        self._update(run_id, claim=claim, **status_changes(status, error))

    def _update(self, run_id: int, *, claim: int | None = None, **changes: Any) -> None:
        stmt = update(Run).where(Run.id == run_id).values(**changes)
        with writing(self.engine, run_id, claim) as session:
            result = session.execute(stmt, execution_options={"synchronize_session": False})
            if result.rowcount != 1:
                raise missing_run(run_id)

    def _runs_matching(
        self,
        columns: list[Any],
        tags_of: Callable[[Row], list[str] | None],
        status: str | Sequence[str] | None,
        tag: str | None,
        text: str | None,
        ids: Sequence[int] | None,
        sweep_id: int | None,
        limit: int | None,
    ) -> list[Row]:
        """Rows of ``select(*columns)`` for the runs matching every filter, newest first."""
        stmt = select(*columns).order_by(Run.created_at.desc(), Run.id.desc())
        if status is not None:
            stmt = stmt.where(Run.status.in_([status] if isinstance(status, str) else list(status)))
        if ids is not None:
            stmt = stmt.where(Run.id.in_(list(ids)))
        if sweep_id is not None:
            stmt = stmt.where(Run.sweep_id == sweep_id)
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
        sweep_id: int | None = None,
        limit: int | None = None,
    ) -> list[RunRecord]:
        """Runs matching every given filter, newest first.

        ``status`` is one status or several; ``tag`` must be one of the run's
        tags exactly; ``text`` is found in name, notes or tags ignoring case;
        ``sweep_id`` keeps the runs of one sweep.
        """
        rows = self._runs_matching([Run], lambda row: row.Run.tags,
                                   status, tag, text, ids, sweep_id, limit)
        return [RunRecord.from_row(row.Run) for row in rows]

    def runs_frame(
        self,
        *,
        status: str | Sequence[str] | None = None,
        tag: str | None = None,
        text: str | None = None,
        ids: Sequence[int] | None = None,
        sweep_id: int | None = None,
        limit: int | None = None,
    ) -> pd.DataFrame:
        """One row per run for the Runs table, with the filters of ``list_runs``, in one query.

        Columns: id, name, status, tags (comma-joined), created_at, duration_s,
        last_step, max_steps, tokens_seen, best_val_loss, last_train_loss,
        n_params, device, parent_id, worker, sweep_id.
        """
        import pandas as pd  # here, not at the top: `gptdash list` should not wait for pandas

        columns = [Run.id, Run.name, Run.status, Run.tags, Run.created_at, Run.started_at,
                   Run.finished_at, Run.last_step, Run.max_steps, Run.tokens_seen,
                   Run.best_val_loss, Run.last_train_loss, Run.n_params, Run.device,
                   Run.parent_id, Run.worker, Run.sweep_id, Run.trained_s]
        rows = self._runs_matching(columns, lambda row: row.tags,
                                   status, tag, text, ids, sweep_id, limit)
        frame = pd.DataFrame({col.key: [row[i] for row in rows]
                              for i, col in enumerate(columns)})
        frame["tags"] = frame["tags"].map(format_tags)
        for col in ("created_at", "started_at", "finished_at"):
            # One fixed unit: a column of only NaT would otherwise get a coarser one.
            frame[col] = pd.to_datetime(frame[col], utc=True).dt.as_unit("us")
        ended = frame["finished_at"].fillna(pd.Timestamp(utcnow()))
        # As RunRecord.duration_s: the recorded training time, else start to finish (or now).
        frame["duration_s"] = frame["trained_s"].astype("float64").fillna(
            (ended - frame["started_at"]).dt.total_seconds())
        frame = frame.astype({"id": "int64", "last_step": "int64", "max_steps": "int64",
                              "tokens_seen": "int64", "n_params": "Int64", "parent_id": "Int64",
                              "sweep_id": "Int64", "best_val_loss": "float64",
                              "last_train_loss": "float64"})
        return frame[RUNS_FRAME_COLUMNS]

    def delete_run(self, run_id: int) -> None:
        """Delete a run with its metrics, samples, events and checkpoint folder.

        A run that is queued or running is refused (StorageError), checked in the same
        transaction as the delete, so a resume that lands after someone confirmed a
        delete is never deleted. Runs resumed or fine-tuned from it stay, with
        ``parent_id`` set to NULL.
        """
        metrics = Metric.__table__
        no_sync = {"synchronize_session": False}
        with Session(self.engine) as session, session.begin():
            # A write first: it locks the row (the database, on SQLite) until the delete
            # commits, so its status cannot change between this check and the delete.
            ended = session.execute(update(Run).where(Run.id == run_id,
                                                      Run.status.not_in(list(ACTIVE)))
                                    .values(status=Run.status), execution_options=no_sync)
            if ended.rowcount != 1:
                status = session.scalar(select(Run.status).where(Run.id == run_id))
                if status is None:
                    raise missing_run(run_id)
                raise StorageError(f"run {run_id} is {status}: stop it (a queued run is "
                                   "cancelled) before deleting it")
            # Explicit deletes, so this works even where foreign keys are not enforced.
            session.execute(delete(Sample).where(Sample.run_id == run_id))
            session.execute(delete(Event).where(Event.run_id == run_id))
            session.execute(delete(metrics).where(metrics.c.run_id == run_id))
            session.execute(update(Run).where(Run.parent_id == run_id).values(parent_id=None),
                            execution_options=no_sync)
            session.execute(update(Worker).where(Worker.current_run_id == run_id)
                            .values(current_run_id=None), execution_options=no_sync)
            session.execute(delete(Run).where(Run.id == run_id), execution_options=no_sync)
        remove_run_folder(run_id)

    def discard_after(self, run_id: int, step: int, *, claim: int | None = None) -> None:
        """Delete the run's metrics, samples and events past ``step``: what an attempt that
        died recorded after the checkpoint its next attempt starts from (all of them for
        ``step=-1``, a restart from step 0, whose summaries start over too). With ``claim``,
        only while that claim owns the run."""
        metrics = Metric.__table__
        with writing(self.engine, run_id, claim) as session:
            # The note of an automatic resume is this attempt's, not the dead one's: it moves
            # to the step the attempt starts from.
            session.execute(update(Event).where(Event.run_id == run_id, Event.step > step,
                                                Event.kind == AUTO_RESUME_EVENT)
                            .values(step=max(step, 0)),
                            execution_options={"synchronize_session": False})
            session.execute(delete(metrics).where(metrics.c.run_id == run_id,
                                                  metrics.c.step > step))
            session.execute(delete(Sample).where(Sample.run_id == run_id, Sample.step > step))
            session.execute(delete(Event).where(Event.run_id == run_id, Event.step > step,
                                                Event.kind != AUTO_RESUME_EVENT))
            if step < 0:
                session.execute(update(Run).where(Run.id == run_id).values(
                    last_step=0, tokens_seen=0, best_val_loss=None, last_train_loss=None),
                    execution_options={"synchronize_session": False})

    def request_stop(self, run_id: int) -> None:
        """Ask the trainer of this run to stop at its next poll."""
        self._update(run_id, stop_requested=True)

    def check_claim(self, run_id: int, claim: int) -> None:
        """ClaimLost (or RunMissing) unless ``claim`` owns the run now."""
        with Session(self.engine) as session:
            check_owned(session, run_id, claim)

    def stop_requested(self, run_id: int, *, claim: int | None = None) -> bool:
        """Whether a stop was requested. A run deleted while training also reads as stopped.

        With ``claim`` (its trainer's poll), ClaimLost once another claim took the run.
        """
        with Session(self.engine) as session:
            flag = session.scalar(select(Run.stop_requested).where(Run.id == run_id))
            if flag is not None and claim is not None:
                check_owned(session, run_id, claim)
        return True if flag is None else bool(flag)


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
