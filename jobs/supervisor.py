"""A small process supervisor: starts its children, restarts one that dies, and takes them
all with it however it ends.

Each child runs in a process group of its own, so a Ctrl-C typed in the terminal reaches
only the supervisor, which then stops the children in order (the worker first, so its run
saves a checkpoint, then the server). Each child also asks the kernel for a signal when
the supervisor dies (Linux's parent-death signal), so even ``kill -9`` of the supervisor
leaves no child behind. A child that dies on its own is restarted after a back-off that
doubles while it keeps dying young.

No torch, no Streamlit: the children import what they need.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from jobs.outage import Outage
from storage.errors import DatabaseUnavailable

log = logging.getLogger(__name__)
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None

POLL_S = 0.2
FIRST_BACKOFF_S = 1.0
MAX_BACKOFF_S = 30.0
HEALTHY_AFTER_S = 60.0  # a child that lived this long starts its back-off afresh
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


@dataclass
class Child:
    """One supervised process.

    ``death_signal`` is what it gets when the supervisor dies (SIGTERM lets a worker save
    its run); ``stop_timeout_s`` how long a clean stop may take before SIGKILL;
    ``on_death`` is called with a line describing an unexpected exit, after the process
    is reaped and before it is restarted, and returns what to add to that line.
    """

    name: str
    argv: Sequence[str]
    cwd: str | None = None
    env: dict[str, str] | None = None
    death_signal: int = signal.SIGTERM
    stop_timeout_s: float = 15.0
    on_death: Callable[[], str] | None = None
    proc: subprocess.Popen | None = field(default=None, repr=False)
    started_at: float = 0.0
    backoff_s: float = FIRST_BACKOFF_S
    restart_at: float | None = None


def exit_description(code: int) -> str:
    """'exited with 1' or 'was killed by SIGKILL' for a Popen return code."""
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with {code}"


def _die_with_parent(death_signal: int, parent_pid: int) -> Callable[[], None]:
    """A preexec_fn: ask for ``death_signal`` when the parent dies (Linux)."""

    def setup() -> None:
        if _prctl is not None:
            _prctl(PR_SET_PDEATHSIG, death_signal, 0, 0, 0)
        # The parent may have died between fork and prctl: then nobody would tell us.
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), death_signal)

    return setup


def _kill_group(pid: int) -> None:
    """SIGKILL what is left of a child's process group (e.g. torchrun ranks of a worker)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


@dataclass
class Periodic:
    """A check the supervisor runs every ``every_s`` seconds beside its children (the Ray
    reconciler): ``call`` returns lines to say; an error is said once, not at every turn, and
    a database outage in one line when it starts and one when it ends."""

    name: str
    every_s: float
    call: Callable[[], list[str]]


class Supervisor:
    """Runs ``children`` until SIGINT, SIGTERM or SIGHUP; then stops them in order.

    ``periodic`` checks run in a thread of their own, so a slow one never delays a restart.
    """

    def __init__(self, children: Sequence[Child], *, say: Callable[[str], None] | None = None,
                 periodic: Sequence[Periodic] = ()):
        self.children = list(children)
        self.periodic = list(periodic)
        self._say = say or (lambda line: print(f"gptdash: {line}", file=sys.stderr, flush=True))
        self._signals: list[int] = []
        self._done = threading.Event()

    def _run_periodic(self) -> None:
        due = {check.name: 0.0 for check in self.periodic}
        failing: dict[str, str] = {}
        outages = {check.name: Outage(log) for check in self.periodic}
        while not self._done.wait(POLL_S):
            for check in self.periodic:
                if time.monotonic() < due[check.name]:
                    continue
                due[check.name] = time.monotonic() + check.every_s
                try:
                    for line in check.call():
                        self._say(line)
                    failing.pop(check.name, None)
                    outages[check.name].back()
                except DatabaseUnavailable as exc:  # the next turn tries again
                    outages[check.name].failed(
                        exc, f"the {check.name} skips its turns until it answers")
                except Exception as exc:  # noqa: BLE001 - the next turn tries again
                    problem = f"the {check.name} failed: {exc}"
                    if failing.get(check.name) != problem:
                        self._say(problem)
                    failing[check.name] = problem

    def start(self, child: Child) -> None:
        child.proc = subprocess.Popen(
            list(child.argv), cwd=child.cwd, env=child.env, process_group=0,
            preexec_fn=_die_with_parent(child.death_signal, os.getpid()))
        child.started_at = time.monotonic()
        child.restart_at = None

    def run(self) -> int:
        """Start every child, keep them running, stop them on a signal; the exit code (0)."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        checks = threading.Thread(target=self._run_periodic, name="gptdash-periodic",
                                  daemon=True)
        try:
            for child in self.children:
                self.start(child)
            if self.periodic:
                checks.start()
            while not self._signals:
                for child in self.children:
                    self._watch(child)
                time.sleep(POLL_S)
        finally:
            self._done.set()
            self.stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    def _on_signal(self, signum: int, frame) -> None:
        if self._signals:  # a second Ctrl-C: do not wait for checkpoints
            for child in self.children:
                if child.proc is not None:
                    _kill_group(child.proc.pid)
        self._signals.append(signum)

    def _watch(self, child: Child) -> None:
        now = time.monotonic()
        if child.proc is None:
            if child.restart_at is not None and now >= child.restart_at:
                self.start(child)
            return
        code = child.proc.poll()
        if code is None:
            return
        _kill_group(child.proc.pid)
        child.proc = None
        if now - child.started_at >= HEALTHY_AFTER_S:
            child.backoff_s = FIRST_BACKOFF_S
        line = f"the {child.name} {exit_description(code)}"
        if child.on_death is not None:
            line += child.on_death()
        self._say(f"{line}; restarting it in {child.backoff_s:g} s")
        child.restart_at = now + child.backoff_s
        child.backoff_s = min(child.backoff_s * 2, MAX_BACKOFF_S)

    def stop_all(self) -> None:
        """Stop the children in order, each with SIGTERM, then SIGKILL after its timeout."""
        for child in self.children:
            # child.proc stays set while it stops, so a second signal kills it at once.
            proc = child.proc
            if proc is None:
                continue
            if proc.poll() is None:
                try:
                    proc.send_signal(signal.SIGTERM)
                    proc.wait(child.stop_timeout_s)
                except subprocess.TimeoutExpired:
                    self._say(f"the {child.name} did not stop within "
                              f"{child.stop_timeout_s:g} s; killing it")
                    proc.kill()
                    proc.wait()
            _kill_group(proc.pid)
            child.proc = None
