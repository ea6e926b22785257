"""What a run reports, kept in order until the database takes it.

A trainer must not stop because the database blinked (a PostgreSQL restart, a fail-over,
a SQLite writer that holds its lock past the busy timeout). ``StoreCallbacks`` puts every
write for its run (metric rows, samples, events, checkpoint paths, summaries, status) into
an ``Outbox`` and drains it in order; while the database is away the writes wait here. The
newest ``memory_limit`` rows wait in memory; older ones are appended to a spool file (one
JSON line each), so a long outage costs disk, not memory. Draining applies the spool first,
then memory: the order the run reported in.

Each write is applied once it is acknowledged and then dropped; one that failed in the
middle is applied again, so the store's writes are idempotent (metrics upsert on their key,
a sample or event already there is not added twice).
"""

from __future__ import annotations

import json
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MEMORY_LIMIT = 20_000  # rows kept in memory before older ones go to the spool file


@dataclass
class Op:
    """One write: ``kind`` names the store call, ``args`` its JSON-able arguments."""

    kind: str
    args: dict[str, Any]

    @property
    def rows(self) -> int:
        """How many rows it carries (its weight against the memory limit)."""
        return len(self.args["rows"]) if self.kind == "metrics" else 1


class Outbox:
    """An ordered queue of a run's writes: memory first, a spool file past a bound."""

    def __init__(self, spool_path: Path, memory_limit: int = MEMORY_LIMIT):
        self.spool_path = spool_path
        self.memory_limit = memory_limit
        self._memory: deque[Op] = deque()
        self._memory_rows = 0
        self._spooled_rows = 0  # rows in the spool file not yet applied
        self._spool_offset = 0  # where the next unapplied line of the spool file starts
        self._lock = threading.Lock()  # guards the queue; put() never waits on a drain
        self._drain_lock = threading.Lock()  # one drain at a time, so order holds

    def put(self, kind: str, /, **args: Any) -> None:
        """Queue a write behind every earlier one."""
        op = Op(kind, args)
        with self._lock:
            self._memory.append(op)
            self._memory_rows += op.rows
            if self._memory_rows > self.memory_limit:
                self._spill()

    def pending(self) -> int:
        """Rows waiting, in memory and in the spool file."""
        with self._lock:
            return self._memory_rows + self._spooled_rows

    def drain(self, apply: Callable[[Op], None]) -> int:
        """Apply the queued writes oldest first and return how many rows were written.

        The first write that raises stays queued with everything after it, and the error
        goes to the caller (who knows whether the database is merely away).
        """
        written = 0
        with self._drain_lock:
            while True:
                op, from_spool, end = self._next()
                if op is None:
                    return written
                apply(op)
                written += op.rows
                with self._lock:
                    if from_spool:
                        self._spool_offset = end
                        self._spooled_rows -= op.rows
                        if self._spooled_rows == 0:
                            self._clear_spool()
                    else:
                        self._memory.popleft()
                        self._memory_rows -= op.rows

    # ---- the spool file ------------------------------------------------------------------
    def _spill(self) -> None:
        """Append what is in memory to the spool file (caller holds the lock).

        Everything in the file is older than everything in memory, so a drain that reads
        the file first keeps the order.
        """
        self.spool_path.parent.mkdir(parents=True, exist_ok=True)
        with self.spool_path.open("a", encoding="utf-8") as f:
            for op in self._memory:
                f.write(json.dumps({"kind": op.kind, "args": op.args}) + "\n")
            f.flush()
        self._spooled_rows += self._memory_rows
        self._memory, self._memory_rows = deque(), 0

    def _next(self) -> tuple[Op | None, bool, int]:
        """The oldest queued write, whether it came from the spool, and the spool offset
        after it."""
        with self._lock:
            if self._spooled_rows:
                with self.spool_path.open("rb") as f:
                    f.seek(self._spool_offset)
                    line = f.readline()
                    end = f.tell()
                record = json.loads(line)
                return Op(record["kind"], record["args"]), True, end
            if self._memory:
                return self._memory[0], False, 0
            return None, False, 0

    def _clear_spool(self) -> None:
        self.spool_path.unlink(missing_ok=True)
        self._spool_offset = 0
