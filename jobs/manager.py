"""A worker: a thread that claims queued runs and trains them, one at a time.

The queue is the runs table itself: the worker claims the oldest ``queued`` row
atomically, so runs enqueued from any page, session, process or machine are
picked up, and no run is trained twice. ``gptdash worker`` runs one (and
``gptdash serve`` supervises one such process beside the pages), anywhere that
reaches the database. Each worker records itself in the ``workers`` table and
beats every few seconds; each beat also marks runs whose owner is gone as
``interrupted``, and an idle worker takes such a run up again once its back-off has passed
(within its limit of automatic resumes, ``storage.queue``). The worker never touches
Streamlit.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from gptcore.config import TrainConfig
from jobs import actions, runner
from jobs.outage import Outage
from jobs.recovery import (
    DEFAULT_DEAD_AFTER_S,
    FRESH_BEAT_S,
    pid_alive,
    recover_interrupted,
    this_host,
    worker_id,
)
from jobs.threads import ThreadShare, use_threads
from storage.errors import ClaimLost, DatabaseUnavailable
from storage.queue import Claim
from storage.status import DEFAULT_AUTO_RESUMES
from storage.store import RunStore

log = logging.getLogger(__name__)

# An idle worker looks at the queue this often: a run queued by a page or another process
# (which cannot wake this thread) starts training within about this long. One indexed
# SELECT of at most one id; the claim writes only when a run is waiting.
IDLE_POLL_S = 0.5
# An idle worker asks search sweeps for news this often (one grouped count per search).
SEARCH_POLL_S = 2.0
BEAT_S = 5.0
# While the database is away the queue is looked at less and less often, up to a beat apart.
MAX_RETRY_S = BEAT_S


def claim_here(store: RunStore, run_id: int) -> int:
    """Take a queued run for this process (the CLI's foreground train and resume); the
    claim's token."""
    return store.claim_run(run_id, worker_id(), host=this_host(), pid=os.getpid())


class JobManager:
    """A background thread that claims queued runs and trains them, one at a time.

    ``name`` is how the worker shows on the pages (default ``host:pid``); ``device``
    is the device it trains runs whose config says ``auto`` on (default: the best
    one this machine has); ``dead_after_s`` is how long another owner may stay
    silent before its run counts as interrupted. ``exit_when_idle`` ends the worker
    once the queue is empty (a batch job that drains the queue). ``threads`` is the torch
    threads each run trains on (default: ``jobs.threads``' share of this machine's cores).
    ``auto_resume`` is how often a run whose owner was lost resumes by itself when its
    config leaves that to the worker (``max_auto_resumes`` -1).
    """

    def __init__(self, store: RunStore, *, name: str | None = None, device: str | None = None,
                 dead_after_s: float = DEFAULT_DEAD_AFTER_S, exit_when_idle: bool = False,
                 threads: int | None = None, auto_resume: int = DEFAULT_AUTO_RESUMES,
                 start: bool = True):
        self.store = store
        self.worker = name or worker_id()
        self.device = device
        self.dead_after_s = dead_after_s
        self.threads = threads
        self.auto_resume = auto_resume
        self._wake = threading.Event()
        self._shutdown = threading.Event()
        self._lock = threading.Lock()
        self._current: Claim | None = None
        self._stop_event: threading.Event | None = None
        self.exit_when_idle = exit_when_idle
        self.completed: list[int] = []
        # Whether the run it was training when told to shut down was handed on (put back in
        # the queue for the next worker) rather than left stopped.
        self.handed_back = False
        self._searched_at = 0.0  # when the idle loop last advanced the search sweeps
        # Both threads meet an outage; the first to fail and the first to succeed say so.
        self._outage = Outage(log)
        self._outage_lock = threading.Lock()
        self._registered = threading.Event()  # beats update the row registering made
        try:
            self.interrupted_on_start = recover_interrupted(store, dead_after_s)
        except DatabaseUnavailable as exc:  # the beats look for orphans once it answers
            self._db_failed(exc)
            self.interrupted_on_start = []
        self._thread = threading.Thread(target=self._loop, name="gptdash-worker", daemon=True)
        self._beat_thread = threading.Thread(target=self._beat_loop, name="gptdash-beat",
                                             daemon=True)
        if start:
            self._thread.start()
            self._beat_thread.start()

    # ---- what pages call --------------------------------------------------------------
    def submit(self, cfg: TrainConfig, *, name: str | None = None, tags: list[str] | None = None,
               notes: str = "") -> int:
        """Validate, record a queued run, and wake the worker. Returns the run id."""
        run_id = actions.submit(self.store, cfg, name=name, tags=tags, notes=notes)
        self._wake.set()
        return run_id

    def resume(self, run_id: int) -> None:
        actions.resume(self.store, run_id)
        self._wake.set()

    def stop(self, run_id: int) -> actions.Stop:
        """Stop a running run (it saves a checkpoint) or cancel a queued one."""
        done = actions.stop(self.store, run_id)
        with self._lock:  # this worker's own run stops now, not at its next flag poll
            if self.current_run == run_id and self._stop_event is not None:
                self._stop_event.set()
        return done

    @property
    def current_run(self) -> int | None:
        current = self._current
        return current.run_id if current else None

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
        try:
            self.store.worker_stopped(self.worker)
        except DatabaseUnavailable as exc:  # the Workers view sees its beats stop instead
            log.warning("could not record worker %s as stopped: %s", self.worker, exc)
        except Exception:  # noqa: BLE001 - a database gone at shutdown must not hang it
            log.exception("could not record worker %s as stopped", self.worker)

    def wait(self) -> None:
        """Block until the worker ends (``gptdash worker`` in the foreground)."""
        while self._thread.is_alive():
            self._thread.join(0.5)

    # ---- the database going away and coming back ------------------------------------------
    def _db_failed(self, exc: DatabaseUnavailable) -> None:
        """One line for the whole outage, whichever thread meets it first; none while a run
        trains (its trainer says it, with the rows it keeps)."""
        current = self.current_run
        with self._outage_lock:
            self._outage.failed(exc, f"worker {self.worker} waits for it",
                                quiet=current is not None)

    def _db_answered(self) -> None:
        with self._outage_lock:
            self._outage.back()

    # ---- the worker -------------------------------------------------------------------------
    def _register(self) -> None:
        from gptcore.device import device_label, resolve_device  # torch: in the thread

        label = device_label(resolve_device(self.device or "auto"))
        self.store.register_worker(self.worker, host=this_host(), pid=os.getpid(),
                                   device=label)

    def _pause(self, retry_s: float) -> float:
        """Wait ``retry_s`` (or until woken) for the database; the next wait, doubled up to a
        beat, so an outage is not a busy loop."""
        self._wake.wait(retry_s)
        self._wake.clear()
        return min(retry_s * 2, MAX_RETRY_S)

    def _register_when_up(self) -> None:
        """Register this worker, waiting out an outage (or until shut down)."""
        retry_s = IDLE_POLL_S
        while not self._shutdown.is_set():
            try:
                self._register()
            except DatabaseUnavailable as exc:
                self._db_failed(exc)
                retry_s = self._pause(retry_s)
                continue
            except Exception:  # noqa: BLE001 - the Workers view lacks it; training still works
                log.exception("could not register worker %s", self.worker)
            self._registered.set()
            return

    def _loop(self) -> None:
        self._register_when_up()
        retry_s = IDLE_POLL_S
        while not self._shutdown.is_set():
            try:
                claim = self.store.claim_next_queued(self.worker, host=this_host(),
                                                     pid=os.getpid()) or self._auto_resume()
                self._db_answered()
                retry_s = IDLE_POLL_S
            except DatabaseUnavailable as exc:  # said once; looked at less often while away
                self._db_failed(exc)
                retry_s = self._pause(retry_s)
                continue
            except Exception:  # noqa: BLE001 - a database hiccup must not kill the worker
                log.exception("could not read the queue")
                claim = None
            if claim is None:
                if self._advance_searches(throttled=not self.exit_when_idle):
                    continue  # a search queued its next trial: claim it
                if self.exit_when_idle:
                    return
                self._wake.wait(IDLE_POLL_S)
                self._wake.clear()
                continue
            self._train(claim)
            self._advance_searches(throttled=False)  # its search's next trial, if any

    def _advance_searches(self, *, throttled: bool) -> bool:
        """Tell search sweeps what ended and queue their next trials (``jobs.search``): the
        ask happens here, as this worker is about to look for work. Idle, at most every
        ``SEARCH_POLL_S``. Whether a run was queued."""
        now = time.monotonic()
        if throttled and now - self._searched_at < SEARCH_POLL_S:
            return False
        self._searched_at = now
        from jobs import search  # optuna (~0.5 s): only once a worker looks for work

        try:
            return bool(search.advance_searches(self.store))
        except DatabaseUnavailable as exc:
            self._db_failed(exc)
        except Exception:  # noqa: BLE001 - a search's trouble must not stop the worker
            log.exception("could not advance the search sweeps")
        return False

    def _auto_resume(self) -> Claim | None:
        """An interrupted run whose automatic resume is due, taken as a queued one is (its
        owner gone by the test a manual resume makes, ``jobs.recovery.check_owner_gone``)."""
        return self.store.claim_auto_resume(
            self.worker, host=this_host(), pid=os.getpid(), default_limit=self.auto_resume,
            pid_alive=pid_alive, dead_after_s=FRESH_BEAT_S)

    def _beat_loop(self) -> None:
        """Say this worker is alive, keep its run's heartbeat fresh, find orphaned runs."""
        # Several beats fit in the timeout, so one late beat never makes a run look dead.
        every = min(BEAT_S, self.dead_after_s / 4)
        while not self._shutdown.wait(every):
            if not self._registered.is_set():
                continue
            current = self._current
            try:
                self.store.worker_beat(self.worker, status="training" if current else "idle",
                                       current_run_id=current.run_id if current else None)
                if current is not None:
                    # Also beaten by the trainer's writer; this covers a child process
                    # (torchrun) that is slow to start writing.
                    self.store.heartbeat(current.run_id, claim=current.token)
                recover_interrupted(self.store, self.dead_after_s)
                self._db_answered()
            except DatabaseUnavailable as exc:  # said once per outage; the next beat retries
                self._db_failed(exc)
            except Exception:  # noqa: BLE001 - retried at the next beat
                log.exception("worker heartbeat failed")

    def _say(self, current: int | None) -> None:
        """Tell the workers table at once what this worker does, so the pages (in another
        process) show a run as soon as it is taken up, not at the next beat."""
        try:
            self.store.worker_beat(self.worker, status="training" if current else "idle",
                                   current_run_id=current)
        except DatabaseUnavailable as exc:  # the next beat says it again
            self._db_failed(exc)
        except Exception:  # noqa: BLE001 - the next beat says it again
            log.exception("could not record worker %s's state", self.worker)

    def _train(self, claim: Claim) -> None:
        run_id = claim.run_id
        stop_event = threading.Event()
        with self._lock:
            self._current, self._stop_event = claim, stop_event
        self._say(run_id)
        try:
            nproc = int(self.store.get_run(run_id).config.get("nproc", 1))
            if nproc > 1:
                from jobs.torchrun import run_under_torchrun

                run_under_torchrun(self.store, run_id, nproc, claim=claim.token,
                                   stop_event=stop_event, device=self.device)
            else:
                use_threads(self.store, self.threads, counted=True)  # here, in the run's thread
                runner.execute_run(self.store, run_id, claim=claim.token,
                                   stop_event=stop_event, device=self.device,
                                   extra_callbacks=None if self.threads else
                                   ThreadShare(self.store))
            if self._shutdown.is_set():  # the worker stopped, not the run: hand it on
                step = self.store.get_run(run_id).last_step
                self.handed_back = self.store.hand_back(
                    run_id, claim.token, f"its worker {self.worker} was stopped at step "
                    f"{step:,} (Ctrl-C, SIGTERM, or the dashboard shutting down) and saved a "
                    "checkpoint")
        except ClaimLost as exc:  # another process took the run; this one wrote no more
            log.warning("run %s: %s", run_id, exc)
        except DatabaseUnavailable as exc:  # its row stays running: recovery marks it
            self._db_failed(exc)
            log.warning("run %s ended: the database was unreachable", run_id)
        except Exception:  # noqa: BLE001 - the row already says failed; keep the worker alive
            log.exception("run %s failed outside the trainer", run_id)
        finally:
            with self._lock:
                self._current, self._stop_event = None, None
            self.completed.append(run_id)
            self._say(None)

