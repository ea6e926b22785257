"""`gptdash worker`: a long-running process that trains queued runs from the shared database.

Start one per GPU on any machine that reaches the database and the artifacts
folder. Ctrl-C, SIGTERM (systemd's stop, a batch scheduler's pre-emption) or SIGHUP stops
the current run with a checkpoint and hands it on: it goes back in the queue, so the next
worker (this one restarted, or another) goes on with it; the worker is recorded as
stopped. (``gptdash stop RUN`` stops a run for good.)
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import threading
import time

from gptcore.errors import GptdashError
from jobs.exit_codes import EXIT_INTERRUPTED, EXIT_OK
from jobs.outage import Outage
from jobs.recovery import pid_alive, this_host
from storage.errors import DatabaseUnavailable
from storage.status import DEFAULT_AUTO_RESUMES
from storage.store import RunStore
from storage.workers import WorkerRecord

log = logging.getLogger(__name__)

_CUDA_INDEX = re.compile(r"^cuda:(\d+)$")
# A worker started while the database is away looks again after this long, doubling to the max.
FIRST_RETRY_S, MAX_RETRY_S = 0.5, 5.0


def store_when_up() -> RunStore:
    """The store, once the database answers. A worker started while it is away (a machine
    booting before its database, ``gptdash serve`` restarting its worker mid-outage) says so
    in one line and starts when it is back, instead of exiting."""
    outage = Outage(log)
    retry_s = FIRST_RETRY_S
    while True:
        try:
            store = RunStore()
        except DatabaseUnavailable as exc:
            outage.failed(exc, "the worker starts when it answers")
            time.sleep(retry_s)
            retry_s = min(retry_s * 2, MAX_RETRY_S)
            continue
        outage.back()
        return store


def pin_device(device: str) -> str | None:
    """The device runs train on, as a config value (None: the config's own choice).

    ``cuda:N`` makes GPU N the only one this process sees (CUDA_VISIBLE_DEVICES, set
    before torch starts), so the runs' ``cuda``, and any torchrun children, use it.
    """
    if device == "auto":
        return None
    if device in ("cpu", "cuda", "mps"):
        return device
    match = _CUDA_INDEX.match(device)
    if match is None:
        raise GptdashError(f"--device {device!r} is not a device: use auto, cpu, cuda, "
                           "cuda:N (e.g. cuda:1) or mps")
    if "torch" in sys.modules:
        raise RuntimeError("pin_device must run before torch is imported")
    os.environ["CUDA_VISIBLE_DEVICES"] = match.group(1)
    return "cuda"


def _gone_from_this_host(worker: WorkerRecord) -> bool:
    """A worker of this host whose process has died (killed, not stopped) holds no name."""
    return worker.host == this_host() and not pid_alive(worker.pid)


def run_worker(store: RunStore, *, name: str | None, device: str, dead_after_s: float,
               exit_when_idle: bool, threads: int | None = None,
               auto_resume: int = DEFAULT_AUTO_RESUMES) -> int:
    """Train queued runs until the queue is empty (``exit_when_idle``) or a signal; resume
    runs whose owner was lost by themselves, ``auto_resume`` times unless a run says."""
    from gptcore.device import device_label, resolve_device
    from jobs.manager import JobManager

    config_device = pin_device(device)
    label = device_label(resolve_device(config_device or "auto"))
    if dead_after_s <= 0:
        raise GptdashError(f"--dead-after must be positive, not {dead_after_s:g}")
    if name is not None:  # host:pid, the default, is this process's alone
        store.take_worker_name(name, host=this_host(), pid=os.getpid(),
                               dead_after_s=dead_after_s, gone=_gone_from_this_host)
    manager = JobManager(store, name=name, device=config_device, dead_after_s=dead_after_s,
                         exit_when_idle=exit_when_idle, threads=threads,
                         auto_resume=auto_resume)
    print(f"gptdash worker {manager.worker} on {label}: training queued runs "
          "(Ctrl-C to stop)", file=sys.stderr, flush=True)
    received: list[int] = []
    stopping = threading.Event()

    def on_signal(signum, frame):
        received.append(signum)
        stopping.set()

    # SIGHUP too: the terminal went away, or `gptdash serve` (its parent) died.
    previous = {sig: signal.signal(sig, on_signal)
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        while manager.is_alive() and not stopping.wait(0.5):
            pass
    finally:
        current = manager.current_run
        manager.shutdown(timeout=120)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        note = f"; run {current} stopped with a checkpoint" if current is not None else ""
        if current is not None and manager.handed_back:
            note += "; it is back in the queue for the next worker"
        print(f"gptdash worker {manager.worker} stopped{note}", file=sys.stderr)
        return EXIT_INTERRUPTED if received[0] == signal.SIGINT else EXIT_OK
    print(f"gptdash worker {manager.worker}: the queue is empty; trained "
          f"{len(manager.completed)} run(s)", file=sys.stderr)
    return EXIT_OK
