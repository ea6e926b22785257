"""Bring a database's schema to the revision this gptdash needs, through Alembic.

``ensure_schema`` runs whenever a RunStore opens. At head (the usual case) it is
one small query and never imports Alembic, so a CLI command stays fast. Otherwise:

- an empty database is created at head (tables from the models, stamped head);
- a database made before migrations existed (gptdash tables, no
  ``alembic_version``) counts as revision 0001;
- SQLite is upgraded in place: one file has one writer at a time, and the
  migration holds SQLite's write lock, so two processes never both migrate;
- PostgreSQL is only upgraded by ``upgrade`` (``gptdash db upgrade``), run once
  from one machine: workers on several machines must not race to migrate a
  shared server, so they refuse to open an older schema and say so;
- a revision newer than this code is refused: the code is the one to upgrade.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, inspect, text

from storage.errors import StorageError
from storage.schema import Base

if TYPE_CHECKING:
    from alembic.config import Config

# The newest revision in storage/migrations/versions; a test checks it against Alembic's head.
HEAD = "0003"
# Revision of a database made before migrations existed: the tables of 0001, unstamped.
UNVERSIONED = "0001"
MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Any constant shared by every gptdash process: PostgreSQL serialises migrations on it.
_PG_LOCK_KEY = 0x67707464  # "gptd"


def current_revision(connection: Connection) -> str | None:
    """The revision stamped in ``alembic_version``, or None where there is none."""
    if not inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def ensure_schema(engine: Engine) -> None:
    """Make the database ready for this code, or raise StorageError saying what to run.

    See the module docstring for what happens at each starting point.
    """
    with engine.connect() as connection:
        if current_revision(connection) == HEAD:
            return
    _migrate(engine, allow_upgrade=engine.dialect.name == "sqlite")


def upgrade(engine: Engine, *, to: str = HEAD) -> tuple[str | None, str]:
    """Upgrade any database (PostgreSQL included) to revision ``to``; return (from, to).

    ``from`` is None for an empty database, which is created at ``to``; a
    database made before migrations existed counts as revision 0001.
    """
    return _migrate(engine, allow_upgrade=True, target=to)


def _migrate(engine: Engine, *, allow_upgrade: bool, target: str = HEAD) -> tuple[str | None, str]:
    """Bring the database from wherever it is to ``target`` under the migration lock."""
    from alembic import command

    config = _alembic_config()
    with _locked_transaction(engine) as connection:
        config.attributes["connection"] = connection
        # Read again under the lock: another process may have migrated meanwhile.
        start = current_revision(connection)
        unversioned = start is None
        if unversioned and not inspect(connection).has_table("runs"):
            if target == HEAD:
                # The models are the head schema (a test holds them equal to the revisions),
                # and creating them is much quicker than replaying every revision.
                Base.metadata.create_all(connection)
                command.stamp(config, HEAD)
            else:
                command.upgrade(config, target)
            return None, target
        start = start or UNVERSIONED
        _check_known(config, start)
        if start == target:
            return start, target
        if not allow_upgrade:
            raise StorageError(
                f"the database schema is at revision {start} but this gptdash needs {target}: "
                "run `gptdash db upgrade` (once, from one machine)")
        if unversioned:
            command.stamp(config, UNVERSIONED)
        command.upgrade(config, target)
        return start, target


def _alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def _check_known(config: Config, revision: str) -> None:
    """Refuse a revision this code has no script for: a newer gptdash wrote it."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    try:
        known = ScriptDirectory.from_config(config).get_revision(revision) is not None
    except CommandError:
        known = False
    if not known:
        raise StorageError(
            f"the database schema is at revision {revision}, newer than this gptdash knows "
            f"(it needs {HEAD}): upgrade gptdash on this machine to use this database")


@contextmanager
def _locked_transaction(engine: Engine) -> Iterator[Connection]:
    """One transaction that only one process at a time holds, committed if the block succeeds."""
    if engine.dialect.name != "sqlite":
        with engine.begin() as connection:
            if engine.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"),
                                   {"key": _PG_LOCK_KEY})
            yield connection
        return
    with engine.connect() as connection:
        driver = connection.connection.driver_connection
        isolation = driver.isolation_level
        # Python's sqlite3 would run DDL outside any transaction; with isolation_level None
        # it leaves transactions to us, so the BEGIN IMMEDIATE below covers every statement.
        driver.isolation_level = None
        try:
            # Off before the transaction (SQLite ignores it inside one): rebuilding a table
            # drops the old one, which with foreign keys on would cascade into its children.
            connection.exec_driver_sql("PRAGMA foreign_keys=OFF")
            connection.exec_driver_sql("BEGIN IMMEDIATE")
            try:
                sequences = _sqlite_sequences(connection)
                yield connection
                _restore_sqlite_sequences(connection, sequences)
                broken = connection.exec_driver_sql("PRAGMA foreign_key_check").all()
                if broken:
                    raise StorageError(f"migrating the database broke foreign keys: {broken}")
                connection.commit()
            except BaseException:
                connection.rollback()
                raise
        finally:
            connection.exec_driver_sql("PRAGMA foreign_keys=ON")
            connection.commit()
            driver.isolation_level = isolation


def _sqlite_sequences(connection: Connection) -> dict[str, int]:
    """Each AUTOINCREMENT table's high-water mark: the largest id it ever handed out."""
    if not inspect(connection).has_table("sqlite_sequence"):
        return {}
    return dict(connection.exec_driver_sql("SELECT name, seq FROM sqlite_sequence").all())


def _restore_sqlite_sequences(connection: Connection, before: dict[str, int]) -> None:
    """Put back high-water marks that rebuilding a table lowered to its largest id left.

    Otherwise the ids of deleted runs (and their checkpoint folders) would be handed
    out again after a migration that rebuilds ``runs``.
    """
    after = _sqlite_sequences(connection)
    tables = set(inspect(connection).get_table_names())
    for name, seq in before.items():
        if name in after and after[name] < seq:
            connection.exec_driver_sql("UPDATE sqlite_sequence SET seq = ? WHERE name = ?",
                                       (seq, name))
        elif name not in after and name in tables:
            connection.exec_driver_sql("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)",
                                       (name, seq))
