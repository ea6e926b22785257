"""RunStore: every read and write of runs, metrics, samples, events, sweeps and workers.

RunStore is composed of one part per concept (``storage/runs.py``,
``metrics.py``, ``samples.py``, ``events.py``, ``queue.py``, ``auto_resume.py``,
``workers.py``, ``sweeps.py``). Each method opens its own short Session and closes it, so one
store object can be shared by the training thread (the one writer) and any
number of page threads (readers) without sharing a session between threads.

pandas and numpy are imported by the methods that build DataFrames, not here:
every CLI command opens a RunStore, and ``gptdash list`` should answer at once.
"""

from __future__ import annotations

from storage.auto_resume import AutoResumeMixin
from storage.events import EVENT_COLUMNS, EventsMixin
from storage.home import db_url
from storage.metrics import METRIC_COLUMNS, MetricsMixin
from storage.migrate import ensure_schema
from storage.ownership import OwnershipMixin
from storage.queue import INTERRUPTED_ERROR, QueueMixin
from storage.runs import RUNS_FRAME_COLUMNS, RunRecord, RunsMixin, remove_run_folder
from storage.samples import SAMPLE_COLUMNS, SamplesMixin
from storage.schema import make_engine
from storage.sweeps import SweepRecord, SweepsMixin
from storage.workers import WorkerRecord, WorkersMixin

__all__ = [
    "EVENT_COLUMNS",
    "INTERRUPTED_ERROR",
    "METRIC_COLUMNS",
    "RUNS_FRAME_COLUMNS",
    "SAMPLE_COLUMNS",
    "RunRecord",
    "RunStore",
    "SweepRecord",
    "WorkerRecord",
    "remove_run_folder",
]


class RunStore(RunsMixin, QueueMixin, AutoResumeMixin, MetricsMixin, SamplesMixin, EventsMixin,
               SweepsMixin, WorkersMixin, OwnershipMixin):
    """The gptdash database (SQLite by default, PostgreSQL by URL) behind one object."""

    def __init__(self, url: str | None = None) -> None:
        """Connect to ``url`` (default: the home folder's SQLite file) and bring its schema up.

        An empty or older SQLite file is created or upgraded in place; an empty or
        older PostgreSQL schema raises StorageError naming ``gptdash db upgrade`` (see
        ``storage.migrate``). Any database problem, here or in a later call, is a
        one-line StorageError naming the URL (``storage.diagnose``).
        """
        self.url = url or db_url()
        self.engine = make_engine(self.url)
        try:
            ensure_schema(self.engine)
        except BaseException:
            self.engine.dispose()
            raise

    def close(self) -> None:
        """Close the pooled connections (the store may still be used; it reconnects)."""
        self.engine.dispose()
