"""Bring a database's schema to the revision this gptdash needs, through Alembic.

``ensure_schema`` runs whenever a RunStore opens. At head (the usual case) it is
one small query and never imports Alembic, so a CLI command stays fast. Otherwise:

- an empty SQLite database is created at head (tables from the models and Optuna's
  tables for search sweeps' studies, ``storage.optuna_tables``; stamped head);
- a database made before migrations existed (gptdash tables, no
  ``alembic_version``) counts as revision 0001;
- SQLite is upgraded in place: one file has one writer at a time, and the
  migration holds SQLite's write lock, so two processes never both migrate;
- PostgreSQL is only created or upgraded by ``upgrade`` (``gptdash db upgrade``),
  run once from one machine: workers on several machines must not race to migrate a
  shared server, so they refuse to open an empty or older schema and say so;
- a revision newer than this code is refused: the code is the one to upgrade;
- a database that holds other tables and not gptdash's is refused, never added to.

Every refusal is a one-line StorageError naming the database's URL.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, inspect, text

from storage.errors import database_error
from storage.optuna_tables import create_optuna_tables
from storage.schema import Base

if TYPE_CHECKING:
    from alembic.config import Config
    from sqlalchemy.engine import URL

# The newest revision in storage/migrations/versions; a test checks it against Alembic's head.
HEAD = "0008"
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
        if engine.dialect.name != "sqlite":
            # Only `gptdash db upgrade` changes a server's schema, an empty one's included.
            start = _starting_point(connection, engine.url)
            found = ("it has no gptdash tables yet" if start is None
                     else f"the schema is at revision {start} but this gptdash needs {HEAD}")
            raise database_error(engine.url, f"{found}: run `gptdash db upgrade` "
                                             "(once, from one machine)")
    _migrate(engine)


def upgrade(engine: Engine, *, to: str = HEAD) -> tuple[str | None, str]:
    """Upgrade any database (PostgreSQL included) to revision ``to``; return (from, to).

    ``from`` is None for an empty database, which is created at ``to``; a
    database made before migrations existed counts as revision 0001.
    """
    return _migrate(engine, target=to)


def _migrate(engine: Engine, *, target: str = HEAD) -> tuple[str | None, str]:
    """Bring the database from wherever it is to ``target`` under the migration lock."""
    from alembic import command

    config = _alembic_config()
    with _locked_transaction(engine) as connection:
        config.attributes["connection"] = connection
        # Read again under the lock: another process may have migrated meanwhile.
        start = _starting_point(connection, engine.url)
        if start is None:
            if target == HEAD:
                # The models are the head schema (a test holds them equal to the revisions),
                # and creating them is much quicker than replaying every revision.
                Base.metadata.create_all(connection)
                create_optuna_tables(connection)  # search sweeps' studies (revision 0008)
                command.stamp(config, HEAD)
            else:
                command.upgrade(config, target)
            return None, target
        if start == target:
            return start, target
        if current_revision(connection) is None:
            command.stamp(config, UNVERSIONED)
        command.upgrade(config, target)
        return start, target


def _alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    return config


def _starting_point(connection: Connection, url: URL) -> str | None:
    """The revision the database is at (None: empty; 0001: gptdash tables, unstamped).

    Refuses a database that is not gptdash's (tables, but no ``runs``) and a revision
    this code has no script for (a newer gptdash wrote it).
    """
    revision = current_revision(connection)
    tables = sorted(inspect(connection).get_table_names())
    if "runs" not in tables:
        if not tables:
            return None
        listed = ", ".join(tables[:5]) + (", ..." if len(tables) > 5 else "")
        raise database_error(url, f"it holds tables that are not gptdash's ({listed}); set "
                                  "GPTDASH_DB_URL to a gptdash database or a new, empty one")
    if revision is None:
        return UNVERSIONED
    if not _known(revision):
        raise database_error(
            url, f"the schema is at revision {revision}, newer than this gptdash knows "
                 f"(it needs {HEAD}): upgrade gptdash on this machine to use this database")
    return revision


def _known(revision: str) -> bool:
    """Whether this code has a migration script for ``revision``."""
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    try:
        return ScriptDirectory.from_config(_alembic_config()).get_revision(revision) is not None
    except CommandError:
        return False


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
                    raise database_error(engine.url,
                                         f"migrating it broke foreign keys: {broken}")
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
