"""What a user sees of Ray: the Workers view's node and job tables (pure), and the Workers and
Live pages through Streamlit's AppTest against the session's real Ray head."""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import streamlit as st
from markdown_support import shown
from ray_support import RayCluster, submit_python
from sqlalchemy import text
from streamlit.testing.v1 import AppTest

from gptcore.config import preset
from jobs import actions, ray_cluster
from storage.status import Executor, RunStatus
from storage.store import RunStore
from ui.ray_cluster import (
    ACTIVE_JOB,
    JOB_COLUMNS,
    NODE_COLUMNS,
    job_summary,
    jobs_table,
    nodes_table,
)

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
# Far above the ids other tests' stores give, so these jobs never take a real run's id; each
# test's home starts its ids higher, as the job ids on the session's cluster must differ.
RUN_ID_FLOORS = itertools.count(910_000, 1000)


@dataclass
class Node:
    node_id: str
    name: str = "10.0.0.1"
    alive: bool = True
    is_head: bool = False
    cpus: float = 8.0
    gpus: float = 0.0


@dataclass
class Job:
    run_id: int
    status: str
    node_id: str | None
    attempt: int = 1
    started_at: datetime | None = NOW - timedelta(minutes=2)
    ended_at: datetime | None = None
    message: str = ""
    submission_id: str = ""


def test_nodes_table_names_each_nodes_role_state_resources_and_its_running_runs():
    nodes = [Node("aaaaaaaa1111", is_head=True, cpus=2), Node("bbbbbbbb2222", gpus=4),
             Node("cccccccc3333", alive=False)]
    jobs = [Job(3, "RUNNING", "bbbbbbbb2222"), Job(4, "PENDING", "bbbbbbbb2222"),
            Job(2, "SUCCEEDED", "aaaaaaaa1111")]
    table = nodes_table(nodes, jobs)
    assert list(table.columns) == NODE_COLUMNS
    assert list(table["node"]) == ["10.0.0.1 · aaaaaaaa", "10.0.0.1 · bbbbbbbb",
                                   "10.0.0.1 · cccccccc"]
    assert list(table["role"]) == ["head", "worker", "worker"]
    assert list(table["state"]) == ["alive", "alive", "dead"]
    assert list(table["CPUs"]) == ["2", "8", "8"] and list(table["GPUs"]) == ["0", "4", "0"]
    assert list(table["gptdash jobs"]) == ["—", "#3, #4", "—"]  # an ended job is not on it


def test_jobs_table_links_each_job_to_its_run_and_says_where_and_how_long():
    nodes = [Node("aaaaaaaa1111")]
    jobs = [Job(7, "RUNNING", "aaaaaaaa1111", attempt=2),
            Job(5, "FAILED", "gone0000", ended_at=NOW - timedelta(minutes=1),
                message="Job entrypoint command failed with exit code 1"),
            Job(6, "PENDING", None, started_at=None)]
    table = jobs_table(jobs, nodes, NOW)
    assert list(table.columns) == JOB_COLUMNS
    assert list(table["run"]) == ["live?run=7", "live?run=5", "live?run=6"]
    assert list(table["attempt"]) == [2, 1, 1]
    assert list(table["status"]) == ["running", "failed", "pending"]
    assert list(table["node"]) == ["10.0.0.1 · aaaaaaaa", "gone0000", "—"]
    assert list(table["ran for"]) == ["2 min 00 s", "1 min 00 s", "—"]
    assert table["Ray says"].iloc[1].startswith("Job entrypoint command failed")
    assert table["started"].iloc[2] == "—"


def test_a_jobs_summary_and_ray_says_keep_to_the_first_line_of_rays_message():
    failed = Job(5, "FAILED", None, submission_id="gptdash-run-5-1",
                 message="Job entrypoint command failed with exit code 1, last available "
                         "logs:\nTraceback (most recent call last):\n  ...")
    assert job_summary(failed) == ("Ray job `gptdash-run-5-1` (attempt 1): failed · Job "
                                   "entrypoint command failed with exit code 1, last "
                                   "available logs:")
    assert jobs_table([failed], [], NOW)["Ray says"].iloc[0].endswith("last available logs:")
    running = Job(6, "RUNNING", None, attempt=2, submission_id="gptdash-run-6-2")
    assert job_summary(running) == "Ray job `gptdash-run-6-2` (attempt 2): running"



def test_the_sidebar_counts_a_run_a_ray_job_trains_though_no_worker_row_names_it(home):
    from ui.widgets import training_now

    store = RunStore()
    on_ray = store.create_run("on ray", preset("tiny").to_dict(), status=RunStatus.RUNNING,
                              executor=Executor.RAY)
    store.create_run("waits", preset("tiny").to_dict(), executor=Executor.RAY)  # queued
    assert training_now(store) == ([on_ray], 0)
    store.close()

# ---- the pages, on the session's Ray head ------------------------------------------------------

@contextmanager
def _page(page: str) -> Iterator[AppTest]:
    """An AppTest of one page; afterwards the cached store is closed and forgotten, and
    ``__main__`` is as before (AppTest leaves the page there)."""
    from ui.widgets import get_store

    main = sys.modules["__main__"]
    st.cache_resource.clear()
    try:
        yield AppTest.from_file(str(ROOT / page), default_timeout=60)
    finally:
        get_store().close()
        st.cache_resource.clear()
        sys.modules["__main__"] = main


def _fresh_run_ids(store: RunStore) -> None:
    """Make the store's next run ids ones no other test gave a job (SQLite hands ids out
    after sqlite_sequence)."""
    with store.engine.begin() as conn:
        if not conn.execute(text("SELECT 1 FROM sqlite_sequence WHERE name = 'runs'")).first():
            conn.execute(text("INSERT INTO sqlite_sequence (name, seq) VALUES ('runs', :s)"),
                         {"s": next(RUN_ID_FLOORS)})


def _run_on_ray(store: RunStore, name: str, status: RunStatus,
                executor: Executor = Executor.RAY) -> int:
    _fresh_run_ids(store)
    return store.create_run(name, preset("tiny").to_dict(), status=status, max_steps=100,
                            executor=executor)


def _texts(elements) -> str:
    """What the elements show (people's text reaches them escaped)."""
    return "\n".join(shown(str(e.value)) for e in elements)


@pytest.fixture
def on_cluster(ray_cluster: RayCluster, home: Path,
               monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[RayCluster, RunStore]]:
    """A fresh home whose pages look at the session's Ray head."""
    monkeypatch.setenv("GPTDASH_RAY_ADDRESS", ray_cluster.address)
    store = RunStore()
    yield ray_cluster, store
    store.close()


def test_workers_page_shows_the_ray_nodes_and_the_runs_jobs_linked_to_them(on_cluster):
    cluster, store = on_cluster
    run_id = _run_on_ray(store, "on ray", RunStatus.COMPLETED)
    submit_python(cluster.address, f"gptdash-run-{run_id}-1", "print('trained')")
    with _page("app_pages/workers.py") as at:
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        assert not at.error and not at.warning, _texts(at.error) + _texts(at.warning)
        assert "Ray cluster" in _texts(at.subheader)
        nodes, jobs = (frame.value for frame in at.dataframe)
        assert list(nodes.columns) == NODE_COLUMNS and nodes["role"].iloc[0] == "head"
        assert nodes["state"].iloc[0] == "alive" and nodes["CPUs"].iloc[0] == "2"
        mine = jobs[jobs["run"] == f"live?run={run_id}"]
        assert list(mine["status"]) == ["succeeded"]
        assert mine["node"].iloc[0] in set(nodes["node"])
        assert f"at {cluster.address}" in _texts(at.caption)


def test_workers_page_with_a_ray_address_leading_nowhere_says_so_in_one_line(home, monkeypatch):
    monkeypatch.setenv("GPTDASH_RAY_ADDRESS", "http://127.0.0.1:1")
    with _page("app_pages/workers.py") as at:
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        [warning] = at.warning
        assert "No Ray cluster answers at http://127.0.0.1:1" in warning.value
        assert "\n" not in warning.value
        assert "No worker has started yet" in _texts(at.info)  # the plain workers still show


def test_workers_page_without_a_ray_address_has_no_ray_section(home, monkeypatch):
    monkeypatch.delenv("GPTDASH_RAY_ADDRESS", raising=False)
    store = RunStore()
    store.register_worker("box:1", host="box", pid=1, device="cpu")
    with _page("app_pages/workers.py") as at:
        at.run()
        assert not at.exception
        assert [t.value for t in at.title] == ["Workers"]
        [table] = at.dataframe
        assert table.value["name"].tolist() == ["box:1"]  # the workers' own section is there
        assert "worker process that `gptdash serve` starts" in _texts(at.caption)
        assert "Ray cluster" not in _texts(at.subheader) and not at.warning
    store.close()


def test_workers_page_shows_live_workers_and_the_gone_ones_only_on_request(home):
    store = RunStore()
    for name in ("now", "stopped", "silent"):
        store.register_worker(name, host="box", pid=1, device="cpu")
    store.worker_stopped("stopped")
    with store.engine.begin() as conn:  # silent for an hour: lost
        conn.execute(text("UPDATE workers SET heartbeat_at = :t WHERE name = 'silent'"),
                     {"t": datetime.now(UTC) - timedelta(hours=1)})
    with _page("app_pages/workers.py") as at:
        at.run()
        assert "thread" not in _texts(at.caption)  # the worker is a process of its own
        assert at.dataframe[0].value["name"].tolist() == ["now"]
        at.toggle(key="workers_show_gone").set_value(True).run()
        assert at.toggle(key="workers_show_gone").label == "Show stopped and lost workers (2)"
        assert sorted(at.dataframe[0].value["name"]) == ["now", "silent", "stopped"]
    store.worker_stopped("now")
    with _page("app_pages/workers.py") as at:
        at.run()
        assert "No worker is running" in _texts(at.info) and not at.dataframe
    store.close()


def test_live_page_shows_a_ray_runs_latest_job_and_its_log_tail(on_cluster):
    cluster, store = on_cluster
    run_id = _run_on_ray(store, "on ray", RunStatus.COMPLETED)
    for attempt, last in ((1, 5), (2, 60)):
        submit_python(cluster.address, f"gptdash-run-{run_id}-{attempt}",
                      f"for i in range(1, {last + 1}): print('attempt {attempt} line', i)")
    with _page("app_pages/live.py") as at:
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        assert not at.error and not at.warning, _texts(at.error) + _texts(at.warning)
        [expander] = [e for e in at.expander if e.label == "Ray job"]
        assert f"`gptdash-run-{run_id}-2` (attempt 2): succeeded" in _texts(expander.caption)
        [tail] = expander.code
        assert tail.value.endswith("attempt 2 line 60") and "line 20\n" not in tail.value


def test_live_page_has_no_ray_job_for_a_run_trained_by_a_plain_worker(on_cluster):
    _, store = on_cluster
    _run_on_ray(store, "local", RunStatus.COMPLETED, executor=Executor.LOCAL)
    with _page("app_pages/live.py") as at:
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        assert "Ray job" not in [e.label for e in at.expander]


def test_live_page_of_a_ray_run_with_the_cluster_gone_says_so_in_one_line(home, monkeypatch):
    monkeypatch.setenv("GPTDASH_RAY_ADDRESS", "http://127.0.0.1:1")
    store = RunStore()
    store.create_run("on ray", preset("tiny").to_dict(), status=RunStatus.INTERRUPTED,
                     executor=Executor.RAY)
    store.close()
    with _page("app_pages/live.py") as at:
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        [expander] = [e for e in at.expander if e.label == "Ray job"]
        [warning] = expander.warning
        assert warning.value.startswith("No Ray cluster answers at http://127.0.0.1:1")



# ---- "Run on" on New run and Sweeps --------------------------------------------------------------

def _start(at: AppTest, label: str) -> None:
    [button] = [b for b in at.button if b.label == label]
    button.click().run()


def test_new_run_offers_run_on_only_when_a_ray_address_is_set(home, monkeypatch):
    monkeypatch.delenv("GPTDASH_RAY_ADDRESS", raising=False)
    with _page("app.py") as at:
        at.run()
        assert not at.exception and not [r for r in at.radio if r.label == "Run on"]
    monkeypatch.setenv("GPTDASH_RAY_ADDRESS", "http://127.0.0.1:1")
    with _page("app.py") as at:
        at.run()
        assert at.radio(key="new_run_on").value == Executor.LOCAL  # plain workers by default


def test_new_run_started_on_ray_is_a_ray_job_on_the_cluster(on_cluster):
    cluster, store = on_cluster
    _fresh_run_ids(store)
    with _page("app.py") as at:
        at.run()
        at.number_input(key="f0_max_steps").set_value(30)
        at.radio(key="new_run_on").set_value(Executor.RAY).run()
        _start(at, "Start training")
        assert not at.exception, [e.value for e in at.exception]
        assert not at.error, _texts(at.error)
        assert at.title[0].value == "Live run"
    [run] = store.list_runs()
    assert run.executor == Executor.RAY and run.worker == f"gptdash-run-{run.id}-1"
    job = ray_cluster.latest_job(cluster.address, run.id)
    assert job.submission_id == run.worker
    actions.stop(store, run.id)  # cancel it (or stop it, if its job has claimed it)
    deadline = time.monotonic() + 120
    while ray_cluster.latest_job(cluster.address, run.id).status in ACTIVE_JOB:
        assert time.monotonic() < deadline, "the cancelled run's Ray job did not end"
        time.sleep(0.5)


def test_a_sweep_started_on_ray_with_the_cluster_gone_queues_nothing_and_says_so(
        home, monkeypatch):
    monkeypatch.setenv("GPTDASH_RAY_ADDRESS", "http://127.0.0.1:1")
    with _page("app.py") as at:
        at.run()
        at.switch_page("app_pages/sweeps.py")
        at.run()
        at.text_area(key="sweep_overrides").input("max_steps=20\nbatch_size=4").run()
        at.text_input(key="sweep_grid_values_0").input("1e-3,3e-3").run()
        at.radio(key="sweep_on").set_value(Executor.RAY).run()
        _start(at, "Start sweep")
        assert not at.exception, [e.value for e in at.exception]
        [error] = at.error
        assert "No Ray cluster answers at http://127.0.0.1:1" in shown(error.value)
    store = RunStore()
    assert store.list_runs() == [] and store.list_sweeps() == []
    store.close()
