"""Trainer callbacks that record a run in the RunStore.

Metric rows are buffered and written by a small writer thread, so the
training thread never waits on the database between evaluations. ``flush()``
(every evaluation and the end) writes synchronously, so nothing reported is
lost on a normal or failed end.

A run of a sweep created with cut=True is also compared with its sweep after the
evaluations at its cut points (``jobs.halving``), and stopped when it is confidently
losing.

Every write carries the claim's fencing token (``storage.ownership``): once another
process has taken the run, the next write or stop-flag poll raises ClaimLost, which ends
the trainer without a checkpoint or a status of its own.

A database outage does not end the run. Every write goes through an ``Outbox`` (in order;
in memory up to a bound, then a spool file in the run's folder) and is written, exactly
once, when the database answers again, the run's heartbeat first; training and
checkpoints go on meanwhile. One line says when the outage began and one when it ended.
A stop request cannot be seen while the database is away; a run whose outage outlasts
``outage_limit_s()`` stops with a checkpoint, recorded ``stopped`` with why once the
database is back.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

from gptcore.callbacks import TrainerCallbacks
from gptcore.metric_keys import TOKENS_SEEN, TRAIN_LOSS, VAL_LOSS
from jobs import halving
from jobs.outage import Outage
from jobs.outbox import Op, Outbox
from storage import home
from storage.errors import ClaimLost, DatabaseUnavailable
from storage.status import RunStatus
from storage.store import RunStore

log = logging.getLogger(__name__)

WRITE_EVERY_S = 1.0
STOP_POLL_S = 0.5
HEARTBEAT_S = 5.0
RETRY_MAX_S = 5.0  # the longest wait between tries while the database is away
OUTAGE_LIMIT_S = 15 * 60.0


def outage_limit_s() -> float:
    """How long a run trains on without its database before it stops with a checkpoint:
    ``GPTDASH_OUTAGE_LIMIT_S``, default 15 minutes."""
    raw = os.environ.get("GPTDASH_OUTAGE_LIMIT_S")
    try:
        return float(raw) if raw else OUTAGE_LIMIT_S
    except ValueError:
        log.warning("GPTDASH_OUTAGE_LIMIT_S=%r is not a number of seconds; using %.0f",
                    raw, OUTAGE_LIMIT_S)
        return OUTAGE_LIMIT_S


class StoreCallbacks(TrainerCallbacks):
    """Records metrics, samples, checkpoints and status of ``run_id``, owned by ``claim``."""

    def __init__(self, store: RunStore, run_id: int, claim: int,
                 stop_event: threading.Event | None = None):
        self.store = store
        self.run_id = run_id
        self.claim = claim
        self.stop_event = stop_event or threading.Event()
        self._rows: list[tuple[str, int, float, float]] = []
        self._lock = threading.Lock()  # guards _rows and the summaries
        self._write_lock = threading.Lock()  # one writer at a time, in order
        self._summary: dict[str, Any] = {}
        self._last_stop_poll = 0.0
        self._last_beat = 0.0
        self._tokens_per_step = 0
        # The training time of earlier attempts, and this attempt's clock.
        self._trained_before = store.get_run(run_id).trained_s or 0.0
        self._attempt_start = time.monotonic()
        self._closed = threading.Event()
        self._cut_at = self._cut_points()  # steps still to compare with the sweep at
        self._cut_due: int | None = None  # an evaluation step to compare once it is written
        self.cut_reason: str | None = None
        self.outage_reason: str | None = None  # why the run stopped itself in an outage
        self._outbox = Outbox(home.checkpoints_dir(run_id) / "outbox.jsonl")
        self._outage = Outage(log)
        self._outage_limit_s = outage_limit_s()
        self._next_try = 0.0  # monotonic time of the next try while the database is away
        self._tries = 0  # failed tries in this outage, for the back-off
        self._lost: ClaimLost | None = None  # the run became another process's
        self._writer = threading.Thread(target=self._write_loop, name=f"metrics-writer-{run_id}",
                                        daemon=True)
        self._writer.start()

    # ---- trainer hooks ----------------------------------------------------------------
    def on_start(self, info: dict[str, Any]) -> None:
        # What an earlier attempt recorded past the step this one starts from died with it:
        # the curve goes on from the checkpoint (a restart from step 0 starts it afresh).
        start = info.get("start_step", 0)
        self.store.discard_after(self.run_id, start if start > 0 else -1, claim=self.claim)
        if start > 0:  # the best so far counts the evaluations before the checkpoint too
            vals = self.store.metrics([self.run_id], [VAL_LOSS], max_step=start)["value"]
            if vals.notna().any():
                self._summary["best_val_loss"] = float(vals.min())
        self.store.update_run(self.run_id, claim=self.claim, device=info["device"],
                              n_params=info["n_params"], max_steps=info["max_steps"],
                              last_step=start, best_val_loss=self._summary.get("best_val_loss"))
        # A resumed run was compared at the cut points it had passed.
        self._cut_at = [s for s in self._cut_at
                        if info.get("start_step", 0) < s < info["max_steps"]]

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        now = time.time()
        with self._lock:
            self._rows.extend((key, step, float(value), now) for key, value in metrics.items())
            s = self._summary
            s["last_step"] = max(s.get("last_step", 0), step)
            if TRAIN_LOSS in metrics and math.isfinite(metrics[TRAIN_LOSS]):
                s["last_train_loss"] = float(metrics[TRAIN_LOSS])
            if TOKENS_SEEN in metrics:
                s["tokens_seen"] = int(metrics[TOKENS_SEEN])
            val = metrics.get(VAL_LOSS)
            if val is not None and math.isfinite(val):
                best = s.get("best_val_loss")
                s["best_val_loss"] = val if best is None else min(best, val)
        if val is not None and self._cut_at and step >= self._cut_at[0]:
            self._cut_at = [s for s in self._cut_at if s > step]
            self._cut_due = step  # compared in flush(), once this evaluation is written

    # Rare writes (a sample, a checkpoint, a spike, a new best, a status) are written at
    # once, so the pages show them; behind any metric rows still waiting, to keep the order.
    def on_sample(self, step: int, prompt: str, text: str) -> None:
        self._queue_rows()
        self._outbox.put("sample", step=step, prompt=prompt, text=text)
        self._write()

    def before_checkpoint(self) -> None:
        """ClaimLost once another process owns the run, so its checkpoint files stay that
        process's; while the database is away the save goes on (as training does)."""
        if self._lost is not None:
            raise self._lost
        if self.claim is None or self._outage.down:
            return
        try:
            self.store.check_claim(self.run_id, self.claim)
        except ClaimLost as exc:
            self._lost = exc
            raise
        except DatabaseUnavailable as exc:
            self._went_away(exc)

    def on_checkpoint(self, step: int, path: Path) -> None:
        self._queue_rows()
        self._outbox.put("update", fields={"checkpoint_path": str(path)})
        self._write()

    def on_event(self, step: int, kind: str, message: str) -> None:
        self._queue_rows()
        self._outbox.put("event", step=step, kind=kind, message=message, wall_time=time.time())
        self._write()

    def on_status(self, status: str, message: str | None = None) -> None:
        if status == RunStatus.STOPPED and self.cut_reason:
            message = self.cut_reason  # the stop was the sweep's cut, not a person's request
        elif status == RunStatus.STOPPED and self.outage_reason:
            message = self.outage_reason
        self._queue_rows()
        self._outbox.put("status", status=str(status),
                         error=message if status != RunStatus.RUNNING else None)
        self._write()

    def flush(self) -> None:
        # The sweep's cut reads this evaluation from the database: it must be written first.
        self._write(block=self._cut_due is not None)
        if self._cut_due is not None and not self._outage.down:
            step, self._cut_due = self._cut_due, None
            self._check_cut(step)

    def should_stop(self) -> bool:
        if self._lost is not None:
            raise self._lost
        if self.stop_event.is_set():
            return True
        now = time.monotonic()
        # The stop flag lives on the run row (so the CLI and other processes can set it);
        # polling it at most twice a second keeps the step free of database reads.
        if now - self._last_stop_poll >= STOP_POLL_S and not self._outage.down:
            self._last_stop_poll = now
            try:
                if self.store.stop_requested(self.run_id, claim=self.claim):
                    self.stop_event.set()
            except DatabaseUnavailable as exc:
                self._went_away(exc)
        if self._outage.down and self._outage.down_for() > self._outage_limit_s:
            minutes = self._outage_limit_s / 60
            self.outage_reason = (
                f"the database was unreachable for over {minutes:g} min (GPTDASH_OUTAGE_LIMIT_S)"
                "; stopped with a checkpoint: resume it to continue")
            log.warning("run %s: %s", self.run_id, self.outage_reason)
            self.stop_event.set()
        return self.stop_event.is_set()

    # ---- the sweep's cut ------------------------------------------------------------------
    def _cut_points(self) -> list[int]:
        try:
            return halving.cut_points(self.store, self.run_id)
        except Exception:  # noqa: BLE001 - no cut is better than no training
            log.warning("run %s: cannot read its sweep; it will not be cut", self.run_id,
                        exc_info=True)
            return []

    def _check_cut(self, step: int) -> None:
        """Stop the run when its forecast at ``step`` is confidently worse than the best of
        its sweep: an ``early_stop`` event, and the trainer stops after its next step."""
        try:
            reason = halving.cut_reason(self.store, self.run_id, upto=step)
            if reason:
                self.store.log_event(self.run_id, step, "early_stop", reason, time.time(),
                                     claim=self.claim)
        except Exception:  # noqa: BLE001 - a failed comparison must not end the training
            log.warning("run %s: sweep cut check at step %s failed", self.run_id, step,
                        exc_info=True)
            return
        if reason:
            self.cut_reason = reason
            self.stop_event.set()

    # ---- writing ------------------------------------------------------------------------
    def _queue_rows(self) -> None:
        """Move the metric rows reported so far, and the summaries, behind what is queued."""
        with self._lock:
            rows, self._rows = self._rows, []
            summary = dict(self._summary)
        if rows:
            self._outbox.put("metrics", rows=[list(row) for row in rows])
            trained = self._trained_before + time.monotonic() - self._attempt_start
            self._outbox.put("update", fields={**summary, "trained_s": trained})

    def _write(self, *, block: bool = False, wait: bool = False) -> None:
        """Write what is queued, in order. While the database is away the writes stay
        queued (tried again with back-off) and training goes on; ``wait``: until written.

        Unless ``block`` or ``wait``, a write already under way (the writer thread's,
        perhaps waiting on a locked database) takes what was queued: the training step does
        not wait for it."""
        if not self._write_lock.acquire(blocking=block or wait):
            self._queue_rows()
            return
        try:
            self._queue_rows()
            while True:
                if self._lost is not None:
                    raise self._lost
                if self._try_write() or not wait:
                    return
                time.sleep(max(0.05, self._next_try - time.monotonic()))
        finally:
            self._write_lock.release()

    def _try_write(self) -> bool:
        """One try at writing everything queued; whether it all went (caller holds the
        write lock)."""
        if self._outage.down and time.monotonic() < self._next_try:
            return False
        try:
            if self._outage.down:
                # Proof of life first: whoever looked while we were away sees we trained on.
                self.claim = self.store.beat_after_outage(self.run_id, self.claim)
                self._last_beat = time.monotonic()
            written = self._outbox.drain(self._apply)
            if time.monotonic() - self._last_beat >= HEARTBEAT_S:
                self._last_beat = time.monotonic()
                self.store.heartbeat(self.run_id, claim=self.claim)
        except DatabaseUnavailable as exc:
            self._went_away(exc)
            return False
        except ClaimLost as exc:
            self._lost = exc
            self.stop_event.set()
            raise
        if self._outage.down:
            took = self._outage.back(f"run {self.run_id}: {written} rows written")
            self._outbox.put("event", step=self._summary.get("last_step", 0), kind="outage",
                             message=f"database unreachable for {took:.1f} s; trained on, "
                                     f"{written} rows kept and written",
                             wall_time=time.time())
            return self._try_write()
        return True

    def _went_away(self, exc: DatabaseUnavailable) -> None:
        first = self._outage.failed(
            exc, f"run {self.run_id} trains on, {self._outbox.pending()} rows kept; "
                 "a stop request cannot be seen until it is back")
        self._tries = 0 if first else self._tries + 1
        self._next_try = time.monotonic() + min(RETRY_MAX_S, 0.5 * 2 ** self._tries)

    def _apply(self, op: Op) -> None:
        """One queued write, made so that doing it twice records it once."""
        a = op.args
        if op.kind == "metrics":
            self.store.log_metrics(self.run_id, [tuple(row) for row in a["rows"]],
                                   claim=self.claim)
        elif op.kind == "update":
            self.store.update_run(self.run_id, claim=self.claim, **a["fields"])
        elif op.kind == "sample":
            self.store.log_sample(self.run_id, a["step"], a["prompt"], a["text"],
                                  claim=self.claim, once=True)
        elif op.kind == "event":
            self.store.log_event(self.run_id, a["step"], a["kind"], a["message"],
                                 a["wall_time"], claim=self.claim, once=True)
        elif op.kind == "status":
            self.store.set_status(self.run_id, a["status"], claim=self.claim, error=a["error"])
        else:
            raise ValueError(f"unknown outbox write {op.kind!r}")

    def _write_loop(self) -> None:
        while not self._closed.wait(WRITE_EVERY_S):
            try:
                self._write()
            except Exception:  # noqa: BLE001 - a lost claim is raised to the trainer
                pass

    def close(self) -> None:
        """Stop the writer thread after a last write, waiting for a database that is away
        (the run's last rows and its final status must not be lost)."""
        self._closed.set()
        self._writer.join(timeout=5)
        if self._outage.down or self._outbox.pending():
            log.warning("run %s: waiting for the database to write its last %d rows",
                        self.run_id, self._outbox.pending())
        self._write(wait=True)


class Chain(TrainerCallbacks):
    """The store callbacks first, then another listener (e.g. the CLI's progress bar).

    The other listener only displays: when its terminal has gone (SIGHUP, and writes fail
    with EIO) it is dropped, rather than the run failing on it.
    """

    def __init__(self, primary: StoreCallbacks, other: TrainerCallbacks):
        self.primary, self.other = primary, other

    def _tell_other(self, hook: str, *args) -> None:
        if self.other is None:
            return
        try:
            getattr(self.other, hook)(*args)
        except OSError as exc:
            log.info("run %s: its display is gone (%s); training goes on", self.primary.run_id,
                     exc)
            self.other = None

    def on_prepare(self, progress):
        self.primary.on_prepare(progress)
        self._tell_other("on_prepare", progress)

    def on_start(self, info):
        self.primary.on_start(info)
        self._tell_other("on_start", info)

    def on_metrics(self, step, metrics):
        self.primary.on_metrics(step, metrics)
        self._tell_other("on_metrics", step, metrics)

    def on_sample(self, step, prompt, text):
        self.primary.on_sample(step, prompt, text)
        self._tell_other("on_sample", step, prompt, text)

    def before_checkpoint(self):
        self.primary.before_checkpoint()

    def on_checkpoint(self, step, path):
        self.primary.on_checkpoint(step, path)
        self._tell_other("on_checkpoint", step, path)

    def on_event(self, step, kind, message):
        self.primary.on_event(step, kind, message)
        self._tell_other("on_event", step, kind, message)

    def on_status(self, status, message=None):
        self.primary.on_status(status, message)
        self._tell_other("on_status", status, message)

    def flush(self):
        self.primary.flush()

    def should_stop(self):
        return self.primary.should_stop() or bool(self.other and self.other.should_stop())

    def close(self):
        self.primary.close()
