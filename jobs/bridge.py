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
"""

from __future__ import annotations

import logging
import math
import threading
import time
from pathlib import Path
from typing import Any

from gptcore.callbacks import TrainerCallbacks
from gptcore.metric_keys import TOKENS_SEEN, TRAIN_LOSS, VAL_LOSS
from jobs import halving
from storage.status import RunStatus
from storage.store import RunStore

log = logging.getLogger(__name__)

WRITE_EVERY_S = 1.0
STOP_POLL_S = 0.5
HEARTBEAT_S = 5.0


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

    def on_sample(self, step: int, prompt: str, text: str) -> None:
        self.store.log_sample(self.run_id, step, prompt, text, claim=self.claim)

    def on_checkpoint(self, step: int, path: Path) -> None:
        self.store.update_run(self.run_id, claim=self.claim, checkpoint_path=str(path))

    def on_event(self, step: int, kind: str, message: str) -> None:
        # Rare (a spike, a roll-back, a new best): written at once, so the charts show it.
        self.store.log_event(self.run_id, step, kind, message, time.time(), claim=self.claim)

    def on_status(self, status: str, message: str | None = None) -> None:
        if status == RunStatus.STOPPED and self.cut_reason:
            message = self.cut_reason  # the stop was the sweep's cut, not a person's request
        self.store.set_status(self.run_id, status, claim=self.claim,
                              error=message if status != RunStatus.RUNNING else None)

    def flush(self) -> None:
        self._write()
        if self._cut_due is not None:
            step, self._cut_due = self._cut_due, None
            self._check_cut(step)

    def should_stop(self) -> bool:
        if self.stop_event.is_set():
            return True
        now = time.monotonic()
        # The stop flag lives on the run row (so the CLI and other processes can set it);
        # polling it at most twice a second keeps the step free of database reads.
        if now - self._last_stop_poll >= STOP_POLL_S:
            self._last_stop_poll = now
            if self.store.stop_requested(self.run_id, claim=self.claim):
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
    def _write(self) -> None:
        with self._write_lock:
            with self._lock:
                rows, self._rows = self._rows, []
                summary = dict(self._summary)
            if rows:
                try:
                    self.store.log_metrics(self.run_id, rows, claim=self.claim)
                except Exception:
                    with self._lock:  # keep them for the next try rather than lose them
                        self._rows = rows + self._rows
                    raise
            trained = self._trained_before + time.monotonic() - self._attempt_start
            self.store.update_run(self.run_id, claim=self.claim, **summary, trained_s=trained)
            now = time.monotonic()
            if now - self._last_beat >= HEARTBEAT_S:
                # Proof of life for whoever checks from another process or machine.
                self._last_beat = now
                self.store.heartbeat(self.run_id, claim=self.claim)

    def _write_loop(self) -> None:
        while not self._closed.wait(WRITE_EVERY_S):
            try:
                self._write()
            except Exception:  # noqa: BLE001 - retried at the next tick and at flush()
                pass

    def close(self) -> None:
        """Stop the writer thread after a last write."""
        self._closed.set()
        self._writer.join(timeout=5)
        self._write()


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

    def on_start(self, info):
        self.primary.on_start(info)
        self._tell_other("on_start", info)

    def on_metrics(self, step, metrics):
        self.primary.on_metrics(step, metrics)
        self._tell_other("on_metrics", step, metrics)

    def on_sample(self, step, prompt, text):
        self.primary.on_sample(step, prompt, text)
        self._tell_other("on_sample", step, prompt, text)

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
