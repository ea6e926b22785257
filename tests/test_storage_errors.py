"""Every database problem is one line naming the URL (password masked) and what to do next.

In the store (``RunStore``), in the CLI (exit 2, no traceback) and on the pages (one
``st.error``). With PostgreSQL only ``gptdash db upgrade`` creates or migrates the schema.
"""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import streamlit as st
from markdown_support import shown
from sqlalchemy import event, inspect, text
from streamlit.testing.v1 import AppTest

from jobs import runner
from storage import home as gptdash_home
from storage.errors import StorageError
from storage.schema import make_engine
from storage.status import RunStatus
from storage.store import RunStore

ROOT = Path(__file__).resolve().parent.parent
SECRET = "s3cret-pw"


def _closed_port() -> int:
    """A local port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _gptdash(home: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "GPTDASH_HOME": str(home), "GPTDASH_DB_URL": url}
    return subprocess.run([sys.executable, "-m", "jobs", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def _assert_one_line(message: str, *, names: str) -> None:
    assert "Traceback" not in message
    assert len(message.strip().splitlines()) == 1, message
    assert names in message, message
    assert SECRET not in message


def _junk(tmp_path: Path) -> Path:
    path = tmp_path / "bad.db"
    path.write_text("junk\n")
    return path


def _foreign(tmp_path: Path) -> Path:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    return path


def _newer(tmp_path: Path) -> Path:
    path = tmp_path / "future.db"
    RunStore(f"sqlite:///{path}").close()
    with sqlite3.connect(path) as db:
        db.execute("UPDATE alembic_version SET version_num = '0999'")
    return path


# (how the URL is made, what the message must name instead of the raw URL, what it says)
BAD_URLS = {
    "garbage": (lambda tmp: "garbage", "'garbage' is not a database URL"),
    "no host part": (lambda tmp: f"postgresql://x:{SECRET}@/", "postgresql://x:***@/"),
    "bad port": (lambda tmp: f"postgresql://x:{SECRET}@h:port/db", "postgresql://x:***@"),
    "unknown kind": (lambda tmp: "nosuchdb://x/y", "does not know the database kind"),
    "missing driver": (lambda tmp: f"postgresql+psycopg2://u:{SECRET}@h/db",
                       "driver (psycopg2) is not installed"),
    "server down": (lambda tmp: f"postgresql+psycopg://u:{SECRET}@127.0.0.1:{_closed_port()}/db",
                    "check that PostgreSQL is running"),
    "missing folder": (lambda tmp: "sqlite:////nonexistent/dir/x.db",
                       "the folder /nonexistent/dir does not exist"),
    "folder": (lambda tmp: f"sqlite:///{tmp}", "is a folder"),
    "garbage file": (lambda tmp: f"sqlite:///{_junk(tmp)}", "is not a SQLite database"),
    "foreign sqlite": (lambda tmp: f"sqlite:///{_foreign(tmp)}",
                       "holds tables that are not gptdash's (invoices)"),
    "newer gptdash": (lambda tmp: f"sqlite:///{_newer(tmp)}",
                      "revision 0999, newer than this gptdash knows"),
}


@pytest.mark.parametrize("case", BAD_URLS)
def test_every_database_problem_is_one_storage_error_naming_the_url(case, tmp_path):
    make, says = BAD_URLS[case]
    url = make(tmp_path)
    with pytest.raises(StorageError) as raised:
        RunStore(url)
    message = str(raised.value)
    _assert_one_line(message, names=says)
    shown = url.replace(SECRET, "***")
    assert shown in message or case in ("garbage", "bad port")


def test_a_foreign_sqlite_database_is_left_as_it_was(tmp_path):
    path = _foreign(tmp_path)
    with pytest.raises(StorageError, match="not gptdash's"):
        RunStore(f"sqlite:///{path}")
    with sqlite3.connect(path) as db:
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master")] == ["invoices"]


@pytest.mark.parametrize("command", [["list"], ["submit", "--preset", "tiny"], ["worker"],
                                     ["serve", "--port", "0"], ["db", "upgrade"]])
def test_cli_commands_on_a_garbage_database_file_say_one_line_and_exit_2(command, tmp_path):
    path = _junk(tmp_path)
    if command[0] == "serve":
        command = ["serve", "--port", str(_closed_port())]
    out = _gptdash(tmp_path, f"sqlite:///{path}", *command)
    assert out.returncode == 2, out.stderr
    _assert_one_line(out.stderr, names=f"gptdash: database sqlite:///{path}: ")
    assert "serving on" not in out.stderr and path.read_text() == "junk\n"


@pytest.mark.parametrize("url", ["garbage", f"postgresql://x:{SECRET}@/"])
def test_cli_list_and_db_upgrade_with_a_bad_url_say_one_line_and_exit_2(url, tmp_path):
    for command in (["list"], ["db", "upgrade"]):
        out = _gptdash(tmp_path, url, *command)
        assert out.returncode == 2, out.stderr
        _assert_one_line(out.stderr, names="gptdash: ")


def test_cli_with_postgres_down_names_the_url_with_its_password_masked(tmp_path):
    url = f"postgresql+psycopg://gptdash:{SECRET}@127.0.0.1:{_closed_port()}/gptdash"
    out = _gptdash(tmp_path, url, "list")
    assert out.returncode == 2
    _assert_one_line(out.stderr, names=url.replace(SECRET, "***"))


def test_an_empty_postgres_database_is_refused_until_gptdash_db_upgrade(pg_url, tmp_path):
    with pytest.raises(StorageError) as refused:
        RunStore(pg_url)
    assert str(refused.value) == (f"database {pg_url}: it has no gptdash tables yet: run "
                                  "`gptdash db upgrade` (once, from one machine)")
    listed = _gptdash(tmp_path, pg_url, "list")
    assert listed.returncode == 2 and "run `gptdash db upgrade`" in listed.stderr
    engine = make_engine(pg_url)
    try:
        with engine.connect() as connection:
            assert inspect(connection).get_table_names() == []  # nobody created anything
    finally:
        engine.dispose()

    upgraded = _gptdash(tmp_path, pg_url, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    listed = _gptdash(tmp_path, pg_url, "list")
    assert listed.returncode == 0, listed.stderr


def test_a_fresh_sqlite_home_still_creates_its_database(tmp_path):
    out = _gptdash(tmp_path, f"sqlite:///{tmp_path / 'new.db'}", "list")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "new.db").is_file()


def test_a_database_deleted_mid_session_is_a_one_line_storage_error(home):
    store = RunStore()
    try:
        store.create_run("before", {})
        for path in home.glob("gptdash.db*"):
            path.unlink()
        store.engine.dispose()  # the next read opens the file afresh, as a new process would
        with pytest.raises(StorageError) as raised:
            store.list_runs()
        _assert_one_line(str(raised.value), names=f"database {store.url}: ")
        assert "restart gptdash" in str(raised.value)
    finally:
        store.close()


@pytest.mark.parametrize("exit_exception", [KeyboardInterrupt, SystemExit])
def test_a_ctrl_c_mid_statement_stays_a_ctrl_c_and_the_store_works_after(home, exit_exception):
    """The CLI aborts with a KeyboardInterrupt from its signal handler, which may land while
    a statement runs: called a database problem, the run ended failed instead of aborted."""
    store = RunStore()
    try:
        run_id = store.create_run("mid-statement", {})
        interrupt = [exit_exception("aborted by a second SIGTERM")]

        @event.listens_for(store.engine, "before_cursor_execute")
        def _signal_lands_here(*_args):
            if interrupt:
                raise interrupt.pop()

        with pytest.raises(exit_exception, match="aborted by a second SIGTERM"):
            store.set_status(run_id, RunStatus.RUNNING)
        store.set_status(run_id, RunStatus.RUNNING)
        assert store.get_run(run_id).status == RunStatus.RUNNING
    finally:
        store.close()


def test_a_database_down_at_the_end_of_a_run_deletes_none_of_its_checkpoints(home):
    store = RunStore()
    try:
        run_id = store.create_run("kept", {})
        checkpoint = gptdash_home.checkpoints_dir(run_id) / "latest.pt"
        checkpoint.write_bytes(b"weights")
        with store.engine.begin() as connection:  # the database breaks, the run is not gone
            connection.execute(text("DROP TABLE alembic_version"))
            connection.execute(text("ALTER TABLE runs RENAME TO runs_elsewhere"))
        with pytest.raises(StorageError):
            runner._forget_if_deleted(store, run_id)
        assert checkpoint.read_bytes() == b"weights"
    finally:
        store.close()


def test_the_pages_show_one_error_box_for_a_bad_database(tmp_path, monkeypatch):
    path = _junk(tmp_path)
    monkeypatch.setenv("GPTDASH_HOME", str(tmp_path))
    monkeypatch.setenv("GPTDASH_DB_URL", f"sqlite:///{path}")
    main = sys.modules["__main__"]
    st.cache_resource.clear()
    try:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
    finally:
        st.cache_resource.clear()
        sys.modules["__main__"] = main
    assert not at.exception, [e.value for e in at.exception]
    [box] = at.error
    _assert_one_line(shown(box.value), names=f"database sqlite:///{path}: ")


def test_a_home_folder_that_cannot_be_made_is_one_line_naming_the_variable(tmp_path):
    taken = tmp_path / "a-file"
    taken.write_text("not a folder")
    out = subprocess.run([sys.executable, "-m", "jobs", "list"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, env={**os.environ, "GPTDASH_HOME": str(taken)})
    assert out.returncode == 2
    _assert_one_line(out.stderr, names=f"cannot use {taken} as the gptdash folder (it is a file)")
    assert "set GPTDASH_HOME" in out.stderr


def test_a_database_deleted_while_the_pages_are_open_is_one_error_box(home):
    from ui.widgets import get_store

    main = sys.modules["__main__"]
    st.cache_resource.clear()
    try:
        at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60).run()
        assert not at.exception and not at.error
        for path in home.glob("gptdash.db*"):
            path.unlink()
        get_store().engine.dispose()  # as when the pool opens a new connection
        at.switch_page("app_pages/runs.py").run()
        assert not at.exception, [e.value for e in at.exception]
        [box] = at.error
        _assert_one_line(shown(box.value),
                         names=f"database sqlite:///{home / 'gptdash.db'}: ")
    finally:
        get_store().close()
        st.cache_resource.clear()
        sys.modules["__main__"] = main
