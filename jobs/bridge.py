"""Trainer callbacks that record a run in the RunStore.

Metric rows are buffered and written by a small writer thread, so the
training thread never waits on the database between evaluations. ``flush()``
(every evaluation and the end) writes synchronously, so nothing reported is
lost on a normal or failed end.
"""

from __future__ import annotations

import math
import threading
import time
from pathlib import Path
from typing import Any

from gptcore.trainer import TrainerCallbacks
from storage.store import RunStore

WRITE_EVERY_S = 1.0
STOP_POLL_S = 0.5
HEARTBEAT_S = 5.0


class StoreCallbacks(TrainerCallbacks):
    """Records metrics, samples, checkpoints and status of ``run_id``."""

    def __init__(self, store: RunStore, run_id: int, stop_event: threading.Event | None = None):
        self.store = store
        self.run_id = run_id
        self.stop_event = stop_event or threading.Event()
        self._rows: list[tuple[str, int, float, float]] = []
        self._lock = threading.Lock()  # guards _rows and the summaries
        self._write_lock = threading.Lock()  # one writer at a time, in order
        self._summary: dict[str, Any] = {}
        self._last_stop_poll = 0.0
        self._last_beat = 0.0
        self._tokens_per_step = 0
        self._closed = threading.Event()
        self._writer = threading.Thread(target=self._write_loop, name=f"metrics-writer-{run_id}",
                                        daemon=True)
        self._writer.start()

    # ---- trainer hooks ----------------------------------------------------------------
    def on_start(self, info: dict[str, Any]) -> None:
        self.store.update_run(self.run_id, device=info["device"], n_params=info["n_params"],
                              max_steps=info["max_steps"])

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        now = time.time()
        with self._lock:
            self._rows.extend((key, step, float(value), now) for key, value in metrics.items())
            s = self._summary
            s["last_step"] = max(s.get("last_step", 0), step)
            if "train/loss" in metrics and math.isfinite(metrics["train/loss"]):
                s["last_train_loss"] = float(metrics["train/loss"])
            if "tokens_seen" in metrics:
                s["tokens_seen"] = int(metrics["tokens_seen"])
            val = metrics.get("val/loss")
            if val is not None and math.isfinite(val):
                best = s.get("best_val_loss")
                s["best_val_loss"] = val if best is None else min(best, val)

    def on_sample(self, step: int, prompt: str, text: str) -> None:
        self.store.log_sample(self.run_id, step, prompt, text)

    def on_checkpoint(self, step: int, path: Path) -> None:
        self.store.update_run(self.run_id, checkpoint_path=str(path))

    def on_event(self, step: int, kind: str, message: str) -> None:
        # Rare (a spike, a roll-back, a new best): written at once, so the charts show it.
        self.store.log_event(self.run_id, step, kind, message, time.time())

    def on_status(self, status: str, message: str | None = None) -> None:
        self.store.set_status(self.run_id, status, error=message if status != "running" else None)

    def flush(self) -> None:
        self._write()

    def should_stop(self) -> bool:
        if self.stop_event.is_set():
            return True
        now = time.monotonic()
        # The stop flag lives on the run row (so the CLI and other processes can set it);
        # polling it at most twice a second keeps the step free of database reads.
        if now - self._last_stop_poll >= STOP_POLL_S:
            self._last_stop_poll = now
            if self.store.stop_requested(self.run_id):
                self.stop_event.set()
        return self.stop_event.is_set()

    # ---- writing ------------------------------------------------------------------------
    def _write(self) -> None:
        with self._write_lock:
            with self._lock:
                rows, self._rows = self._rows, []
                summary = dict(self._summary)
            if rows:
                try:
                    self.store.log_metrics(self.run_id, rows)
                except Exception:
                    with self._lock:  # keep them for the next try rather than lose them
                        self._rows = rows + self._rows
                    raise
            if summary:
                self.store.update_run(self.run_id, **summary)
            now = time.monotonic()
            if now - self._last_beat >= HEARTBEAT_S:
                # Proof of life for whoever checks from another process or machine.
                self._last_beat = now
                self.store.heartbeat(self.run_id)

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
    """The store callbacks first, then another listener (e.g. the CLI's progress bar)."""

    def __init__(self, primary: StoreCallbacks, other: TrainerCallbacks):
        self.primary, self.other = primary, other

    def on_start(self, info):
        self.primary.on_start(info)
        self.other.on_start(info)

    def on_metrics(self, step, metrics):
        self.primary.on_metrics(step, metrics)
        self.other.on_metrics(step, metrics)

    def on_sample(self, step, prompt, text):
        self.primary.on_sample(step, prompt, text)
        self.other.on_sample(step, prompt, text)

    def on_checkpoint(self, step, path):
        self.primary.on_checkpoint(step, path)
        self.other.on_checkpoint(step, path)

    def on_event(self, step, kind, message):
        self.primary.on_event(step, kind, message)
        self.other.on_event(step, kind, message)

    def on_status(self, status, message=None):
        self.primary.on_status(status, message)
        self.other.on_status(status, message)

    def flush(self):
        self.primary.flush()

    def should_stop(self):
        return self.primary.should_stop() or self.other.should_stop()

    def close(self):
        self.primary.close()
