"""The queue: claiming with an owner, heartbeats, and recovering runs whose owner is gone."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import text

from storage.errors import StorageError
from storage.store import RunStore

# Every test here runs on SQLite and on PostgreSQL (see conftest.pytest_generate_tests).
pytestmark = pytest.mark.backends("sqlite", "postgresql")

HOST = "this-host"


def _alive(*pids: int):
    """A pid_alive for recover_orphans: only these pids are alive."""
    return lambda pid: pid in pids


def _age(store: RunStore, run_id: int, seconds: float) -> None:
    """Make the run's last heartbeat (and start) ``seconds`` old."""
    run = store.get_run(run_id)
    store.update_run(run_id, heartbeat_at=run.heartbeat_at - timedelta(seconds=seconds),
                     started_at=run.started_at - timedelta(seconds=seconds))


def test_claim_next_queued_records_owner_and_heartbeat(store: RunStore) -> None:
    first, second = store.create_run("a", {}), store.create_run("b", {})
    store.set_status(first, "failed", error="old")
    store.set_status(first, "queued")

    assert store.claim_next_queued("w1", host=HOST, pid=41).run_id == first
    run = store.get_run(first)
    assert (run.status, run.worker, run.owner_host, run.owner_pid) == ("running", "w1", HOST, 41)
    assert run.heartbeat_at is not None and run.started_at is not None
    assert (run.finished_at, run.error) == (None, None)
    # Without host and pid (the old signature) the run is still claimed.
    assert store.claim_next_queued("w2").run_id == second
    assert (store.get_run(second).worker, store.get_run(second).owner_pid) == ("w2", None)
    assert store.claim_next_queued("w1", host=HOST, pid=41) is None


def test_claim_keeps_the_first_start_time(store: RunStore) -> None:
    run_id = store.create_run("resumed", {})
    store.set_status(run_id, "running")
    started = store.get_run(run_id).started_at
    store.set_status(run_id, "interrupted")
    store.set_status(run_id, "queued")
    assert store.claim_next_queued("w", host=HOST, pid=1).run_id == run_id
    assert store.get_run(run_id).started_at == started


def test_claim_run_owns_a_foreground_run(store: RunStore) -> None:
    run_id = store.create_run("cli", {})
    store.claim_run(run_id, "cli-worker", host=HOST, pid=77)
    run = store.get_run(run_id)
    assert (run.status, run.worker, run.owner_host, run.owner_pid) == (
        "running", "cli-worker", HOST, 77)
    assert run.started_at is not None and run.heartbeat_at is not None
    with pytest.raises(StorageError, match="run 999 does not exist"):
        store.claim_run(999, "w", host=HOST, pid=1)


def test_heartbeat_moves_only_while_running(store: RunStore) -> None:
    run_id = store.create_run("r", {})
    store.claim_run(run_id, "w", host=HOST, pid=1)
    _age(store, run_id, 60)
    old = store.get_run(run_id).heartbeat_at
    store.heartbeat(run_id)
    beat = store.get_run(run_id).heartbeat_at
    assert beat - old >= timedelta(seconds=59)

    store.set_status(run_id, "completed")
    store.heartbeat(run_id)
    assert store.get_run(run_id).heartbeat_at == beat
    store.heartbeat(12345)  # a deleted run: nothing to beat, no error


def test_recover_orphans_dead_pid_on_this_host_at_once(store: RunStore) -> None:
    dead = store.create_run("dead", {})
    alive = store.create_run("alive", {})
    store.claim_run(dead, "w-dead", host=HOST, pid=100)
    store.claim_run(alive, "w-alive", host=HOST, pid=200)

    assert store.recover_orphans(host=HOST, pid_alive=_alive(200), dead_after_s=3600) == [dead]
    run = store.get_run(dead)
    assert run.status == "interrupted" and run.finished_at is not None
    assert "w-dead" in run.error and "pid 100" in run.error and "resume" in run.error
    assert store.get_run(alive).status == "running"


def test_recover_orphans_other_host_with_stale_heartbeat(store: RunStore) -> None:
    stale = store.create_run("stale", {})
    fresh = store.create_run("fresh", {})
    store.claim_run(stale, "far-worker", host="other-host", pid=100)
    store.claim_run(fresh, "near-worker", host="other-host", pid=100)
    _age(store, stale, 120)

    # The pid belongs to another machine: whether it is alive here says nothing.
    assert store.recover_orphans(host=HOST, pid_alive=_alive(), dead_after_s=60) == [stale]
    run = store.get_run(stale)
    assert run.status == "interrupted"
    assert "no heartbeat from far-worker" in run.error
    assert store.get_run(fresh).status == "running"


def test_recover_orphans_leaves_fresh_heartbeats_alone(store: RunStore) -> None:
    here = store.create_run("here", {})
    there = store.create_run("there", {})
    store.claim_run(here, "w", host=HOST, pid=300)
    store.claim_run(there, "w2", host="other-host", pid=300)
    queued = store.create_run("queued", {})
    assert store.recover_orphans(host=HOST, pid_alive=_alive(300), dead_after_s=60) == []
    assert [store.get_run(i).status for i in (here, there, queued)] == [
        "running", "running", "queued"]


def test_recover_orphans_uses_start_time_without_heartbeat(store: RunStore) -> None:
    # A run set running by code that never beats (e.g. a release before heartbeats).
    old = store.create_run("old", {})
    store.update_run(old, status="running", worker="legacy:1")
    store.update_run(old, started_at=store.get_run(old).started_at - timedelta(minutes=5))
    young = store.create_run("young", {})
    store.update_run(young, status="running", worker="legacy:2")

    assert store.recover_orphans(host=HOST, pid_alive=_alive(), dead_after_s=60) == [old]
    assert store.get_run(young).status == "running"


def test_recover_orphans_skips_a_run_that_beats_meanwhile(store: RunStore) -> None:
    run_id = store.create_run("r", {})
    store.claim_run(run_id, "w", host=HOST, pid=400)

    def beats_then_dies(pid: int) -> bool:
        store.heartbeat(run_id)  # the owner beats between the read and the update
        return False

    assert store.recover_orphans(host=HOST, pid_alive=beats_then_dies, dead_after_s=60) == []
    assert store.get_run(run_id).status == "running"


def test_recover_orphans_skips_a_run_that_finished_meanwhile(store: RunStore) -> None:
    run_id = store.create_run("r", {})
    store.claim_run(run_id, "w", host=HOST, pid=400)

    def finishes_then_dies(pid: int) -> bool:
        store.set_status(run_id, "completed")
        return False

    assert store.recover_orphans(host=HOST, pid_alive=finishes_then_dies, dead_after_s=60) == []
    assert store.get_run(run_id).status == "completed"


@pytest.mark.backends("postgresql")
def test_claim_skips_a_run_another_claimer_holds_locked(store: RunStore) -> None:
    first, second = store.create_run("a", {}), store.create_run("b", {})
    with store.engine.connect() as other, ThreadPoolExecutor(1) as pool:
        # Another worker, mid-claim of the oldest run, holds its row lock.
        other.execute(text("SELECT id FROM runs WHERE id = :id FOR UPDATE"), {"id": first})
        claim = pool.submit(store.claim_next_queued, "w", host=HOST, pid=1)
        try:
            assert claim.result(timeout=10).run_id == second  # skipped, not waited for
        finally:
            other.rollback()  # a claim that waits for the lock would then go on
    assert store.claim_next_queued("w", host=HOST, pid=1).run_id == first


@pytest.mark.backends("sqlite", "postgresql")
def test_a_dead_owners_run_ends_no_earlier_than_its_last_checkpoint(store: RunStore,
                                                                    tmp_path) -> None:
    import os
    import time

    run_id = store.create_run("r", {}, max_steps=10)
    store.claim_next_queued("w-elsewhere", host="elsewhere", pid=1)
    _age(store, run_id, 30)  # its last beat, 30 s ago
    latest = tmp_path / "latest.pt"
    latest.write_bytes(b"weights")
    saved_at = time.time() - 4  # saved after that beat, 4 s ago
    os.utime(latest, (saved_at, saved_at))
    store.update_run(run_id, checkpoint_path=str(latest))
    assert store.recover_orphans(host="here", pid_alive=_alive(), dead_after_s=10) == [run_id]
    run = store.get_run(run_id)
    assert run.status == "interrupted"
    assert run.finished_at.timestamp() >= saved_at - 1e-3  # not at the beat before it
