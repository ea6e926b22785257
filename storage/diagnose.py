"""Database problems in one line: what is wrong at a URL and what to do next.

Where a URL meets SQLAlchemy (parsing it, loading its driver, connecting, and
every statement after that) whatever SQLAlchemy or the driver raises becomes a
``StorageError`` naming the URL with its password masked, so the CLI prints one
line and a page shows one ``st.error``, never a traceback. ``make_engine``
(storage/schema.py) uses ``parse_url``, ``engine_error`` and ``translate_errors``.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import Engine, event
from sqlalchemy.engine import URL, ExceptionContext, make_url
from sqlalchemy.exc import (
    ArgumentError,
    DataError,
    IntegrityError,
    InterfaceError,
    NoSuchModuleError,
    NotSupportedError,
    OperationalError,
    ProgrammingError,
)

from storage.errors import DatabaseUnavailable, StorageError, database_error, shown_url

EXAMPLES = "sqlite:////path/to/gptdash.db or postgresql+psycopg://user@host/dbname"
# What the code itself did wrong (a bad statement or value) or expects (a duplicate row
# that storage catches): these stay as they are; everything else is the database's state.
_NOT_THE_DATABASE = (IntegrityError, ProgrammingError, DataError, NotSupportedError)


def parse_url(url: str) -> URL:
    """``url`` parsed, or a StorageError saying what a database URL looks like."""
    try:
        return make_url(url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number
        raise StorageError(f"{shown_url(url)!r} is not a database URL: set GPTDASH_DB_URL "
                           f"to {EXAMPLES}") from None


def engine_error(url: URL, exc: Exception) -> StorageError:
    """What ``create_engine`` raised for a parsed ``url``, as one line."""
    if isinstance(exc, NoSuchModuleError):
        return database_error(url, f"gptdash does not know the database kind "
                                   f"{url.drivername!r}; use {EXAMPLES}")
    if isinstance(exc, ImportError):
        return database_error(url, f"its driver ({exc.name or exc}) is not installed; use "
                                   f"{EXAMPLES} (psycopg 3 is installed)")
    return database_error(url, f"{_first_line(exc, url)}; check GPTDASH_DB_URL")


def translate_errors(engine: Engine) -> None:
    """Make every database-side error on ``engine`` a one-line StorageError naming its URL."""
    url = engine.url

    @event.listens_for(engine, "handle_error")
    def _one_line(context: ExceptionContext) -> None:
        # A failed pre-ping is how the pool notices a dropped connection and reconnects. A
        # KeyboardInterrupt (a second Ctrl-C or SIGTERM, which the CLI raises as one to abort)
        # or a SystemExit that lands mid-statement is the user's, not the database's.
        if (context.is_pre_ping or not isinstance(context.original_exception, Exception)
                or isinstance(context.sqlalchemy_exception, _NOT_THE_DATABASE)):
            return
        error = database_error(url, problem(url, context.original_exception))
        if is_unavailable(url, context.sqlalchemy_exception, context.is_disconnect):
            raise DatabaseUnavailable(str(error)) from None
        raise error from None


# What a PostgreSQL server that is down, restarting or unreachable makes the driver say;
# a wrong password or database name is not among them (nobody fixes those by waiting).
_NOT_TRANSIENT = ("password", "authentication", "does not exist", "permission denied",
                  "no pg_hba.conf entry")


def is_unavailable(url: URL, exc: BaseException | None, is_disconnect: bool = False) -> bool:
    """Whether ``exc`` means the database is away for now rather than wrong for good.

    SQLite: a lock held past the busy timeout. PostgreSQL: a refused, reset or dropped
    connection, or a server that is shutting down or starting up.
    """
    if is_disconnect:
        return True
    if not isinstance(exc, OperationalError | InterfaceError):
        return False
    lowered = str(exc.orig if getattr(exc, "orig", None) is not None else exc).lower()
    if url.get_backend_name() == "sqlite":
        return "locked" in lowered or "busy" in lowered
    return not any(word in lowered for word in _NOT_TRANSIENT)


def problem(url: URL, exc: BaseException) -> str:
    """What the driver's ``exc`` means for the database at ``url``, and what to do next."""
    message = _first_line(exc, url)
    lowered = message.lower()
    if url.get_backend_name() == "sqlite":
        return _sqlite_problem(Path(url.database or ""), message, lowered)
    if "password" in lowered or "authentication" in lowered:
        return f"{message}; check the user and password in GPTDASH_DB_URL"
    if "database" in lowered and "does not exist" in lowered:
        return f"{message}; create it (createdb {url.database}) or fix the name in GPTDASH_DB_URL"
    if "connection" in lowered or "connect" in lowered or "host" in lowered:
        where = f"{url.host or 'the local socket'}" + (f":{url.port}" if url.port else "")
        return f"{message}; check that PostgreSQL is running and reachable at {where}"
    return f"{message}; check that the database is reachable and intact"


def _sqlite_problem(path: Path, message: str, lowered: str) -> str:
    if "file is not a database" in lowered:
        return (f"{path} is not a SQLite database; move it away, or set GPTDASH_DB_URL to "
                "another file")
    if "unable to open" in lowered:
        if path.is_dir():
            return (f"{path} is a folder; set GPTDASH_DB_URL to a file in it, e.g. "
                    f"sqlite:///{path / 'gptdash.db'}")
        if not path.parent.is_dir():
            return f"the folder {path.parent} does not exist; create it or fix GPTDASH_DB_URL"
        return f"cannot open {path} ({message}); check that {path.parent} is writable"
    if "no such table" in lowered:
        return (f"{message}: its gptdash tables are gone (was the file deleted or replaced?); "
                "restart gptdash to start a new database there, or put the file back")
    if "readonly" in lowered or "read-only" in lowered:
        return f"{message}; check that you may write {path} and its folder"
    if "locked" in lowered or "busy" in lowered:
        return f"{message}; another process holds the database too long, try again"
    return f"{message}; check the file {path}"


def _first_line(exc: BaseException, url: URL) -> str:
    """The driver's message on one line, with the URL's password masked if it shows."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    message = lines[0] if lines else type(exc).__name__
    if url.password:
        message = message.replace(str(url.password), "***")
    return message
