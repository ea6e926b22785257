"""How many torch threads a process that trains or samples on this machine uses.

torch gives every process one thread per physical core, so two runs side by side on one
machine spin twice as many threads as it has cores and slow each other several times over
(``bench/threads.py``). The rule, for a worker's runs, ``gptdash train``, ``resume``,
``sample`` and the pages' sampling: ``--threads N`` where given; else the cores this process
may run on (the physical cores of its CPU affinity) shared evenly among the processes on this
host that train or sample, at least one each and no more than ``OMP_NUM_THREADS`` where set.

Those processes are this host's live workers, busy or idle (each may start a run at any
moment), the runs trained in a terminal, and the one asking. The share is taken when a run
starts and each time a page or ``gptdash sample`` samples: a run already training keeps its
threads when another starts beside it.
"""

from __future__ import annotations

import os

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

    from gptcore.device import cpu_threads, usable_cores

    n = requested or cpu_threads(usable_cores(), trainers_here(store) + (0 if counted else 1),
                                 limit=omp_limit())
    torch.set_num_threads(n)
    return n


def omp_limit() -> int | None:
    """``OMP_NUM_THREADS`` as one count, where it is set to one."""
    try:
        return max(1, int(os.environ["OMP_NUM_THREADS"]))
    except (KeyError, ValueError):  # unset, or a nested list such as "4,2"
        return None
