"""jobs: a run from config to finished row, the background worker, and recovery."""

import os
import socket
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest

from gptcore.config import ModelConfig, TrainConfig, apply_overrides
from gptcore.errors import GptdashError
from gptcore.trainer import Trainer
from jobs import runner
from jobs.manager import JobManager, claim_here
from jobs.recovery import DEFAULT_DEAD_AFTER_S, pid_alive, recover_interrupted, worker_id
from storage.schema import utcnow

# The queue, the worker and recovery behave the same on both databases.
pytestmark = pytest.mark.backends("sqlite", "postgresql")

def micro(**overrides) -> TrainConfig:
    base = TrainConfig(
        model=ModelConfig(context_length=16, emb_dim=32, n_heads=4, n_layers=2),
        max_steps=20, batch_size=8, lr=3e-3, warmup_steps=2, min_lr=3e-4, eval_interval=10,
        eval_iters=2, log_interval=5, checkpoint_interval=10, sample_tokens=8, device="cpu",
    )
    return apply_overrides(base, overrides)


def claim(store, run_id):
    claim_here(store, run_id)


def wait_for(predicate, timeout=60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_a_run_is_recorded_end_to_end(store):
    run_id = runner.create_run(store, micro(), name="first", tags=["t1"])
    claim(store, run_id)
    result = runner.execute_run(store, run_id)
    assert result.status == "completed"
    run = store.get_run(run_id)
    assert run.status == "completed" and run.error is None
    assert run.last_step == 20 and run.max_steps == 20 and run.device == "cpu"
    assert run.best_val_loss is not None and run.last_train_loss is not None
    assert run.tokens_seen == 20 * 8 * 16
    assert run.checkpoint_path and run.checkpoint_path.endswith("latest.pt")
    losses = store.metrics([run_id], ["train/loss"])
    assert list(losses["step"]) == list(range(20))
    assert list(store.metrics([run_id], ["val/loss"])["step"]) == [0, 10, 20]
    assert len(store.samples(run_id)) == 3


def test_bad_config_is_refused_before_anything_is_written(store):
    with pytest.raises(GptdashError, match="not divisible"):
        runner.create_run(store, micro(emb_dim=30))
    assert store.list_runs() == []


def test_a_crash_leaves_its_metrics_and_a_failed_status_with_the_reason(store, monkeypatch):
    real = Trainer._batch
    calls = {"n": 0}

    def crash_late(self, split, gen):
        if gen is self.data_gen:  # training batches only, not evaluation ones
            calls["n"] += 1
            if calls["n"] > 12:
                raise RuntimeError("disk went away")
        return real(self, split, gen)

    monkeypatch.setattr(Trainer, "_batch", crash_late)
    run_id = runner.create_run(store, micro())
    claim(store, run_id)
    runner.execute_run(store, run_id)
    run = store.get_run(run_id)
    assert run.status == "failed"
    assert "RuntimeError at step 12: disk went away" in run.error
    assert list(store.metrics([run_id], ["train/loss"])["step"]) == list(range(10))
    assert run.finished_at is not None


def test_a_missing_corpus_is_refused_at_submit(store, tmp_path):
    with pytest.raises(GptdashError, match="does not exist"):
        runner.create_run(store, micro(corpus=str(tmp_path / "gone.txt")))
    assert store.list_runs() == []


def queued_with_vanished_corpus(store, tmp_path) -> int:
    """A run whose corpus file was deleted after it was queued."""
    cfg = micro(corpus=str(tmp_path / "gone.txt"))
    return store.create_run("vanished", cfg.to_dict(), max_steps=cfg.max_steps)


def test_a_corpus_deleted_after_submit_fails_with_a_clear_reason(store, tmp_path):
    run_id = queued_with_vanished_corpus(store, tmp_path)
    claim(store, run_id)
    runner.execute_run(store, run_id)
    run = store.get_run(run_id)
    assert run.status == "failed" and "does not exist" in run.error


def test_fine_tuning_records_the_parent(store, tmp_path):
    parent = runner.create_run(store, micro())
    claim(store, parent)
    runner.execute_run(store, parent)
    corpus = tmp_path / "other.txt"
    corpus.write_text("A different corpus with other words in it. " * 200)
    child = runner.create_run(store, micro(init_from=str(parent), corpus=str(corpus),
                                           freeze_blocks=1))
    assert store.get_run(child).parent_id == parent
    claim(store, child)
    assert runner.execute_run(store, child).status == "completed"


def test_init_from_a_run_takes_its_best_checkpoint_unless_told_latest(store):
    parent = runner.create_run(store, micro())
    claim(store, parent)
    runner.execute_run(store, parent)
    folder = runner.checkpoint_file(parent).parent
    assert runner.resolve_init_from(store, str(parent)) == (folder / "best.pt", parent)
    assert runner.resolve_init_from(store, f"{parent}:best") == (folder / "best.pt", parent)
    assert runner.resolve_init_from(store, f"{parent}:latest") == (folder / "latest.pt", parent)
    with pytest.raises(GptdashError, match="neither a run id"):
        runner.resolve_init_from(store, f"{parent}:newest")


def test_fine_tuning_from_a_run_without_checkpoint_is_refused(store):
    queued = runner.create_run(store, micro())
    with pytest.raises(GptdashError, match="has no checkpoint"):
        runner.create_run(store, micro(init_from=str(queued)))


def test_resume_continues_a_stopped_run_to_the_end(store):
    run_id = runner.create_run(store, micro(max_steps=40))
    claim(store, run_id)
    store.request_stop(run_id)
    runner.execute_run(store, run_id)
    stopped = store.get_run(run_id)
    assert stopped.status == "stopped" and stopped.last_step < 40
    runner.queue_resume(store, run_id)
    claim(store, run_id)
    assert runner.execute_run(store, run_id).status == "completed"
    steps = store.metrics([run_id], ["train/loss"])["step"]
    assert list(steps) == list(range(40))


def test_only_stopped_interrupted_or_failed_runs_resume(store):
    run_id = runner.create_run(store, micro())
    with pytest.raises(GptdashError, match="only stopped, interrupted or failed"):
        runner.queue_resume(store, run_id)


@pytest.fixture
def manager(store):
    m = JobManager(store)
    yield m
    m.shutdown()


def _wait(predicate, what: str, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_worker_shutting_down_hands_its_run_on_to_the_next_worker(store):
    from storage.queue import HANDED_ON_EVENT

    m = JobManager(store, name="first")
    run_id = m.submit(micro(max_steps=100_000), name="long")
    _wait(lambda: store.get_run(run_id).last_step >= 5, "training to start")
    m.shutdown(timeout=60)
    run = store.get_run(run_id)
    assert m.handed_back and run.status == "queued" and run.error is None
    assert run.checkpoint_path and run.last_step >= 5 and run.auto_resumes == 0
    [event] = [e for e in store.event_rows([run_id]) if e.kind == HANDED_ON_EVENT]
    assert "its worker first was stopped at step" in event.message
    # The next worker goes on from the checkpoint, spending no automatic resume.
    second = JobManager(store, name="second")
    try:
        _wait(lambda: store.get_run(run_id).last_step > run.last_step, "the run to go on")
        again = store.get_run(run_id)
        assert again.status == "running" and again.attempts == 2 and again.auto_resumes == 0
    finally:
        second.shutdown(timeout=60)


def test_a_run_asked_to_stop_stays_stopped_when_its_worker_shuts_down(store):
    m = JobManager(store, name="first")
    run_id = m.submit(micro(max_steps=100_000), name="long")
    _wait(lambda: store.get_run(run_id).last_step >= 5, "training to start")
    store.request_stop(run_id)  # the person's stop, as the shutdown comes
    m.shutdown(timeout=60)
    run = store.get_run(run_id)
    assert run.status == "stopped" and run.resume_after is None and not m.handed_back


def test_the_worker_trains_queued_runs_one_at_a_time(store, manager):
    a = manager.submit(micro(), name="a")
    b = manager.submit(micro(), name="b")
    assert wait_for(lambda: store.get_run(b).status == "completed")
    ra, rb = store.get_run(a), store.get_run(b)
    assert ra.status == "completed"
    assert ra.finished_at <= rb.started_at  # never two at once
    assert wait_for(manager.is_idle)  # the row says completed a moment before the worker frees


def test_stop_from_the_manager_and_cancel_a_queued_run(store, manager):
    long = manager.submit(micro(max_steps=100_000), name="long")
    queued = manager.submit(micro(), name="queued")
    assert wait_for(lambda: store.get_run(long).status == "running")
    manager.stop(queued)
    assert store.get_run(queued).status == "cancelled"
    assert store.get_run(queued).error == "cancelled before it started"
    assert wait_for(lambda: store.get_run(long).last_step > 0)
    manager.stop(long)
    assert wait_for(lambda: store.get_run(long).status == "stopped", timeout=30)
    assert store.get_run(long).checkpoint_path
    assert wait_for(manager.is_idle)


def test_the_worker_lives_on_after_a_failed_run(store, manager, tmp_path):
    bad = queued_with_vanished_corpus(store, tmp_path)
    good = manager.submit(micro())
    assert wait_for(lambda: store.get_run(good).status == "completed")
    assert store.get_run(bad).status == "failed"
    assert manager.is_alive()


def test_runs_whose_owner_is_gone_become_interrupted_and_live_owners_keep_theirs(store):
    host = socket.gethostname()
    runs = {name: store.create_run(name, micro().to_dict(), status="queued")
            for name in ("dead here", "alive here", "silent elsewhere", "beating elsewhere")}
    store.claim_run(runs["dead here"], "old-server", host=host, pid=999_999)
    store.claim_run(runs["alive here"], worker_id(), host=host, pid=os.getpid())
    store.claim_run(runs["silent elsewhere"], "gpu-box-2", host="gpu-box-2", pid=1)
    store.update_run(runs["silent elsewhere"],
                     heartbeat_at=utcnow() - timedelta(seconds=DEFAULT_DEAD_AFTER_S + 5))
    store.claim_run(runs["beating elsewhere"], "gpu-box-3", host="gpu-box-3", pid=1)
    assert sorted(recover_interrupted(store)) == sorted(
        [runs["dead here"], runs["silent elsewhere"]])
    assert "pid 999999" in store.get_run(runs["dead here"]).error
    assert "no heartbeat from gpu-box-2" in store.get_run(runs["silent elsewhere"]).error
    assert store.get_run(runs["alive here"]).status == "running"
    assert store.get_run(runs["beating elsewhere"]).status == "running"


def test_a_run_that_cannot_fit_is_refused_before_launch_with_the_estimate(store):
    huge = micro(batch_size=4096, context_length=1024, emb_dim=4096, n_heads=32, n_layers=48)
    with pytest.raises(GptdashError, match=r"needs about [\d,.]+ GB .* but the device has"):
        runner.create_run(store, huge)
    assert store.list_runs() == []


def test_a_corpus_too_short_for_the_context_is_refused_before_launch(store, tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("only a handful of words " * 4)
    with pytest.raises(GptdashError, match="too few for context_length"):
        runner.create_run(store, micro(corpus=str(short), context_length=64))
    assert store.list_runs() == []


@pytest.mark.parametrize("content, message", [(b"", "is empty"), (b"\x00\x01\x02 bin", "binary"),
                                              (b"\xff\xfe latin", "not UTF-8")])
def test_bad_corpus_files_are_refused_before_launch(store, tmp_path, content, message):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(content)
    with pytest.raises(GptdashError, match=message):
        runner.create_run(store, micro(corpus=str(bad)))
    assert store.list_runs() == []


def test_a_killed_process_not_yet_reaped_is_not_alive():
    # A zombie still answers signal 0; recovery must see it as gone, or `gptdash list`
    # right after a kill -9 would show the run `running`.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert pid_alive(child.pid)
        child.kill()
        deadline = time.monotonic() + 10
        while Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
            assert time.monotonic() < deadline, "the child did not become a zombie"
            time.sleep(0.05)
        assert not pid_alive(child.pid)  # killed, not yet reaped
    finally:
        child.wait()
    assert not pid_alive(child.pid)
