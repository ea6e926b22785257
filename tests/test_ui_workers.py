"""The Workers view's table: states, order and what each column says."""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from ui.workers import WORKER_COLUMNS, worker_state, workers_table

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


@dataclass
class W:
    name: str
    status: str
    heartbeat_at: datetime | None
    current_run_id: int | None = None
    host: str = "box"
    pid: int = 1
    device: str | None = "cpu"
    started_at: datetime | None = NOW - timedelta(hours=1)


def test_a_silent_worker_is_lost_and_a_stopped_one_stays_stopped():
    assert worker_state("training", 5.0, 60.0) == "training"
    assert worker_state("idle", 61.0, 60.0) == "lost"
    assert worker_state("training", None, 60.0) == "lost"
    assert worker_state("stopped", 5000.0, 60.0) == "stopped"


def test_living_workers_come_first_and_only_a_training_one_names_its_run():
    table = workers_table([
        W("old", "training", NOW - timedelta(minutes=5), current_run_id=3),
        W("busy", "training", NOW - timedelta(seconds=2), current_run_id=7),
        W("idle", "idle", NOW - timedelta(seconds=4)),
    ], NOW, 60.0)
    assert list(table.columns) == WORKER_COLUMNS
    assert list(table["name"]) == ["busy", "idle", "old"]
    assert list(table["state"]) == ["training", "idle", "lost"]
    assert list(table["run"]) == ["#7", "—", "—"]
    assert table["last heartbeat"].iloc[0] == "2.0 s ago"
    assert table["up for"].iloc[2] == "—"


def test_no_workers_is_an_empty_table_with_the_columns():
    table = workers_table([], NOW, 60.0)
    assert table.empty and list(table.columns) == WORKER_COLUMNS
