"""Workers: registration, heartbeats with status and current run, stopping."""

from __future__ import annotations

import pytest

from storage.errors import StorageError
from storage.store import RunStore, WorkerRecord

# Every test here runs on SQLite and on PostgreSQL (see conftest.pytest_generate_tests).
pytestmark = pytest.mark.backends("sqlite", "postgresql")


def test_register_worker_round_trip(store: RunStore) -> None:
    assert store.workers() == []
    store.register_worker("h:2", host="h", pid=2, device="cuda:0")
    store.register_worker("h:1", host="h", pid=1, device=None)
    first, second = store.workers()
    assert isinstance(first, WorkerRecord)
    assert (first.name, first.host, first.pid, first.device) == ("h:1", "h", 1, None)
    assert (second.name, second.device, second.status) == ("h:2", "cuda:0", "idle")
    assert second.current_run_id is None
    assert second.started_at.tzinfo is not None and second.heartbeat_at >= second.started_at


def test_register_again_takes_the_row_over(store: RunStore) -> None:
    run_id = store.create_run("r", {})
    store.register_worker("w", host="h", pid=1, device="cpu")
    store.worker_beat("w", status="training", current_run_id=run_id)
    store.register_worker("w", host="h2", pid=9, device="cuda:1")
    (worker,) = store.workers()
    assert (worker.host, worker.pid, worker.device) == ("h2", 9, "cuda:1")
    assert (worker.status, worker.current_run_id) == ("idle", None)


def test_worker_beat_and_stopped(store: RunStore) -> None:
    run_id = store.create_run("r", {})
    store.register_worker("w", host="h", pid=1, device="cpu")
    registered = store.workers()[0]
    store.worker_beat("w", status="training", current_run_id=run_id)
    training = store.workers()[0]
    assert (training.status, training.current_run_id) == ("training", run_id)
    assert training.heartbeat_at >= registered.heartbeat_at
    assert training.started_at == registered.started_at
    store.worker_stopped("w")
    stopped = store.workers()[0]
    assert (stopped.status, stopped.current_run_id) == ("stopped", None)


def test_worker_beat_rejects_unknown_status_and_worker(store: RunStore) -> None:
    store.register_worker("w", host="h", pid=1, device=None)
    with pytest.raises(ValueError, match="unknown worker status 'busy'"):
        store.worker_beat("w", status="busy", current_run_id=None)
    with pytest.raises(StorageError, match="worker 'ghost' is not registered"):
        store.worker_beat("ghost", status="idle", current_run_id=None)
    with pytest.raises(StorageError, match="worker 'ghost' is not registered"):
        store.worker_stopped("ghost")


def test_deleting_its_run_clears_the_workers_current_run(store: RunStore) -> None:
    run_id = store.create_run("r", {}, status="completed")
    store.register_worker("w", host="h", pid=1, device=None)
    store.worker_beat("w", status="training", current_run_id=run_id)
    store.delete_run(run_id)
    assert store.workers()[0].current_run_id is None
