"""One owner at a time: claims are compare-and-set, an owner's writes carry its fencing token,
a run whose owner may be alive is not resumed, and a queued or running run is never deleted."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import text
from test_jobs import micro, wait_for

from gptcore.errors import GptdashError
from jobs import runner
from jobs.cli import build_parser
from jobs.manager import claim_here
from jobs.recovery import recover_interrupted, this_host, worker_id
from jobs.torchrun import torchrun_command
from storage.errors import ClaimLost, StorageError
from storage.schema import utcnow
from storage.store import RunStore

pytestmark = pytest.mark.backends("sqlite", "postgresql")

DEAD_PID = 999_999  # no such process here (as test_jobs assumes)


def _claimed(store: RunStore, *, host: str = "gpu-box", pid: int = 1) -> tuple[int, int]:
    run_id = store.create_run("r", micro().to_dict())
    return run_id, store.claim_run(run_id, f"{host}:{pid}", host=host, pid=pid)


def _rows(store: RunStore, run_id: int) -> tuple[int, int, int]:
    return (len(store.metrics([run_id])), len(store.samples(run_id)),
            len(store.events([run_id])))


# ---- claims ----------------------------------------------------------------------------------
def test_an_owner_whose_run_was_taken_may_not_replace_its_checkpoint(store: RunStore) -> None:
    from jobs.bridge import Chain, StoreCallbacks
    from jobs.threads import ThreadShare

    run_id, token = _claimed(store)
    mine = StoreCallbacks(store, run_id, token)
    try:
        mine.before_checkpoint()  # still its own: the save goes on
        store.mark_interrupted()
        store.set_status(run_id, "queued")
        store.claim_run(run_id, "new-trainer", host="elsewhere", pid=2)
        with pytest.raises(ClaimLost):
            mine.before_checkpoint()
        with pytest.raises(ClaimLost):  # and through the chain a worker trains with
            Chain(mine, ThreadShare(store)).before_checkpoint()
    finally:
        try:
            mine.close()
        except ClaimLost:
            pass



def test_a_second_claim_of_a_claimed_run_is_refused(store: RunStore) -> None:
    run_id, first = _claimed(store)
    with pytest.raises(StorageError, match=f"run {run_id} is running by gpu-box:1, not queued"):
        store.claim_run(run_id, "second", host="other", pid=2)
    assert store.claim_next_queued("third") is None
    run = store.get_run(run_id)
    assert (run.worker, run.owner_pid, run.claim_token) == ("gpu-box:1", 1, first)


def test_every_claim_takes_a_new_token(store: RunStore) -> None:
    run_id, first = _claimed(store)
    store.set_status(run_id, "stopped")
    store.set_status(run_id, "queued")
    second = store.claim_next_queued("w")
    assert second is not None and second.run_id == run_id and second.token > first
    assert store.get_run(run_id).claim_token == second.token


# ---- fencing ---------------------------------------------------------------------------------

def test_an_owner_whose_run_was_taken_can_write_nothing_more(store: RunStore) -> None:
    run_id, old = _claimed(store)
    store.log_metrics(run_id, [("loss", 1, 2.0, 0.0)], claim=old)  # its own: written
    store.mark_interrupted()  # its owner was declared gone...
    store.set_status(run_id, "queued")
    new = store.claim_run(run_id, "new-owner", host="other", pid=2)  # ...and the run retaken
    before, beat = _rows(store, run_id), store.get_run(run_id).heartbeat_at

    writes = [
        lambda: store.log_metrics(run_id, [("loss", 2, 1.0, 0.0)], claim=old),
        lambda: store.log_sample(run_id, 2, "p", "t", claim=old),
        lambda: store.log_event(run_id, 2, "spike", "x", claim=old),
        lambda: store.update_run(run_id, last_step=2, claim=old),
        lambda: store.set_status(run_id, "failed", error="boom", claim=old),
        lambda: store.discard_after(run_id, -1, claim=old),
        lambda: store.stop_requested(run_id, claim=old),
    ]
    for write in writes:
        with pytest.raises(ClaimLost, match=f"run {run_id} is no longer this process's: it is "
                                            "running under new-owner now"):
            write()
    store.heartbeat(run_id, claim=old)  # a lost owner keeps no run alive, and does not fail
    assert _rows(store, run_id) == before
    run = store.get_run(run_id)
    assert (run.status, run.error, run.last_step, run.heartbeat_at) == (
        "running", None, 0, beat)
    store.update_run(run_id, last_step=3, claim=new)  # the new owner writes
    assert store.get_run(run_id).last_step == 3


@pytest.mark.backends("postgresql")
def test_a_claim_waits_for_an_owners_write_in_flight_then_its_next_write_is_refused(
        store: RunStore) -> None:
    run_id, old = _claimed(store)
    store.set_status(run_id, "stopped")
    store.set_status(run_id, "queued")
    with store.engine.connect() as owner, ThreadPoolExecutor(1) as pool:
        # The owner's write holds the row, as every fenced write does from its first statement.
        owner.execute(text("UPDATE runs SET claim_token = claim_token "
                           "WHERE id = :id AND claim_token = :t"), {"id": run_id, "t": old})
        owner.execute(text("INSERT INTO metrics (run_id, key, step, value, wall_time) "
                           "VALUES (:id, 'loss', 1, 1.0, 0.0)"), {"id": run_id})
        claim = pool.submit(store.claim_run, run_id, "new", host="h", pid=2)
        assert not wait_for(claim.done, timeout=0.5)  # it waits for the write to commit
        owner.commit()
        claim.result(timeout=10)
    with pytest.raises(ClaimLost):
        store.log_metrics(run_id, [("loss", 2, 1.0, 0.0)], claim=old)
    assert list(store.metrics([run_id])["step"]) == [1]


def test_a_trainer_whose_claim_was_taken_stops_at_once_writing_nothing_more(
        store: RunStore, caplog: pytest.LogCaptureFixture) -> None:
    # Trains until told otherwise, with no evaluation or checkpoint on its way.
    cfg = micro(max_steps=100_000, eval_interval=100_000, checkpoint_interval=100_000,
                log_interval=1)
    run_id = runner.create_run(store, cfg)
    token = claim_here(store, run_id)
    lost: list[BaseException] = []

    def train() -> None:
        try:
            runner.execute_run(store, run_id, claim=token)
        except ClaimLost as exc:
            lost.append(exc)

    trainer = threading.Thread(target=train, daemon=True)
    trainer.start()
    assert wait_for(lambda: store.get_run(run_id).last_step >= 3)
    # As after `kill` of a Ray job's entrypoint: the run is declared interrupted, resumed,
    # and claimed by a new trainer while the old one still trains.
    store.mark_interrupted()
    store.set_status(run_id, "queued")
    thief = store.claim_run(run_id, "new-trainer", host="elsewhere", pid=2)
    taken = store.get_run(run_id)
    rows = _rows(store, run_id)

    trainer.join(60)
    assert not trainer.is_alive(), "the old trainer went on training"
    assert len(lost) == 1
    run = store.get_run(run_id)
    # Not failed, not stopped: the run is the new trainer's, as it was when taken.
    assert (run.status, run.worker, run.error, run.claim_token) == (
        "running", "new-trainer", None, thief)
    assert (run.last_step, run.trained_s, run.heartbeat_at) == (
        taken.last_step, taken.trained_s, taken.heartbeat_at)
    assert _rows(store, run_id) == rows
    assert run.checkpoint_path is None and not runner.checkpoint_file(run_id).exists()
    # Losing the run is not a crash of the trainer's: no "training crashed" traceback.
    assert not [r for r in caplog.records if r.exc_info], [r.getMessage() for r in caplog.records]


def test_torchrun_rank_0_writes_with_its_supervisors_claim() -> None:
    command = torchrun_command(7, 2, None, 5)
    assert command[-4:] == ["rank", "7", "--claim", "5"]
    assert build_parser().parse_args(command[-4:]).claim == 5


# ---- recovery and resume ---------------------------------------------------------------------

def test_recovery_leaves_a_live_owner_here_its_run_however_late_its_heartbeat(
        store: RunStore) -> None:
    run_id = store.create_run("r", micro().to_dict())
    token = store.claim_run(run_id, worker_id(), host=this_host(), pid=os.getpid())
    store.update_run(run_id, heartbeat_at=utcnow() - timedelta(hours=1))
    assert recover_interrupted(store) == []
    run = store.get_run(run_id)
    assert (run.status, run.claim_token) == ("running", token)


def test_declaring_an_owner_gone_takes_the_run_from_it(store: RunStore) -> None:
    run_id, old = _claimed(store, host="gpu-box-2")
    store.update_run(run_id, heartbeat_at=utcnow() - timedelta(hours=1))
    assert recover_interrupted(store) == [run_id]
    # Only slow, not dead, after all: what it writes now is refused.
    with pytest.raises(ClaimLost, match="it is interrupted now"):
        store.update_run(run_id, last_step=5, claim=old)
    assert store.get_run(run_id).status == "interrupted"


def test_resume_is_refused_while_an_interrupted_runs_owner_may_be_alive(store: RunStore) -> None:
    here = store.create_run("here", micro().to_dict())
    store.claim_run(here, worker_id(), host=this_host(), pid=os.getpid())
    there, _ = _claimed(store, host="gpu-box-2")  # it beat just now
    store.mark_interrupted()  # as a supervisor does when it thinks its worker died

    with pytest.raises(GptdashError, match=f"run {here}'s process .* is still alive"):
        runner.queue_resume(store, here)
    with pytest.raises(GptdashError, match=f"run {there}'s owner gpu-box-2:1 on gpu-box-2 was "
                                           "heard from less than 15 s ago"):
        runner.queue_resume(store, there)
    assert [store.get_run(r).status for r in (here, there)] == ["interrupted"] * 2

    # Gone after all: its process has exited, or it has been silent long enough.
    store.update_run(here, owner_pid=DEAD_PID)
    store.update_run(there, heartbeat_at=utcnow() - timedelta(seconds=20))
    for run_id in (here, there):
        runner.queue_resume(store, run_id)
        assert store.get_run(run_id).status == "queued"


def test_a_run_stopped_by_its_worker_resumes_while_the_worker_lives_on(store: RunStore) -> None:
    run_id = store.create_run("r", micro().to_dict())
    store.claim_run(run_id, worker_id(), host=this_host(), pid=os.getpid())
    store.set_status(run_id, "stopped")  # the worker (this live process) ended it itself
    runner.queue_resume(store, run_id)
    assert store.get_run(run_id).status == "queued"


# ---- deleting --------------------------------------------------------------------------------

def test_delete_is_refused_once_the_run_was_queued_again_after_the_confirmation_opened(
        store: RunStore) -> None:
    run_id = store.create_run("r", micro().to_dict(), status="stopped")
    store.log_metrics(run_id, [("loss", 1, 2.0, 0.0)])
    shown = store.get_run(run_id)  # the page loads the run, Delete's confirmation opens
    assert shown.status == "stopped"
    runner.queue_resume(store, run_id)  # meanwhile, `gptdash resume --queue`
    with pytest.raises(StorageError, match=f"run {run_id} is queued: stop it"):
        store.delete_run(run_id)  # "Yes, delete"
    store.claim_run(run_id, "w", host="h", pid=1)
    with pytest.raises(StorageError, match=f"run {run_id} is running: stop it"):
        store.delete_run(run_id)
    assert store.get_run(run_id).status == "running"
    assert len(store.metrics([run_id])) == 1


@pytest.mark.backends("postgresql")
def test_delete_checks_the_status_in_its_own_transaction(store: RunStore) -> None:
    run_id = store.create_run("r", micro().to_dict(), status="stopped")
    with store.engine.connect() as resume, ThreadPoolExecutor(1) as pool:
        # A resume is writing the row when the delete starts: the delete waits for it and
        # then sees the run queued, instead of deleting what it read as stopped.
        resume.execute(text("UPDATE runs SET status = 'queued' WHERE id = :id"), {"id": run_id})
        deleting = pool.submit(store.delete_run, run_id)
        assert not wait_for(deleting.done, timeout=0.5)
        resume.commit()
        with pytest.raises(StorageError, match=f"run {run_id} is queued: stop it"):
            deleting.result(timeout=10)
    assert store.get_run(run_id).status == "queued"
