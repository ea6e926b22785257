"""The Workers view's table: each worker, what it trains, and whether it is still alive."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pandas as pd

from storage.names import one_line
from ui.format import human_duration

WORKER_COLUMNS = ["name", "state", "device", "host", "pid", "run", "last heartbeat",
                  "up for"]
# Workers that are gone: every restart of `gptdash serve` and every `gptdash worker` ever
# started leaves one, so the view shows them only on request.
ENDED_STATES = ("stopped", "lost")


def worker_state(status: str, heartbeat_age_s: float | None, dead_after_s: float) -> str:
    """What to show for a worker: its own status, or ``lost`` once it has gone silent."""
    if status == "stopped":
        return "stopped"
    if heartbeat_age_s is None or heartbeat_age_s > dead_after_s:
        return "lost"
    return status


def workers_table(workers: Sequence[Any], now: datetime, dead_after_s: float) -> pd.DataFrame:
    """One row per worker (records with name, host, pid, device, status, current_run_id,
    started_at, heartbeat_at), living ones first, newest heartbeat first."""
    rows = []
    for w in workers:
        age = (now - w.heartbeat_at).total_seconds() if w.heartbeat_at else None
        state = worker_state(w.status, age, dead_after_s)
        rows.append({
            "name": one_line(w.name), "state": state, "device": w.device or "—", "host": w.host,
            "pid": w.pid,
            "run": f"#{w.current_run_id}" if w.current_run_id and state == "training" else "—",
            "last heartbeat": f"{human_duration(age)} ago" if age is not None else "never",
            "up for": human_duration((now - w.started_at).total_seconds())
            if w.started_at and state not in ENDED_STATES else "—",
            "_order": (state in ENDED_STATES, age if age is not None else float("inf")),
        })
    rows.sort(key=lambda r: r["_order"])
    return pd.DataFrame([{k: r[k] for k in WORKER_COLUMNS} for r in rows],
                        columns=WORKER_COLUMNS)
