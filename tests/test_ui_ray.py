"""What a user sees of Ray: the Workers view's node and job tables (pure), and the Workers and
Live pages through Streamlit's AppTest against the session's real Ray head."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import streamlit as st
from ray_support import RayCluster, submit_python
from sqlalchemy import text
from streamlit.testing.v1 import AppTest

from gptcore.config import preset
from storage.status import RunStatus
from storage.store import RunStore
from ui.ray_cluster import JOB_COLUMNS, NODE_COLUMNS, jobs_table, nodes_table

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
# Far above the ids other tests' stores give, so these jobs never take a real run's id.
FIRST_RUN_ID = 910_000


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


def _run_on_ray(store: RunStore, name: str, status: RunStatus) -> int:
    """A run whose id is above FIRST_RUN_ID (SQLite hands out ids after sqlite_sequence)."""
    with store.engine.begin() as conn:
        if not conn.execute(text("SELECT 1 FROM sqlite_sequence WHERE name = 'runs'")).first():
            conn.execute(text("INSERT INTO sqlite_sequence (name, seq) VALUES ('runs', :s)"),
                         {"s": FIRST_RUN_ID})
    return store.create_run(name, preset("tiny").to_dict(), status=status, max_steps=100)


def _texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


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
    with _page("app_pages/workers.py") as at:
        at.run()
        assert not at.exception
        assert "Ray cluster" not in _texts(at.subheader) and not at.warning
