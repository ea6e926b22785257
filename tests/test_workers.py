"""Several `gptdash worker` processes on one PostgreSQL database, as on several machines."""

import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from gptcore.config import apply_overrides, preset
from jobs import runner
from jobs.recovery import FRESH_BEAT_S
from storage.schema import utcnow
from storage.store import RunStore

ROOT = Path(__file__).resolve().parent.parent
MICRO = {"context_length": 16, "emb_dim": 32, "n_heads": 4, "n_layers": 2, "batch_size": 8,
         "eval_interval": 10, "eval_iters": 2, "sample_tokens": 8, "warmup_steps": 2,
         "device": "cpu", "log_interval": 5, "checkpoint_interval": 10}
DEAD_AFTER_S = 6


def _start_worker(name: str, home: Path, db_url: str, log: Path) -> subprocess.Popen:
    # Each worker as if on its own machine: no one can check another's pid, only its beat.
    env = {**os.environ, "GPTDASH_HOME": str(home), "GPTDASH_DB_URL": db_url,
           "GPTDASH_HOST": f"machine-{name}", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    with open(log, "a") as out:
        return subprocess.Popen([sys.executable, "-m", "jobs", "worker", "--name", name,
                                 "--dead-after", str(DEAD_AFTER_S)],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_three_workers_train_twelve_runs_once_each_and_a_killed_workers_run_resumes(
        tmp_path, pg_head_url, monkeypatch):
    pg_url = pg_head_url  # as after `gptdash db upgrade`
    monkeypatch.setenv("GPTDASH_HOME", str(tmp_path))  # one artifacts folder for everyone
    store = RunStore(pg_url)
    long_id = runner.create_run(store, apply_overrides(preset("tiny"),
                                                       {**MICRO, "max_steps": 100_000}),
                                name="long", check_device=False)
    short_ids = [runner.create_run(store, apply_overrides(preset("tiny"),
                                                          {**MICRO, "max_steps": 20}),
                                   name=f"short {i}", check_device=False) for i in range(11)]
    log = tmp_path / "workers.log"
    workers = {name: _start_worker(name, tmp_path, pg_url, log) for name in ("w1", "w2", "w3")}
    try:
        # The long run is claimed first (oldest); let it pass a few checkpoints.
        owner = _wait_for(lambda: store.get_run(long_id).last_step >= 30
                          and store.get_run(long_id).worker, 120, "the long run to train")
        workers[owner].send_signal(signal.SIGKILL)
        workers[owner].wait()
        # Nobody tells the others: they notice the silence and mark the run.
        killed = _wait_for(lambda: (r := store.get_run(long_id)).status == "interrupted" and r,
                           60, "the killed worker's run to be marked interrupted")
        assert f"no heartbeat from {owner}" in killed.error
        _wait_for(lambda: all(store.get_run(i).status == "completed" for i in short_ids),
                  240, "the short runs to complete")
        # A resume waits until the owner may no longer be at work (jobs.recovery).
        _wait_for(lambda: utcnow() - killed.heartbeat_at > timedelta(seconds=FRESH_BEAT_S),
                  30, "the killed worker's last beat to age")
        steps_before = store.last_step(long_id, "train/loss")
        runner.queue_resume(store, long_id)  # what the Runs page's Resume does
        resumed = _wait_for(lambda: (r := store.get_run(long_id)).status == "running"
                            and r.last_step > steps_before + 10 and r, 120,
                            "the run to resume on another worker")
        assert resumed.worker != owner
        store.request_stop(long_id)
        _wait_for(lambda: store.get_run(long_id).status == "stopped", 60, "the stop")
    finally:
        for proc in workers.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in workers.values():
            proc.wait(timeout=60)
    for run_id in short_ids:
        run = store.get_run(run_id)
        assert run.status == "completed", (run_id, run.status, run.error)
        assert list(store.metrics([run_id], ["train/loss"])["step"]) == list(range(20))
    # Each run was trained exactly once: a second training would have added its own
    # samples (one per evaluation, at steps 0, 10 and 20).
    for run_id in short_ids:
        assert list(store.samples(run_id)["step"]) == [20, 10, 0]
    assert {store.get_run(i).worker for i in short_ids} <= {"w1", "w2", "w3"}
    # The resumed curve is continuous: every step up to where it stopped, no gap.
    steps = list(store.metrics([long_id], ["train/loss"])["step"])
    assert steps == list(range(len(steps))) and len(steps) > steps_before
    states = {w.name: w.status for w in store.workers()}
    assert states.pop(owner) == "training"  # it never said goodbye: the page shows it lost
    assert set(states.values()) == {"stopped"}
