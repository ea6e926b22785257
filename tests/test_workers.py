"""Several `gptdash worker` processes on one PostgreSQL database, as on several machines."""

import signal

import pytest
from worker_support import MICRO, end_workers, start_worker, wait_for

from gptcore.config import apply_overrides, preset
from jobs import runner
from storage.store import RunStore


@pytest.mark.slow
def test_three_workers_train_twelve_runs_once_each_and_a_killed_workers_run_resumes_itself(
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
    # Each worker as if on its own machine: no one can check another's pid, only its beat.
    workers = {name: start_worker(name, tmp_path, log, db_url=pg_url, host=f"machine-{name}")
               for name in ("w1", "w2", "w3")}
    try:
        # The long run is claimed first (oldest); let it pass a few checkpoints.
        owner = wait_for(lambda: store.get_run(long_id).last_step >= 30
                          and store.get_run(long_id).worker, 120, "the long run to train")
        workers[owner].send_signal(signal.SIGKILL)
        workers[owner].wait()
        # Nobody tells the others: they notice the silence and mark the run.
        killed = wait_for(lambda: (r := store.get_run(long_id)).status == "interrupted" and r,
                           60, "the killed worker's run to be marked interrupted")
        assert f"no heartbeat from {owner}" in killed.error
        steps_before = killed.last_step
        # Nobody presses Resume either: after a back-off a free worker takes it up again.
        resumed = wait_for(lambda: (r := store.get_run(long_id)).status == "running"
                            and r.auto_resumes == 1 and r.last_step > steps_before + 10 and r,
                            240, "the run to resume itself on another worker")
        assert resumed.worker != owner
        store.request_stop(long_id)
        wait_for(lambda: store.get_run(long_id).status == "stopped", 60, "the stop")
        wait_for(lambda: all(store.get_run(i).status == "completed" for i in short_ids),
                  240, "the short runs to complete")
    finally:
        end_workers(list(workers.values()))
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
