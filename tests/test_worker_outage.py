"""A worker and the CLI while PostgreSQL is stopped: one line when the database goes away,
one when it is back, never a traceback (issue 24).

The server is this module's own, so halting it disturbs no other test.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from jobs.manager import JobManager
from jobs.recovery import recover_interrupted
from jobs.supervisor import Periodic, Supervisor
from storage.store import RunStore
from tests.postgres_support import PostgresServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def outage_url(own_postgres: PostgresServer) -> str:
    """A database at the schema head on the module's own server."""
    return own_postgres.database_at_head()


def _wait_for(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return predicate()


def test_worker_says_one_line_when_the_database_goes_and_one_when_it_is_back(
        own_postgres: PostgresServer, outage_url: str, caplog: pytest.LogCaptureFixture):
    store = RunStore(outage_url)
    # Beats every 0.5 s and the queue polled every 0.5 s: both threads meet the outage often.
    manager = JobManager(store, name="outage-worker", dead_after_s=2.0)
    caplog.set_level(logging.INFO)
    try:
        assert _wait_for(lambda: any(w.name == "outage-worker" for w in store.workers()), 30)
        own_postgres.halt()
        time.sleep(5)
        own_postgres.resume()
        assert _wait_for(lambda: "database back" in caplog.text, 15), caplog.text
        time.sleep(1)  # a beat or two after it is back: nothing more is said
        assert manager.is_alive()
    finally:
        manager.shutdown()
        store.close()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("database unreachable since" in m for m in messages) == 1, messages
    assert sum("database back after" in m for m in messages) == 1, messages
    assert "Traceback" not in caplog.text
    assert not [r for r in caplog.records if r.exc_info]
    # And it went on working: the worker's row beats again.
    assert any(w.name == "outage-worker" and w.status == "stopped"
               for w in RunStore(outage_url).workers())


def test_cli_says_one_line_when_the_database_is_away(own_postgres: PostgresServer,
                                                     outage_url: str):
    own_postgres.halt()
    try:
        result = subprocess.run([sys.executable, "-m", "jobs", "list"], cwd=ROOT,
                                env={**os.environ, "GPTDASH_DB_URL": outage_url},
                                capture_output=True, text=True, timeout=60, check=False)
    finally:
        own_postgres.resume()
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("gptdash: database ") and "PostgreSQL is running" in lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def test_worker_started_while_the_database_is_away_waits_for_it(own_postgres: PostgresServer,
                                                                outage_url: str,
                                                                tmp_path):
    own_postgres.halt()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "jobs", "worker", "--exit-when-idle"],
                                cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env={**os.environ, "GPTDASH_DB_URL": outage_url,
                                                "GPTDASH_HOME": str(tmp_path)})
        time.sleep(4)
        assert proc.poll() is None, proc.communicate()[0]  # waiting, not exited
    finally:
        own_postgres.resume()
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    lines = output.strip().splitlines()
    assert sum("database unreachable since" in line for line in lines) == 1, output
    assert "the worker starts when it answers" in lines[0]
    assert sum("database back after" in line for line in lines) == 1, output
    assert "the queue is empty" in lines[-1]
    assert "Traceback" not in output


def test_serve_skips_its_checks_during_an_outage_in_one_line(own_postgres: PostgresServer,
                                                              outage_url: str,
                                                              caplog: pytest.LogCaptureFixture):
    store = RunStore(outage_url)
    recovery = Periodic("recovery pass", 0.2,
                        lambda: [f"run {i} interrupted" for i in recover_interrupted(store)])
    said: list[str] = []
    supervisor = Supervisor([], say=said.append, periodic=[recovery])
    caplog.set_level(logging.INFO)
    timers = [threading.Timer(0.5, own_postgres.halt), threading.Timer(4.0, own_postgres.resume),
              threading.Timer(7.0, os.kill, (os.getpid(), signal.SIGTERM))]
    for timer in timers:
        timer.start()
    try:
        assert supervisor.run() == 0
    finally:
        for timer in timers:
            timer.join()
        store.close()
    messages = [r.getMessage() for r in caplog.records]
    assert sum("database unreachable since" in m for m in messages) == 1, messages
    assert any("the recovery pass skips its turns" in m for m in messages), messages
    assert sum("database back after" in m for m in messages) == 1, messages
    assert said == []  # no "the recovery pass failed: ..." line
