"""How many torch threads a process that trains or samples on this machine uses.

torch gives every process one thread per physical core, so two runs side by side on one
machine spin twice as many threads as it has cores and slow each other several times over
(``bench/threads.py``). The rule, for a worker's runs, ``gptdash train``, ``resume``,
``sample`` and the pages' sampling: ``--threads N`` where given; else the cores this process
may run on (the physical cores of its CPU affinity) shared evenly among the processes on this
host that train or sample, at least one each and no more than ``OMP_NUM_THREADS`` where set.

Those processes are this host's live workers, busy or idle (each may start a run at any
moment), the runs trained in a terminal, and the one asking. A training run takes its share
again every few seconds (``ThreadShare``), so two runs started together, or one started
beside another, settle on an even split; a page or ``gptdash sample`` takes it each time it
samples.
"""

from __future__ import annotations

import os
import threading

from gptcore.callbacks import TrainerCallbacks
from jobs.errors import USER_ERRORS
from jobs.recovery import pid_alive, this_host
from storage.status import RunStatus
from storage.store import RunStore


def trainers_here(store: RunStore) -> int:
    """Processes on this host that train: its live workers (busy or idle) and the processes
    that train a run themselves (``gptdash train``/``resume``), each once."""
    host = this_host()
    workers = {w.pid for w in store.workers()
               if w.host == host and w.status != "stopped" and pid_alive(w.pid)}
    own_runs = {r.owner_pid for r in store.list_runs(status=RunStatus.RUNNING)
                if r.owner_host == host and r.owner_pid is not None
                and r.owner_pid not in workers and pid_alive(r.owner_pid)}
    return len(workers) + len(own_runs)


def use_threads(store: RunStore, requested: int | None = None, *, counted: bool) -> int:
    """Set the calling thread's torch threads by the rule above, and return how many.

    ``requested`` is ``--threads``. ``counted`` says whether this process is already one of
    ``trainers_here`` (a worker; a process that claimed its run), not when it only samples.
    Called in the thread that then trains or samples: torch applies the count per thread.
    """
    import torch

    n = requested or fair_share(store, counted=counted)
    torch.set_num_threads(n)
    return n


def fair_share(store: RunStore, *, counted: bool) -> int:
    """This process's share of the cores by the rule above (without ``--threads``)."""
    from gptcore.device import cpu_threads, usable_cores

    return cpu_threads(usable_cores(), trainers_here(store) + (0 if counted else 1),
                       limit=omp_limit())


def omp_limit() -> int | None:
    """``OMP_NUM_THREADS`` as one count, where it is set to one."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):  # unset, or a nested list such as "4,2"
        return None


# How often a training run takes its share again: another run that starts beside it (or ends)
# changes the share within this long. Two indexed SELECTs each time.
RESHARE_S = 5.0


class ThreadShare(TrainerCallbacks):
    """Keeps a run's torch threads at its share while it trains, so runs started together or
    one beside another settle on an even split within ``RESHARE_S``.

    A thread of its own counts the trainers here (a database read, which may wait on a
    database that is away); ``should_stop``, polled after every step in the thread that
    trains (where torch takes the count), only applies the latest count.
    ``display`` (the CLI's progress bar) hears every hook as it would without this.
    """

    def __init__(self, store: RunStore, display: TrainerCallbacks | None = None):
        self.store, self.display = store, display
        self._share: int | None = None  # the latest count, from the counting thread
        self._applied: int | None = None
        self._done = threading.Event()
        threading.Thread(target=self._count, name="thread-share", daemon=True).start()

    def _count(self) -> None:
        while True:
            try:
                self._share = fair_share(self.store, counted=True)
            except USER_ERRORS:  # the database is away (the run says so): keep the threads
                pass
            if self._done.wait(RESHARE_S):
                return

    def should_stop(self) -> bool:
        share = self._share
        if share is not None and share != self._applied:
            import torch

            torch.set_num_threads(share)
            self._applied = share
        return bool(self.display and self.display.should_stop())

    def on_prepare(self, progress):
        if self.display:
            self.display.on_prepare(progress)

    def on_start(self, info):
        if self.display:
            self.display.on_start(info)

    def on_metrics(self, step, metrics):
        if self.display:
            self.display.on_metrics(step, metrics)

    def on_sample(self, step, prompt, text):
        if self.display:
            self.display.on_sample(step, prompt, text)

    def on_checkpoint(self, step, path):
        if self.display:
            self.display.on_checkpoint(step, path)

    def on_event(self, step, kind, message):
        if self.display:
            self.display.on_event(step, kind, message)

    def on_status(self, status, message=None):
        if status != RunStatus.RUNNING:
            self._done.set()
        if self.display:
            self.display.on_status(status, message)
