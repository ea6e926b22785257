"""One background worker that trains queued runs, one at a time.

The queue is the runs table itself: the worker claims the oldest ``queued`` row
atomically, so runs enqueued from any page, session or process are picked up,
and two servers on one home folder never train the same run. Pages create one
``JobManager`` per server process (``st.cache_resource``); the worker never
touches Streamlit.
"""

from __future__ import annotations

import logging
import threading

from gptcore.config import TrainConfig
from jobs import runner
from jobs.recovery import recover_interrupted, worker_id
from storage.store import RunStore

log = logging.getLogger(__name__)

IDLE_POLL_S = 2.0


def claim_here(store: RunStore, run_id: int) -> None:
    """Mark a run as trained by this process (the CLI's foreground train and resume)."""
    store.update_run(run_id, status="running", worker=worker_id())


class JobManager:
    """A background thread that claims queued runs and trains them, one at a time."""

    def __init__(self, store: RunStore, *, start: bool = True):
        self.store = store
        self.worker = worker_id()
        self._wake = threading.Event()
        self._shutdown = threading.Event()
        self._lock = threading.Lock()
        self._current: int | None = None
        self._stop_event: threading.Event | None = None
        self.completed: list[int] = []
        self.interrupted_on_start = recover_interrupted(store)
        self._thread = threading.Thread(target=self._loop, name="gptdash-worker", daemon=True)
        if start:
            self._thread.start()

    # ---- what pages call --------------------------------------------------------------
    def submit(self, cfg: TrainConfig, *, name: str | None = None, tags: list[str] | None = None,
               notes: str = "") -> int:
        """Validate, record a queued run, and wake the worker. Returns the run id."""
        run_id = runner.create_run(self.store, cfg, name=name, tags=tags, notes=notes)
        self._wake.set()
        return run_id

    def resume(self, run_id: int) -> None:
        runner.queue_resume(self.store, run_id)
        self._wake.set()

    def stop(self, run_id: int) -> None:
        """Stop a running run (it saves a checkpoint) or cancel a queued one."""
        # The flag first: a worker claiming the run from now on starts a trainer that stops
        # at once, so a Stop racing a claim is never lost.
        self.store.request_stop(run_id)
        if self.store.get_run(run_id).status == "queued":
            self.store.set_status(run_id, "stopped", error="cancelled before it started")
            return
        with self._lock:
            if self._current == run_id and self._stop_event is not None:
                self._stop_event.set()

    @property
    def current_run(self) -> int | None:
        return self._current

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def is_idle(self) -> bool:
        return self._current is None and not self.store.queued_ids()

    def shutdown(self, timeout: float = 30.0) -> None:
        """Stop the current run (with a checkpoint) and end the worker."""
        self._shutdown.set()
        with self._lock:
            if self._stop_event is not None:
                self._stop_event.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ---- the worker -------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._shutdown.is_set():
            try:
                run_id = self.store.claim_next_queued(self.worker)
            except Exception:  # noqa: BLE001 - a database hiccup must not kill the worker
                log.exception("could not read the queue")
                run_id = None
            if run_id is None:
                self._wake.wait(IDLE_POLL_S)
                self._wake.clear()
                continue
            self._train(run_id)

    def _train(self, run_id: int) -> None:
        stop_event = threading.Event()
        with self._lock:
            self._current, self._stop_event = run_id, stop_event
        try:
            runner.execute_run(self.store, run_id, stop_event=stop_event)
        except Exception:  # noqa: BLE001 - the row already says failed; keep the worker alive
            log.exception("run %s failed outside the trainer", run_id)
        finally:
            with self._lock:
                self._current, self._stop_event = None, None
            self.completed.append(run_id)


_process_worker: JobManager | None = None
_process_lock = threading.Lock()


def process_worker() -> JobManager:
    """This process's one background worker, started on first use.

    ``gptdash serve`` calls it before Streamlit starts, so queued runs train and
    orphaned runs are recovered with no page open; pages get the same worker.
    A worker that was shut down (or died) is replaced by a fresh one.
    """
    global _process_worker
    with _process_lock:
        if _process_worker is None or not _process_worker.is_alive():
            _process_worker = JobManager(RunStore())
        return _process_worker
