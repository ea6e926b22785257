"""Events: markers on a run's charts, logged and read back in order."""

from __future__ import annotations

import time

import pytest

from storage.errors import StorageError
from storage.store import EVENT_COLUMNS, RunStore

# Every test here runs on SQLite and on PostgreSQL (see conftest.pytest_generate_tests).
pytestmark = pytest.mark.backends("sqlite", "postgresql")


def test_events_round_trip_sorted_by_run_and_step(store: RunStore) -> None:
    a, b = store.create_run("a", {}), store.create_run("b", {})
    store.log_event(b, 30, "best", "val/loss 2.1", wall_time=3.0)
    store.log_event(a, 20, "spike", "train/loss jumped to 9.5", wall_time=2.0)
    store.log_event(a, 10, "rollback", "back to step 0", wall_time=1.0)
    before = time.time()
    store.log_event(b, 5, "early_stop", "no progress")

    frame = store.events([b, a])
    assert list(frame.columns) == EVENT_COLUMNS
    assert list(zip(frame["run_id"], frame["step"], frame["kind"], strict=True)) == [
        (a, 10, "rollback"), (a, 20, "spike"), (b, 5, "early_stop"), (b, 30, "best")]
    assert frame.iloc[1]["message"] == "train/loss jumped to 9.5"
    assert frame.iloc[0]["wall_time"] == 1.0
    assert frame.iloc[2]["wall_time"] >= before  # defaults to now
    assert list(store.events([a])["run_id"]) == [a, a]


def test_events_empty(store: RunStore) -> None:
    run_id = store.create_run("quiet", {})
    assert store.events([run_id]).empty
    frame = store.events([])
    assert frame.empty and list(frame.columns) == EVENT_COLUMNS


def test_log_event_for_missing_run(store: RunStore) -> None:
    with pytest.raises(StorageError, match="run 8 does not exist"):
        store.log_event(8, 1, "spike", "x")


def test_deleting_a_run_deletes_its_events(store: RunStore) -> None:
    gone, kept = store.create_run("gone", {}, status="completed"), store.create_run("kept", {})
    store.log_event(gone, 1, "spike", "x")
    store.log_event(kept, 1, "spike", "y")
    store.delete_run(gone)
    assert list(store.events([gone, kept])["run_id"]) == [kept]


def test_event_count_moves_with_each_event_and_counts_only_the_runs_asked(store):
    a = store.create_run("a", {}, status="running", max_steps=10)
    b = store.create_run("b", {}, status="running", max_steps=10)
    assert store.event_count([a]) == 0 and store.event_count([]) == 0
    store.log_event(a, 5, "spike", "loss 8.0 at step 5")
    store.log_event(a, 3, "rollback", "back to step 3")  # an older step: still counted
    store.log_event(b, 1, "best_checkpoint", "val 2.0")
    assert store.event_count([a]) == 2 and store.event_count([a, b]) == 3


@pytest.mark.backends("sqlite", "postgresql")
def test_an_event_written_once_is_not_doubled_by_a_retry_or_a_resumed_evaluation(store):
    run_id = store.create_run("r", {}, max_steps=2000)
    best = "val loss 1.4302 at step 1000 is the best so far; saved best.pt"
    store.log_event(run_id, 1000, "best_checkpoint", best, 100.0, once=True)
    # The attempt resumed from step 1000's checkpoint evaluates step 1000 again, later.
    store.log_event(run_id, 1000, "best_checkpoint", best, 160.0, once=True)
    store.log_event(run_id, 1000, "spike", "loss 9.1 at step 1000", 161.0, once=True)
    events = store.events([run_id])
    assert list(zip(events["kind"], events["step"], strict=True)) == [
        ("best_checkpoint", 1000), ("spike", 1000)]
    store.log_event(run_id, 1000, "spike", "loss 9.1 at step 1000", 170.0)  # not once: kept
    assert len(store.events([run_id])) == 3
