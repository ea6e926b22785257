"""Schema migrations: old databases upgraded in place, new ones created at head, models = revisions.

The SQLite files in tests/data were written by commit 8635e74's own RunStore
(see tests/data/make_legacy_db.py); every test works on a copy.
"""

from __future__ import annotations

import math
import shutil
import sqlite3
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, MetaData, inspect, text

from storage.errors import StorageError
from storage.migrate import HEAD, MIGRATIONS_DIR, current_revision, ensure_schema, upgrade
from storage.schema import Base, make_engine
from storage.store import RunStore

DATA = Path(__file__).parent / "data"
LEGACY = DATA / "gptdash-8635e74.db"
LEGACY_NO_AUTOINCREMENT = DATA / "gptdash-8635e74-no-autoincrement.db"
# The runs columns of revision 0001, for comparing rows across the upgrade.
OLD_RUN_COLUMNS = ("id, name, status, config, tags, notes, device, n_params, created_at, "
                   "started_at, finished_at, error, stop_requested, checkpoint_path, parent_id, "
                   "worker, last_step, max_steps, tokens_seen, best_val_loss, last_train_loss")


def _copy(source: Path, tmp_path: Path) -> Path:
    target = tmp_path / source.name
    shutil.copyfile(source, target)
    return target


def _rows(path: Path) -> dict[str, list[tuple]]:
    """Every row of the tables revision 0001 had, read with plain sqlite3."""
    with sqlite3.connect(path) as db:
        return {
            "runs": db.execute(f"SELECT {OLD_RUN_COLUMNS} FROM runs ORDER BY id").fetchall(),
            "metrics": db.execute("SELECT * FROM metrics ORDER BY run_id, key, step").fetchall(),
            "samples": db.execute("SELECT * FROM samples ORDER BY id").fetchall(),
        }


def _runs_ddl(path: Path) -> str:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT sql FROM sqlite_master WHERE name = 'runs'").fetchone()[0]


def _revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return current_revision(connection)


def _differences(engine: Engine) -> list:
    """What `alembic check` would report: the models (ours and Optuna's, for search sweeps'
    studies) against the database's real schema."""
    from optuna.storages._rdb import models

    both = MetaData()
    for table in [*Base.metadata.tables.values(), *models.BaseModel.metadata.tables.values()]:
        table.to_metadata(both)
    with engine.connect() as connection:
        return compare_metadata(MigrationContext.configure(connection), both)


def test_head_constant_is_alembic_script_head() -> None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    assert ScriptDirectory.from_config(config).get_current_head() == HEAD


def test_database_from_8635e74_upgrades_in_place_with_no_row_lost(tmp_path: Path) -> None:
    path = _copy(LEGACY, tmp_path)
    before = _rows(path)
    assert len(before["runs"]) == 3 and len(before["metrics"]) == 22 and before["samples"]

    store = RunStore(f"sqlite:///{path}")
    try:
        assert _revision(store.engine) == HEAD
        assert _rows(path) == before
        base = store.get_run(1)
        assert (base.name, base.status, base.tags) == ("baseline", "completed", ["base", "ü"])
        assert base.config == {"model": {"emb_dim": 64}, "lr": 3e-4}
        assert (base.heartbeat_at, base.owner_host, base.owner_pid, base.sweep_id) == (
            None, None, None, None)
        assert store.get_run(2).parent_id == 1
        assert math.isnan(store.metrics([1], ["val/loss"])["value"][0])
        # Run 4 was deleted before the upgrade; AUTOINCREMENT still remembers it.
        assert store.create_run("after upgrade", {}) == 5
        assert _differences(store.engine) == []
    finally:
        store.close()


def test_runs_table_without_autoincrement_gets_it_and_stops_reusing_ids(tmp_path: Path) -> None:
    path = _copy(LEGACY_NO_AUTOINCREMENT, tmp_path)
    assert "AUTOINCREMENT" not in _runs_ddl(path)
    before = _rows(path)

    store = RunStore(f"sqlite:///{path}")
    try:
        assert "AUTOINCREMENT" in _runs_ddl(path)
        assert _rows(path) == before  # every row and id kept
        first = store.create_run("new", {}, status="completed")
        assert first == 4  # past the highest id left
        store.delete_run(first)
        assert store.create_run("newer", {}) == first + 1  # the deleted id is not handed out again
        with store.engine.connect() as connection:
            assert connection.exec_driver_sql("PRAGMA foreign_key_check").all() == []
            indexes = {row[1] for row in connection.exec_driver_sql("PRAGMA index_list(runs)")}
            assert {"ix_runs_status", "ix_runs_sweep_id"} <= indexes
        assert _differences(store.engine) == []
    finally:
        store.close()


def test_failed_sqlite_upgrade_changes_nothing(tmp_path: Path) -> None:
    path = _copy(LEGACY, tmp_path)
    with sqlite3.connect(path) as db:  # a table in the way of revision 0002's new one
        db.execute("CREATE TABLE workers (name TEXT)")
    before, ddl = _rows(path), _runs_ddl(path)

    with pytest.raises(Exception, match="workers"):
        RunStore(f"sqlite:///{path}")

    assert _rows(path) == before and _runs_ddl(path) == ddl
    with sqlite3.connect(path) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master")}
    assert "alembic_version" not in tables and "events" not in tables


def test_processes_opening_an_old_database_together_migrate_it_once(tmp_path: Path) -> None:
    path = _copy(LEGACY_NO_AUTOINCREMENT, tmp_path)
    before = _rows(path)

    def open_store(_: int) -> int:
        store = RunStore(f"sqlite:///{path}")
        try:
            return store.get_run(1).id
        finally:
            store.close()

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(open_store, range(4))) == [1] * 4
    assert _rows(path) == before
    assert "AUTOINCREMENT" in _runs_ddl(path)


def test_empty_sqlite_database_is_created_at_head(tmp_path: Path) -> None:
    store = RunStore(f"sqlite:///{tmp_path / 'new.db'}")
    try:
        assert _revision(store.engine) == HEAD
        assert _differences(store.engine) == []
        assert "AUTOINCREMENT" in _runs_ddl(tmp_path / "new.db")
        with store.engine.connect() as connection:
            metrics_ddl = connection.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE name = 'metrics'").scalar()
            assert metrics_ddl.rstrip().endswith("WITHOUT ROWID")
            # The migration turned foreign keys off on its connection; the pool has them on.
            assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    finally:
        store.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_models_match_migrations(backend: str, request: pytest.FixtureRequest,
                                 tmp_path: Path) -> None:
    url = (request.getfixturevalue("pg_url") if backend == "postgresql"
           else f"sqlite:///{tmp_path / 'migrated.db'}")
    engine = make_engine(url)
    try:
        # Through every revision from an empty database (not create_all, which head uses).
        assert upgrade(engine, to="0001") == (None, "0001")
        assert upgrade(engine) == ("0001", HEAD)
        assert _differences(engine) == []
    finally:
        engine.dispose()


def test_postgres_older_schema_is_refused_until_upgraded(pg_url: str) -> None:
    engine = make_engine(pg_url)
    try:
        upgrade(engine, to="0001")
        with engine.begin() as connection:
            connection.execute(text(
                "INSERT INTO runs (name, status, config, tags, notes, created_at, stop_requested,"
                " last_step, max_steps, tokens_seen) VALUES ('old', 'completed', '{}', '[]', '',"
                " now(), false, 7, 10, 0)"))
        message = (f"database {pg_url}: the schema is at revision 0001 but this gptdash needs "
                   f"{HEAD}: run `gptdash db upgrade` (once, from one machine)")
        with pytest.raises(StorageError) as refused:
            RunStore(pg_url)
        assert str(refused.value) == message
        assert _revision(engine) == "0001"  # refusing changed nothing

        assert upgrade(engine) == ("0001", HEAD)
        assert upgrade(engine) == (HEAD, HEAD)
    finally:
        engine.dispose()
    store = RunStore(pg_url)
    try:
        (old,) = store.list_runs()
        assert (old.name, old.last_step, old.sweep_id) == ("old", 7, None)
    finally:
        store.close()


def test_postgres_schema_from_before_migrations_is_refused_then_upgraded(pg_url: str) -> None:
    engine = make_engine(pg_url)
    try:
        upgrade(engine, to="0001")
        with engine.begin() as connection:  # what 8635e74's create_all left: no alembic_version
            connection.execute(text("DROP TABLE alembic_version"))
        with pytest.raises(StorageError, match="at revision 0001 but .* `gptdash db upgrade`"):
            ensure_schema(engine)
        assert upgrade(engine) == ("0001", HEAD)
        assert _revision(engine) == HEAD
        assert _differences(engine) == []
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_revision_newer_than_the_code_is_refused(backend: str, request: pytest.FixtureRequest,
                                                 tmp_path: Path) -> None:
    url = (request.getfixturevalue("pg_url") if backend == "postgresql"
           else f"sqlite:///{tmp_path / 'future.db'}")
    engine = make_engine(url)
    try:
        upgrade(engine)
        with engine.begin() as connection:
            connection.execute(text("UPDATE alembic_version SET version_num = '0999'"))
        with pytest.raises(StorageError, match="revision 0999, newer than this gptdash knows"):
            RunStore(url)
        with pytest.raises(StorageError, match="upgrade gptdash"):
            upgrade(engine)
    finally:
        engine.dispose()


def test_opening_a_database_at_head_is_fast_and_loads_neither_alembic_nor_pandas(
        tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'head.db'}"
    RunStore(url).close()
    engine = make_engine(url)
    try:
        timings = []
        for _ in range(20):
            started = time.perf_counter()
            ensure_schema(engine)
            timings.append(time.perf_counter() - started)
        assert sorted(timings)[10] < 0.02  # the median: a few milliseconds
    finally:
        engine.dispose()
    code = ("import sys; from storage.store import RunStore; RunStore(sys.argv[1]).close(); "
            "print(sorted(m for m in ('alembic', 'pandas', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, url], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_revision_0007_counts_an_earlier_claim_as_one_attempt_and_schedules_nothing(
        backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    url = (request.getfixturevalue("pg_url") if backend == "postgresql"
           else f"sqlite:///{tmp_path / '0006.db'}")
    engine = make_engine(url)
    try:
        upgrade(engine, to="0006")
        with engine.begin() as connection:
            for name, started in (("trained", "CURRENT_TIMESTAMP"), ("never started", "NULL")):
                connection.execute(text(
                    "INSERT INTO runs (name, status, config, tags, notes, created_at, started_at,"
                    " stop_requested, last_step, max_steps, tokens_seen, executor, claim_token)"
                    f" VALUES (:name, 'interrupted', '{{}}', '[]', '', CURRENT_TIMESTAMP, "
                    f"{started}, false, 7, 10, 0, 'local', 3)"), {"name": name})
        assert upgrade(engine) == ("0006", HEAD)
        assert _differences(engine) == []
    finally:
        engine.dispose()
    store = RunStore(url)
    try:
        trained, never = sorted(store.list_runs(), key=lambda r: r.id)
        assert (trained.attempts, never.attempts) == (1, 0)
        for run in (trained, never):  # an old interrupted run waits for a person, as it did
            assert (run.auto_resumes, run.max_auto_resumes, run.resume_after,
                    run.claim_token) == (0, None, None, 3)
    finally:
        store.close()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_revision_0008_adds_optuna_tables_that_optuna_and_its_dashboard_open(
        backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    import optuna

    url = (request.getfixturevalue("pg_url") if backend == "postgresql"
           else f"sqlite:///{tmp_path / '0007.db'}")
    engine = make_engine(url)
    try:
        upgrade(engine, to="0007")
        with engine.connect() as connection:
            assert not {"studies", "trials"} & set(inspect(connection).get_table_names())
        assert upgrade(engine) == ("0007", HEAD)  # what `gptdash db upgrade` runs
        assert _differences(engine) == []
        with engine.connect() as connection:
            assert current_revision(connection) == HEAD  # ours, not overwritten by Optuna
    finally:
        engine.dispose()
    # As optuna-dashboard opens a storage URL: no table creation, no version check.
    storage = optuna.storages.RDBStorage(url, skip_compatibility_check=True,
                                         skip_table_creation=True)
    study = optuna.create_study(study_name="s", storage=storage)
    study.tell(study.ask({"x": optuna.distributions.FloatDistribution(0, 1)}), 0.5)
    assert optuna.load_study(study_name="s", storage=storage).best_value == 0.5
    storage.engine.dispose()
    store = RunStore(url)  # gptdash still opens it at head
    store.close()
