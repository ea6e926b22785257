"""One line when the database goes away, one when it is back: never a traceback a beat.

A worker, a trainer and ``gptdash serve`` each talk to the database every few seconds.
When it is down (a PostgreSQL restart, a fail-over, a SQLite lock held too long) each
of those calls fails the same way; ``Outage`` turns the first failure into one line
("database unreachable since 12:01:03 (connection refused); ...") and the first success
after it into another ("database back after 2.1 s; ..."), and is silent in between.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime

from storage.errors import DatabaseUnavailable

# Phrases of the drivers' messages, shortest first, that say why in a few words.
_REASONS = ("connection refused", "database is locked", "database is busy",
            "the database system is shutting down", "the database system is starting up",
            "terminating connection due to administrator command",
            "server closed the connection unexpectedly", "connection reset",
            "connection timed out", "no route to host", "could not translate host name",
            "consuming input failed", "connection is closed", "connection failed")


def reason(exc: BaseException) -> str:
    """A few words for why the database did not answer."""
    lowered = str(exc).lower()
    for phrase in _REASONS:
        if phrase in lowered:
            return phrase
    return type(exc).__name__


class Outage:
    """Tracks one process's view of the database: up, or away since when."""

    def __init__(self, logger: logging.Logger):
        self.log = logger
        self.since: float | None = None  # wall time of the first failure of this outage
        self._started = 0.0  # monotonic time of the same
        self._said = False  # whether this outage's first line was logged

    @property
    def down(self) -> bool:
        return self.since is not None

    def down_for(self) -> float:
        """Seconds since the outage began (0 while the database answers)."""
        return time.monotonic() - self._started if self.since is not None else 0.0

    def failed(self, exc: DatabaseUnavailable, doing: str = "", *, quiet: bool = False) -> bool:
        """Note a failed call; the first of an outage is logged (unless ``quiet``: someone
        else in the process says it). True when it was the first."""
        if self.since is not None:
            return False
        self.since, self._started = time.time(), time.monotonic()
        self._said = not quiet
        if quiet:
            return True
        clock = datetime.fromtimestamp(self.since).strftime("%H:%M:%S")
        self.log.warning("database unreachable since %s (%s)%s", clock, reason(exc),
                         f"; {doing}" if doing else "")
        return True

    def back(self, done: str = "") -> float | None:
        """Note a call that worked; the first after an outage is logged. The outage's
        length in seconds, or None when there was none."""
        if self.since is None:
            return None
        took = self.down_for()
        self.since = None
        if not self._said:
            return took
        self.log.warning("database back after %.1f s%s", took, f"; {done}" if done else "")
        return took
