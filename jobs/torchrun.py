"""Runs with ``nproc > 1``: launched under torchrun as a child process and supervised.

The worker (or ``gptdash train`` in the foreground) has already claimed the run.
It starts ``torchrun --standalone --nproc_per_node N -m jobs rank RUN``; every rank
trains the run (``runner.execute_run``), rank 0 records it, and the supervisor
here beats, forwards a stop as the run row's flag (rank 0 polls it and tells the
other ranks), and turns a launch that dies without finishing the run into a
``failed`` row with the tail of its output. The children die with the supervisor.
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys
import threading
from pathlib import Path

from storage import home
from storage.status import RunStatus
from storage.store import RunStore

POLL_S = 0.5
LOG_NAME = "torchrun.log"
_PR_SET_PDEATHSIG = 1
# Looked up now, not in the forked child, where the worker's other threads may hold locks.
_prctl = ctypes.CDLL(None).prctl if sys.platform.startswith("linux") else None


def torchrun_command(run_id: int, nproc: int, device: str | None, claim: int) -> list[str]:
    """The command line that trains ``run_id`` as ``nproc`` processes on this machine, rank 0
    writing with the supervisor's ``claim``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={nproc}", "-m", "jobs", "rank", str(run_id), "--claim", str(claim)]
    return cmd + (["--device", device] if device else [])


def _die_with_parent() -> None:
    """In the child, before exec: receive SIGTERM when the supervisor dies (Linux), so a
    killed worker leaves no training processes behind."""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))


def run_under_torchrun(store: RunStore, run_id: int, nproc: int, *, claim: int,
                       stop_event: threading.Event, device: str | None = None) -> str:
    """Train a claimed run as ``nproc`` processes; returns the run's final status. ClaimLost
    when another process took the run meanwhile (rank 0 stopped writing then)."""
    log_path = home.checkpoints_dir(run_id) / LOG_NAME
    with open(log_path, "ab") as log:
        # A process group of its own: a terminal's Ctrl-C or hang-up reaches only this
        # supervisor, which stops the ranks through the run's flag (with a checkpoint),
        # instead of torchrun killing them mid-step.
        proc = subprocess.Popen(torchrun_command(run_id, nproc, device, claim), stdout=log,
                                stderr=subprocess.STDOUT, preexec_fn=_die_with_parent,
                                process_group=0)
    stop_sent = False
    while proc.poll() is None:
        if stop_event.wait(POLL_S) and not stop_sent:
            store.request_stop(run_id)  # every rank stops at its next log_interval
            stop_sent = True
    run = store.get_run(run_id)
    if run.status == RunStatus.RUNNING:  # the ranks died before rank 0 could say how it ended
        store.set_status(run_id, RunStatus.FAILED, claim=claim, error=(
            f"the {nproc} training processes exited with code {proc.returncode} before the "
            f"run ended; the end of their output:\n{_tail(log_path)}"))
    return store.get_run(run_id).status


def _tail(path: Path, lines: int = 15) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
