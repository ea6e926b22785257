"""Shared pytest fixtures."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from postgres_support import PostgresServer, start_server
from ray_support import AUTH_ENV, RayCluster, start_head

from storage.store import RunStore

if TYPE_CHECKING:
    from playwright.sync_api import Browser


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``make test`` runs two workers) each worker trains on one torch
    thread, and so do the processes its tests start: two workers with two spinning threads
    each on a two-core machine cost far more than they gain."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        import torch

        torch.set_num_threads(1)


# The modules that take longest (a Ray head and its worker groups, browsers against servers,
# processes trained and signalled), started first under xdist, so that no long one is left
# to run alone at the end.
SLOW_GROUPS = ("ray", "test_browser_e2e", "test_browser_live_extras", "test_serve",
               "test_lifecycle", "test_cli", "test_browser_pages", "test_jobs_distributed",
               "test_gptcore_distributed", "test_browser_sweeps", "test_workers",
               "test_browser_forecast", "test_faults")


RAY_GROUP = "ray"


def module_group(path: str | Path) -> str:
    """The scheduling group of a test file: every module with ``ray`` in its name shares one
    (one worker starts one Ray head for them all); any other module is a group of its own
    (its module fixtures, a browser's server say, start once)."""
    stem = Path(path).stem
    return RAY_GROUP if RAY_GROUP in stem.split("_") else stem


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """Whole groups (``module_group``) to one worker each, in collection order.

    Not ``--dist loadgroup``: pytest-xdist 3.8 marks a test's group by appending
    ``@group`` to ``item._nodeid``, which pytest 9 no longer reads, so every test became a
    group of its own: a module's tests went to both workers and its fixtures (a server,
    a Ray head) started on each.
    """
    from xdist.scheduler import LoadScopeScheduling

    class ModuleGroups(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return module_group(nodeid.split("::", 1)[0])

    return ModuleGroups(config, log)


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Order the tests: the Ray modules one after another (also without xdist), so the Ray
    head stops once they are done; under xdist the slowest groups first, so that no long
    one is left to run alone at the end."""
    unnamed = sorted({item.path.name for item in items if "ray_cluster" in item.fixturenames
                      and module_group(item.path) != RAY_GROUP})
    if unnamed:
        raise pytest.UsageError(f"{', '.join(unnamed)} use the Ray head: put 'ray' in the "
                                "module's name (test_ray_*.py), so one worker runs them all")
    order = {name: i for i, name in enumerate(SLOW_GROUPS)}
    first_ray = next((i for i, item in enumerate(items) if module_group(item.path) == RAY_GROUP),
                     0)
    under_xdist = bool(os.environ.get("PYTEST_XDIST_WORKER"))

    def rank(indexed: tuple[int, pytest.Item]) -> tuple[int, int]:
        index, item = indexed
        group = module_group(item.path)
        if under_xdist:
            return (order.get(group, len(order)), index)
        return (first_ray if group == RAY_GROUP else index, index)

    items[:] = [item for _, item in sorted(enumerate(items), key=rank)]


_ray_heads: list[RayCluster] = []  # the session's Ray head while it runs


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """Stop the Ray head after the last test that uses it: idle, its 19 processes still
    take a tenth of a core, which the rest of the suite needs on a two-core machine."""
    if not _ray_heads or "ray_cluster" not in item.fixturenames:
        return
    later = item.session.items[item.session.items.index(item) + 1:]
    if not any("ray_cluster" in other.fixturenames for other in later):
        _ray_heads.pop().stop()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test marked ``backends("sqlite", "postgresql")`` gets its ``store`` on each database.

    The storage suites mark whole modules; one test may narrow that with its own marker.
    """
    marker = metafunc.definition.get_closest_marker("backends")
    if marker is not None and "store" in metafunc.fixturenames:
        metafunc.parametrize("store", marker.args, indirect=True)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh gptdash home folder (GPTDASH_HOME) with the default SQLite database URL."""
    monkeypatch.setenv("GPTDASH_HOME", str(tmp_path))
    monkeypatch.delenv("GPTDASH_DB_URL", raising=False)
    monkeypatch.delenv("GPTDASH_ARTIFACTS", raising=False)
    return tmp_path


def _postgres_server() -> Iterator[PostgresServer]:
    """A started PostgreSQL 15 server, stopped afterwards (also on failure). A machine without
    PostgreSQL fails the tests that need it rather than skipping them."""
    try:
        server = start_server()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A real PostgreSQL 15 server for the whole session."""
    yield from _postgres_server()


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server for one module alone, whose tests stop, restart and start it
    (database outages) without disturbing the session's server."""
    yield from _postgres_server()


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    """A real local Ray head (127.0.0.1, 2 CPUs, free ports) for the whole session, stopped
    at the end (also on failure). Token auth is off on both sides (``RAY_AUTH_MODE``).

    A machine without the Ray extra fails these tests rather than skipping them.
    """
    saved = {key: os.environ.get(key) for key in AUTH_ENV}
    os.environ.update(AUTH_ENV)
    try:
        cluster = start_head()
    except RuntimeError as exc:
        pytest.fail(str(exc), pytrace=False)
    _ray_heads.append(cluster)
    try:
        yield cluster
    finally:
        cluster.stop()  # again if pytest_runtest_teardown did already: nothing left to stop
        _ray_heads.clear()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def pg_url(postgres: PostgresServer) -> Iterator[str]:
    """The URL of a fresh, empty PostgreSQL database, dropped after the test."""
    name = postgres.create_database()
    yield postgres.url(name)
    postgres.drop_database(name)


@pytest.fixture(scope="session")
def pg_at_head(postgres: PostgresServer) -> str:
    """A database that `gptdash db upgrade` created at the schema head, once; ``store`` and
    ``pg_head_url`` copy it (RunStore refuses to create a PostgreSQL schema itself)."""
    from storage.migrate import upgrade
    from storage.schema import make_engine

    name = postgres.create_database()
    engine = make_engine(postgres.url(name))
    upgrade(engine)
    engine.dispose()
    return name


@pytest.fixture
def pg_head_url(postgres: PostgresServer, pg_at_head: str) -> Iterator[str]:
    """The URL of a fresh PostgreSQL database at the schema head, dropped after the test."""
    name = postgres.create_database(template=pg_at_head)
    yield postgres.url(name)
    postgres.drop_database(name)


@pytest.fixture
def store(home: Path, request: pytest.FixtureRequest) -> Iterator[RunStore]:
    """A RunStore on a fresh database: a real SQLite file in the temporary home folder.

    Under ``@pytest.mark.backends(...)`` it is parametrized, and the ``postgresql``
    variant is a fresh copy of ``pg_at_head`` on the session's PostgreSQL server.
    """
    if getattr(request, "param", "sqlite") == "sqlite":
        run_store = RunStore()
        yield run_store
        run_store.close()
        return
    postgres: PostgresServer = request.getfixturevalue("postgres")
    name = postgres.create_database(template=request.getfixturevalue("pg_at_head"))
    run_store = RunStore(postgres.url(name))
    yield run_store
    run_store.close()
    postgres.drop_database(name)


@pytest.fixture(autouse=True)
def _keep_main_module() -> Iterator[None]:
    """AppTest installs app.py as __main__; restore it, or multiprocessing's spawn children
    would re-run the app when a later test starts them."""
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's chromium, headless, for one test module (browser tests only ask for it)."""
    from browser_support import launch_chromium
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = launch_chromium(playwright)
        yield chromium
        chromium.close()
