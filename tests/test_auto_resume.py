"""Runs resume themselves: a run whose worker was lost is taken up again by a free worker,
from its last checkpoint, up to its limit of automatic resumes; a run a person stopped never.

The storage tests run on SQLite and PostgreSQL; the process tests kill real
`gptdash worker` processes (kill -9) on a real SQLite home.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from worker_support import MICRO, ROOT, end_workers, start_worker, wait_for

from gptcore.config import apply_overrides, preset
from jobs import runner
from jobs.recovery import attempt_summary, recover_interrupted
from storage.auto_resume import AUTO_RESUME_EVENT
from storage.queue import AUTO_RESUME_BACKOFF_S
from storage.schema import utcnow
from storage.status import RunStatus
from storage.store import RunStore

HOST = "this-host"


def _dead(pid: int) -> bool:
    return False


def _orphan(store: RunStore, name: str = "r", **create) -> int:
    """A run claimed by a process of this host that has died, marked interrupted."""
    run_id = store.create_run(name, {}, **create)
    store.claim_run(run_id, "w-dead", host=HOST, pid=999_999)
    store.update_run(run_id, last_step=37)
    assert store.recover_orphans(host=HOST, pid_alive=_dead, dead_after_s=60) == [run_id]
    return run_id


def _due(store: RunStore, run_id: int) -> None:
    """Let the run's back-off pass."""
    store.update_run(run_id, resume_after=utcnow() - timedelta(seconds=1))


def _take(store: RunStore, worker: str = "w-free", default_limit: int = 3):
    return store.claim_auto_resume(worker, host=HOST, pid=os.getpid(),
                                   default_limit=default_limit, pid_alive=_dead,
                                   dead_after_s=60)


@pytest.mark.backends("sqlite", "postgresql")
def test_a_lost_owners_run_is_taken_once_after_its_back_off_with_an_event(store):
    run_id = _orphan(store)
    run = store.get_run(run_id)
    assert run.status == RunStatus.INTERRUPTED and run.attempts == 1
    wait = (run.resume_after - utcnow()).total_seconds()
    assert AUTO_RESUME_BACKOFF_S[0] - 2 < wait <= AUTO_RESUME_BACKOFF_S[0]
    assert _take(store) is None  # not before its back-off

    _due(store, run_id)
    claim = _take(store, "w-a")
    assert claim is not None and claim.run_id == run_id
    assert _take(store, "w-b") is None  # taken once
    run = store.get_run(run_id)
    assert (run.status, run.worker, run.attempts, run.auto_resumes, run.resume_after,
            run.error, run.claim_token) == ("running", "w-a", 2, 1, None, None, claim.token)
    (event,) = [e for e in store.event_rows([run_id]) if e.kind == AUTO_RESUME_EVENT]
    assert event.step == 37
    assert event.message == (
        f"attempt 2, automatic resume 1 of 3: the previous attempt ended: the process training "
        f"this run (w-dead, pid 999999 on {HOST}) is gone")
    # Its attempt starts from the checkpoint at step 20: the note moves there, the dead
    # attempt's events past it go.
    store.log_event(run_id, 30, "spike", "from the dead attempt")
    store.discard_after(run_id, 20, claim=claim.token)
    assert [(e.step, e.kind) for e in store.event_rows([run_id])] == [(20, AUTO_RESUME_EVENT)]
    store.discard_after(run_id, -1, claim=claim.token)  # a restart from step 0 keeps it too
    assert [(e.step, e.kind) for e in store.event_rows([run_id])] == [(0, AUTO_RESUME_EVENT)]


@pytest.mark.backends("sqlite", "postgresql")
def test_the_limit_is_the_runs_own_else_the_workers(store):
    own = _orphan(store, "own limit", max_auto_resumes=1)
    _due(store, own)
    assert _take(store, default_limit=0).run_id == own  # its own limit wins over the worker's
    assert store.recover_orphans(host=HOST, pid_alive=_dead, dead_after_s=60) == [own]
    run = store.get_run(own)
    assert run.resume_after is None  # used up: never scheduled
    assert "not resumed automatically: it resumed by itself 1 time(s), its limit of 1" in run.error

    left_to_worker = _orphan(store, "worker's limit")
    _due(store, left_to_worker)
    assert _take(store, default_limit=0) is None  # this worker resumes nothing by itself
    run = store.get_run(left_to_worker)
    assert (run.status, run.resume_after) == ("interrupted", None)
    assert run.error.endswith("not resumed automatically: automatic resumes are off for it "
                              "(max_auto_resumes 0)")
    assert _take(store) is None  # settled: another worker does not take it up either


@pytest.mark.backends("sqlite", "postgresql")
def test_only_a_lost_owners_run_resumes_by_itself(store):
    asked_to_stop = store.create_run("stop asked, then its worker died", {})
    store.claim_run(asked_to_stop, "w-dead", host=HOST, pid=999_999)
    store.request_stop(asked_to_stop)
    assert store.recover_orphans(host=HOST, pid_alive=_dead, dead_after_s=60) == [asked_to_stop]
    run = store.get_run(asked_to_stop)
    assert run.resume_after is None
    assert "not resumed automatically: a stop was asked of it" in run.error
    # Ended by a person or by the run itself: whatever the schedule column says, never taken.
    for status in (RunStatus.STOPPED, RunStatus.CANCELLED, RunStatus.FAILED,
                   RunStatus.COMPLETED):
        run_id = store.create_run(str(status), {})
        store.set_status(run_id, status, error="ended")
        assert store.get_run(run_id).resume_after is None
        _due(store, run_id)
    _due(store, asked_to_stop)
    store.update_run(asked_to_stop, resume_after=None)
    assert _take(store) is None


def test_the_attempt_line_says_which_try_and_when_the_next_one_comes(store):
    run_id = _orphan(store, max_auto_resumes=2)
    run = store.get_run(run_id)
    assert attempt_summary(run) == (
        "attempt 1 (automatic resumes: 0 of at most 2); resumes by itself after "
        f"{run.resume_after:%H:%M:%S} UTC")
    _due(store, run_id)
    _take(store)
    assert attempt_summary(store.get_run(run_id)) == (
        "attempt 2 (automatic resumes: 1 of at most 2)")
    left_to_worker = store.create_run("r2", {})
    assert attempt_summary(store.get_run(left_to_worker)) == (
        "attempt 0 (automatic resumes: 0 of the worker's limit)")


def test_a_run_whose_corpus_changed_fails_at_its_automatic_resume_rather_than_looping(
        store, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("The text the run trained on.\n" * 400)
    run_id = _submit(store, "changed corpus", corpus=str(corpus))
    store.claim_run(run_id, "w-dead", host=HOST, pid=999_999)
    assert store.recover_orphans(host=HOST, pid_alive=_dead, dead_after_s=60) == [run_id]
    corpus.write_text("Other text under the same name.\n" * 400)
    _due(store, run_id)

    claim = _take(store)
    assert runner.execute_run(store, run_id, claim=claim.token).status == RunStatus.FAILED
    run = store.get_run(run_id)
    assert (run.status, run.resume_after) == ("failed", None)
    assert run.error.startswith(f"run {run_id}'s corpus") and "has changed" in run.error
    assert _take(store) is None  # failed on its own: never taken up again


def test_a_persons_resume_gives_the_run_its_automatic_resumes_afresh(store):
    run_id = _orphan(store, max_auto_resumes=1)
    _due(store, run_id)
    _take(store)
    assert store.recover_orphans(host=HOST, pid_alive=_dead, dead_after_s=60) == [run_id]
    assert store.get_run(run_id).resume_after is None  # its one automatic resume is used

    store.update_run(run_id, heartbeat_at=utcnow() - timedelta(minutes=1))  # long silent
    runner.queue_resume(store, run_id)  # Resume on the Runs page
    store.claim_run(run_id, "w-again", host=HOST, pid=999_997)
    assert store.recover_orphans(host=HOST, pid_alive=_dead, dead_after_s=60) == [run_id]
    run = store.get_run(run_id)
    assert (run.attempts, run.auto_resumes) == (3, 0) and run.resume_after is not None


# ---- real workers, killed ----------------------------------------------------------------
def _submit(store: RunStore, name: str, **overrides) -> int:
    cfg = apply_overrides(preset("tiny"), {**MICRO, "max_steps": 100_000, **overrides})
    return runner.create_run(store, cfg, name=name, check_device=False)


def test_a_run_whose_worker_is_killed_resumes_itself_up_to_its_limit(home, store):
    log = home / "workers.log"
    run_id = _submit(store, "long", max_auto_resumes=1)
    workers = {name: start_worker(name, home, log) for name in ("w1", "w2")}
    try:
        first = wait_for(lambda: (r := store.get_run(run_id)).last_step >= 25
                          and r.checkpoint_path and r, 120, "the run to pass a checkpoint", log)
        workers[first.worker].send_signal(signal.SIGKILL)
        workers[first.worker].wait()
        killed_at = time.monotonic()
        # The other worker finds the dead pid at its next beat and, after the back-off,
        # takes the run up again from its last checkpoint: nobody presses Resume.
        second = wait_for(lambda: (r := store.get_run(run_id)).auto_resumes == 1
                           and r.status == "running" and r.last_step >= 35 and r, 60,
                           "the run to resume itself", log)
        waited = time.monotonic() - killed_at
        assert waited < 30, waited
        assert second.worker != first.worker and second.attempts == 2
        note = [e for e in store.event_rows([run_id]) if e.kind == AUTO_RESUME_EVENT]
        assert len(note) == 1 and note[0].step % 10 == 0 and note[0].step <= first.last_step
        assert note[0].message.startswith("attempt 2, automatic resume 1 of 1: the previous "
                                          f"attempt ended: the process training this run "
                                          f"({first.worker}, pid ")
        steps = list(store.metrics([run_id], ["train/loss"])["step"])
        assert steps == list(range(len(steps)))  # continuous from the checkpoint: no gap

        shown = subprocess.run([sys.executable, "-m", "jobs", "show", str(run_id)], cwd=ROOT,
                               env={**os.environ, "GPTDASH_HOME": str(home)},
                               capture_output=True, text=True, check=True).stdout
        assert '"attempt": "attempt 2 (automatic resumes: 1 of at most 1)"' in shown
        assert "the previous attempt ended: the process training this run" in shown

        # Its one automatic resume is used: killed again, it waits for a person.
        workers[second.worker].send_signal(signal.SIGKILL)
        workers[second.worker].wait()
        assert recover_interrupted(store) == [run_id]
        run = store.get_run(run_id)
        assert (run.status, run.resume_after) == ("interrupted", None)
        assert "not resumed automatically: it resumed by itself 1 time(s), its limit of 1" in (
            run.error)
    finally:
        end_workers(list(workers.values()))


def test_a_run_a_person_stopped_never_resumes_by_itself(home, store):
    log = home / "workers.log"
    stopped = _submit(store, "stopped")
    asked = _submit(store, "stop asked, then its worker was killed")
    w1 = start_worker("w1", home, log)
    workers = [w1]
    try:
        wait_for(lambda: store.get_run(stopped).last_step >= 5, 120, "the first run", log)
        store.request_stop(stopped)
        wait_for(lambda: store.get_run(asked).last_step >= 5, 60, "the second run", log)
        # Killed right after the Stop, before its trainer (which looks twice a second, then
        # saves a checkpoint) could end the run.
        store.request_stop(asked)
        w1.send_signal(signal.SIGKILL)
        w1.wait()
        workers.append(start_worker("w2", home, log))
        wait_for(lambda: store.get_run(asked).status == "interrupted", 60,
                  "the killed worker's run to be marked interrupted", log)
        wait_for(lambda: any(w.name == "w2" and w.status == "idle" for w in store.workers()),
                  60, "the second worker to start", log)
        time.sleep(AUTO_RESUME_BACKOFF_S[0] + 3)  # past the first back-off: nothing resumes
        assert store.get_run(stopped).status == "stopped"
        run = store.get_run(asked)
        assert (run.status, run.auto_resumes, run.resume_after) == ("interrupted", 0, None)
        assert "not resumed automatically: a stop was asked of it" in run.error
    finally:
        end_workers(workers)
