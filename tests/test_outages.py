"""A run trains through a database outage and records exactly what an undisturbed run does.

Real servers throughout: a PostgreSQL server of this module's own that the tests restart,
halt and start again, a loopback proxy cut between one trainer and that server (a network
partition: the trainer is cut off while a person's page still reaches the database), and a
real SQLite writer holding the lock past the busy timeout.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from postgres_support import PostgresServer
from tcp_proxy import TcpProxy

from gptcore.callbacks import TrainerCallbacks
from gptcore.config import ModelConfig, TrainConfig, apply_overrides
from jobs import runner
from jobs.manager import claim_here
from storage.store import RunStore

STEPS = 400


def config(**overrides) -> TrainConfig:
    base = TrainConfig(
        model=ModelConfig(context_length=16, emb_dim=32, n_heads=4, n_layers=2),
        max_steps=STEPS, batch_size=8, lr=3e-3, warmup_steps=2, min_lr=3e-4, eval_interval=50,
        eval_iters=2, log_interval=5, checkpoint_interval=100, sample_tokens=8, device="cpu",
    )
    return apply_overrides(base, overrides)


class Steps(TrainerCallbacks):
    """What the trainer reported, seen from inside the process (the database may be away)."""

    def __init__(self):
        self.step = 0
        self.status: str | None = None

    def on_metrics(self, step, metrics):
        self.step = max(self.step, step)

    def on_status(self, status, message=None):
        self.status = status


class Training:
    """A run trained in a thread of this process, as a worker trains it."""

    def __init__(self, store: RunStore, run_id: int):
        self.steps = Steps()
        self.result = None
        self.error: BaseException | None = None
        claim = claim_here(store, run_id)
        self.thread = threading.Thread(target=self._train, args=(store, run_id, claim),
                                       daemon=True)
        self.thread.start()

    def _train(self, store, run_id, claim):
        try:
            self.result = runner.execute_run(store, run_id, claim=claim,
                                             extra_callbacks=self.steps)
        except BaseException as exc:  # noqa: BLE001 - the test reports it
            self.error = exc

    def wait_step(self, step: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.steps.step < step:
            assert self.thread.is_alive(), f"training ended early: {self.error or self.result}"
            assert time.monotonic() < deadline, f"no step {step} in {timeout} s"
            time.sleep(0.02)

    def join(self, timeout: float = 180):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the run did not end"
        assert self.error is None, repr(self.error)
        return self.result


def recorded(store: RunStore, run_id: int) -> dict:
    """What a run left in the database, for comparing runs (wall times aside)."""
    metrics = store.metrics([run_id])
    events = store.events([run_id])
    return {
        "rows": sorted(zip(metrics["key"], metrics["step"], strict=True)),
        "samples": sorted(store.samples(run_id)["step"]),
        "events": sorted((k, s) for k, s in zip(events["kind"], events["step"], strict=True)
                         if k != "outage"),
    }


def undisturbed(store: RunStore, cfg: TrainConfig) -> dict:
    run_id = runner.create_run(store, cfg, name="undisturbed")
    claim = claim_here(store, run_id)
    assert runner.execute_run(store, run_id, claim=claim).status == "completed"
    return recorded(store, run_id)


@pytest.fixture
def pg_store(own_postgres: PostgresServer, home: Path) -> Iterator[RunStore]:
    url = own_postgres.database_at_head()
    store = RunStore(url)
    yield store
    store.close()
    own_postgres.drop_database(store.engine.url.database)


def outage_lines(caplog) -> tuple[list[str], list[str]]:
    messages = [r.getMessage() for r in caplog.records]
    assert not any("Traceback" in m or r.exc_info for m, r in zip(messages, caplog.records,
                                                                 strict=True))
    return ([m for m in messages if m.startswith("database unreachable since")],
            [m for m in messages if m.startswith("database back after")])


@pytest.mark.slow
def test_a_run_trains_through_postgresql_restarts_and_records_what_an_undisturbed_run_does(
        own_postgres, pg_store, caplog):
    caplog.set_level(logging.INFO)
    expected = undisturbed(pg_store, config())
    run_id = runner.create_run(pg_store, config(), name="through restarts")
    training = Training(pg_store, run_id)
    training.wait_step(60)
    own_postgres.restart()  # pg_ctl restart -m fast: every connection is cut
    training.wait_step(200)
    own_postgres.restart()
    result = training.join()
    assert result.status == "completed"
    run = pg_store.get_run(run_id)
    assert (run.status, run.last_step) == ("completed", STEPS)
    assert recorded(pg_store, run_id) == expected  # no gap, no duplicate
    steps = list(pg_store.metrics([run_id], ["train/loss"])["step"])
    assert steps == list(range(STEPS))
    down, back = outage_lines(caplog)
    assert len(down) == len(back) >= 1  # one line each way, however many tries between


@pytest.mark.slow
def test_a_run_trains_on_while_postgresql_is_down_30_s_and_writes_it_all_when_back(
        own_postgres, pg_store, caplog):
    caplog.set_level(logging.INFO)
    expected = undisturbed(pg_store, config())
    run_id = runner.create_run(pg_store, config(), name="through a stop")
    training = Training(pg_store, run_id)
    training.wait_step(60)
    own_postgres.halt()  # for 30 s, as a slow fail-over: the run may well end meanwhile
    halted = time.monotonic()
    try:
        at_halt = training.steps.step
        training.wait_step(min(at_halt + 150, STEPS))  # it trains on, nothing to write to
        time.sleep(max(0.0, 30 - (time.monotonic() - halted)))  # one line, however many tries
    finally:
        own_postgres.resume()
    training.join()
    assert recorded(pg_store, run_id) == expected
    down, back = outage_lines(caplog)
    assert len(down) == 1 and len(back) == 1, (down, back)
    assert "connection refused" in down[0] and f"run {run_id} trains on" in down[0]
    assert "rows written" in back[0]
    events = pg_store.events([run_id])
    assert list(events["kind"]).count("outage") == 1  # a marker on the charts


@pytest.mark.slow
def test_a_run_trains_on_while_another_sqlite_writer_holds_the_lock_past_the_busy_timeout(
        store, home, caplog):
    caplog.set_level(logging.INFO)
    expected = undisturbed(store, config())
    run_id = runner.create_run(store, config(), name="through a lock")
    training = Training(store, run_id)
    training.wait_step(60)
    db = sqlite3.connect(home / "gptdash.db", timeout=30)
    db.execute("BEGIN EXCLUSIVE")  # a writer that holds on past the 10 s busy timeout
    try:
        at_lock = training.steps.step
        time.sleep(12)
        assert training.steps.step > at_lock + 50, "training waited on the lock"
    finally:
        db.rollback()
        db.close()
    training.join()
    assert recorded(store, run_id) == expected
    down, back = outage_lines(caplog)
    assert len(down) == 1 and "database is locked" in down[0]
    assert len(back) == 1


def _through_proxy(server: PostgresServer, store: RunStore) -> tuple[TcpProxy, RunStore]:
    proxy = TcpProxy(server.port)
    url = store.engine.url.set(port=proxy.port).render_as_string(hide_password=False)
    return proxy, RunStore(url)


def test_a_stop_asked_while_the_trainer_is_cut_off_is_honoured_when_it_reconnects(
        own_postgres, pg_store, caplog):
    caplog.set_level(logging.INFO)
    proxy, cut_off = _through_proxy(own_postgres, pg_store)
    try:
        run_id = runner.create_run(pg_store, config(max_steps=100_000), name="stop in outage")
        training = Training(cut_off, run_id)
        training.wait_step(60)
        proxy.cut()
        pg_store.request_stop(run_id)  # the page still reaches the database
        at_cut = training.steps.step
        training.wait_step(at_cut + 100)  # it cannot see the request
        down, _ = outage_lines(caplog)
        assert len(down) == 1 and "a stop request cannot be seen" in down[0]
        proxy.mend()
        result = training.join(60)
    finally:
        proxy.close()
        cut_off.close()
    assert result.status == "stopped"
    run = pg_store.get_run(run_id)
    assert run.status == "stopped" and run.checkpoint_path
    # Everything trained before the stop is there, in order, once.
    steps = list(pg_store.metrics([run_id], ["train/loss"])["step"])
    assert steps == list(range(len(steps))) and len(steps) >= at_cut + 100


def test_an_outage_longer_than_the_limit_stops_the_run_with_a_checkpoint_and_says_why(
        own_postgres, pg_store, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    monkeypatch.setenv("GPTDASH_OUTAGE_LIMIT_S", "2")
    proxy, cut_off = _through_proxy(own_postgres, pg_store)
    try:
        run_id = runner.create_run(pg_store, config(max_steps=100_000), name="long outage")
        training = Training(cut_off, run_id)
        training.wait_step(60)
        proxy.cut()
        deadline = time.monotonic() + 60
        while training.steps.status != "stopped":  # it stops itself, with a checkpoint
            assert time.monotonic() < deadline, "the run did not stop itself"
            time.sleep(0.1)
        time.sleep(2)
        assert training.thread.is_alive(), "it must wait to record its stop, not give up"
        assert pg_store.get_run(run_id).status == "running"  # nothing could be written yet
        proxy.mend()
        result = training.join(60)
    finally:
        proxy.close()
        cut_off.close()
    assert result.status == "stopped"
    run = pg_store.get_run(run_id)
    assert run.status == "stopped"
    assert "database was unreachable for over" in run.error
    ckpt = Path(run.checkpoint_path)
    assert ckpt.exists()
    steps = list(pg_store.metrics([run_id], ["train/loss"])["step"])
    assert steps == list(range(len(steps)))


def test_a_run_declared_gone_while_cut_off_is_taken_back_by_its_trainer_not_left_interrupted(
        own_postgres, pg_store, caplog):
    caplog.set_level(logging.INFO)
    expected = undisturbed(pg_store, config())
    proxy, cut_off = _through_proxy(own_postgres, pg_store)
    try:
        run_id = runner.create_run(pg_store, config(), name="looked at")
        training = Training(cut_off, run_id)
        training.wait_step(60)
        proxy.cut()
        time.sleep(1.5)
        # Someone on another machine looks: no heartbeat for over a second, so gone.
        assert pg_store.recover_orphans(host="another-machine", pid_alive=lambda pid: True,
                                        dead_after_s=1.0) == [run_id]
        assert pg_store.get_run(run_id).status == "interrupted"
        proxy.mend()
        result = training.join()
    finally:
        proxy.close()
        cut_off.close()
    assert result.status == "completed"
    run = pg_store.get_run(run_id)
    assert run.status == "completed" and run.error is None
    assert run.resume_after is None  # no automatic resume left scheduled for it
    assert recorded(pg_store, run_id) == expected


def test_one_line_each_way_even_where_several_parts_of_a_process_meet_the_outage(caplog):
    from jobs.outage import Outage
    from storage.errors import DatabaseUnavailable

    caplog.set_level(logging.INFO)
    down = DatabaseUnavailable("database x: connection failed: Connection refused; check")
    trainer, worker = Outage(logging.getLogger("trainer")), Outage(logging.getLogger("worker"))
    assert trainer.failed(down, "run 3 trains on") and worker.failed(down, "w", quiet=True)
    assert not trainer.failed(down, "run 3 trains on")  # later tries say nothing
    assert trainer.back("run 3: 12 rows written") is not None and worker.back() is not None
    assert [r.getMessage().split(" since ")[0].split(" after ")[0] for r in caplog.records] == [
        "database unreachable", "database back"]
    assert "(connection refused); run 3 trains on" in caplog.records[0].getMessage()


@pytest.mark.slow
def test_a_worker_trains_its_run_through_a_postgresql_stop_and_says_it_in_two_lines(
        own_postgres, pg_store, tmp_path):
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    run_id = runner.create_run(pg_store, config(), name="under a worker")
    env = {**os.environ, "GPTDASH_DB_URL": pg_store.engine.url.render_as_string(False),
           "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    log = tmp_path / "worker.log"
    with open(log, "w") as out:
        worker = subprocess.Popen([sys.executable, "-m", "jobs", "worker", "--name", "w1",
                                   "--exit-when-idle"], cwd=root, env=env, stdout=out,
                                  stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while pg_store.get_run(run_id).last_step < 60:
            assert time.monotonic() < deadline and worker.poll() is None, log.read_text()
            time.sleep(0.1)
        own_postgres.halt()
        time.sleep(4)
        own_postgres.resume()
        assert worker.wait(120) == 0, log.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
    run = pg_store.get_run(run_id)
    assert (run.status, run.last_step) == ("completed", STEPS), run.error
    assert list(pg_store.metrics([run_id], ["train/loss"])["step"]) == list(range(STEPS))
    text = log.read_text()
    assert "Traceback" not in text, text
    assert text.count("database unreachable since") == 1, text
    assert text.count("database back after") == 1, text
