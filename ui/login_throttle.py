"""Slowing down password guessing at the dashboard's gate.

A script could otherwise try passwords as fast as it can open sessions. Every wrong
password makes the next try wait: per client address (one guesser) and overall (many
addresses at once), each wait doubling up to a cap. A try made too soon is refused
before the password is looked at, so it tells a guesser nothing. The state is one
object per server process (``THROTTLE``), shared by every browser session, since a
script can open a new session for each guess; a module's global, not
``st.cache_resource``, which any client may clear over the WebSocket.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger(__name__)

FORGET_S = 900.0  # failures this old, with none since, no longer count


@dataclass(frozen=True)
class Backoff:
    """How long the next try waits after ``count`` failures in a row: nothing for the
    first ``free`` ones (a typo), then ``first_s``, doubling up to ``max_s``."""

    free: int
    first_s: float
    max_s: float

    def wait_s(self, count: int) -> float:
        if count < self.free:
            return 0.0
        return min(self.first_s * 2 ** (count - self.free), self.max_s)


# Two wrong passwords from one address make its third try wait 5 s, then 10, 20...
PER_CLIENT = Backoff(free=2, first_s=5.0, max_s=300.0)
# Guesses spread over many addresses: after 10 failures in all, everyone waits.
OVERALL = Backoff(free=10, first_s=1.0, max_s=60.0)


@dataclass
class _Failures:
    count: int = 0
    last_at: float = 0.0


@dataclass(frozen=True)
class Attempt:
    """What became of one password typed at the gate: ``accepted``, or refused; a
    positive ``wait_s`` means refused unchecked, because it came that much too soon."""

    accepted: bool
    wait_s: float = 0.0


class LoginThrottle:
    """Failed passwords per client address and overall; thread-safe (sessions run in
    threads of their own)."""

    def __init__(self, per_client: Backoff = PER_CLIENT, overall: Backoff = OVERALL,
                 clock: Callable[[], float] = time.monotonic):
        self.per_client = per_client
        self.overall = overall
        self._clock = clock
        self._lock = threading.Lock()
        self._clients: dict[str, _Failures] = {}
        self._all = _Failures()

    def attempt(self, client: str, correct: Callable[[], bool]) -> Attempt:
        """Check a password for ``client`` (its address) with ``correct``, unless a
        wait is still running. Under the lock, so that sessions opened at the same
        instant cannot all slip through before their failures count."""
        with self._lock:
            now = self._clock()
            self._forget(now)
            failures = self._clients.get(client, _Failures())
            wait = max(self._left(failures, self.per_client, now),
                       self._left(self._all, self.overall, now))
            if wait > 0:
                return Attempt(accepted=False, wait_s=wait)
            if correct():
                self._clients.pop(client, None)
                return Attempt(accepted=True)
            self._clients[client] = failures
            for record in (failures, self._all):
                record.count += 1
                record.last_at = now
            log.warning("wrong dashboard password from %s (%d in a row from there, %d in "
                        "all); its next try waits %g s", client, failures.count,
                        self._all.count, max(self.per_client.wait_s(failures.count),
                                             self.overall.wait_s(self._all.count)))
            return Attempt(accepted=False)

    def _left(self, failures: _Failures, backoff: Backoff, now: float) -> float:
        return max(0.0, failures.last_at + backoff.wait_s(failures.count) - now)

    def _forget(self, now: float) -> None:
        """Drop addresses quiet for FORGET_S (so the table cannot grow without bound)."""
        stale = [c for c, f in self._clients.items() if now - f.last_at > FORGET_S]
        for client in stale:
            del self._clients[client]
        if now - self._all.last_at > FORGET_S:
            self._all = _Failures()


THROTTLE = LoginThrottle()
