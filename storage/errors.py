"""The exception storage raises for problems a user can fix (a missing run, a bad path).

Storage imports nothing from gptcore, so it has its own type; ``jobs.errors.USER_ERRORS``
lets the CLI and the pages treat it exactly like ``gptcore.errors.GptdashError``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

# user:password@ in a URL SQLAlchemy could not parse (a parsed one masks its own); up to
# the last @, as a password may contain one.
_PASSWORD = re.compile(r"(://[^/@:]*:).*@")


class StorageError(Exception):
    """A problem the user can fix; the message says what to change."""


class RunMissing(StorageError):
    """A run id that is not in the database (deleted, or never there)."""


class ClaimLost(StorageError):
    """A process wrote to a run it no longer owns: another claim took it, or its owner was
    declared gone. The process must stop writing to the run at once."""

    # gptcore's trainer (which imports no storage) ends at once on an exception that says
    # this, without logging a crash or recording a status.
    abandons_run = True


class DatabaseUnavailable(StorageError):
    """The database did not answer for now (server down or restarting, a connection reset,
    a lock held past the busy timeout): the same statement may work in a moment."""


def missing_run(run_id: int) -> RunMissing:
    """The error for a run id that is not in the database."""
    return RunMissing(f"run {run_id} does not exist")


def shown_url(url: URL | str) -> str:
    """``url`` as it may be printed: its password, if any, as ``***``."""
    if isinstance(url, str):
        return _PASSWORD.sub(r"\1***@", url)
    return url.render_as_string(hide_password=True)


def database_error(url: URL | str, problem: str) -> StorageError:
    """A problem with the database at ``url``, in one line that names it (password masked).

    ``problem`` says what is wrong and what to do next.
    """
    return StorageError(f"database {shown_url(url)}: {problem}")
