"""What a person can do to runs, from the CLI or a page: submit, stop, resume.

Each acts only through the database (a queued row, the stop flag on a row), so it
reaches whichever worker trains the run: the one ``gptdash serve`` supervises, a
``gptdash worker`` elsewhere, or ``gptdash train`` in a terminal. No torch: the
command or the page answers at once, and the worker that claims a run checks its own
device.
"""

from __future__ import annotations

import enum
from typing import TYPE_CHECKING

from gptcore.errors import GptdashError
from jobs import ray_executor, runner
from storage.status import Executor, RunStatus

if TYPE_CHECKING:
    from gptcore.config import TrainConfig
    from storage.store import RunStore

CANCELLED_BEFORE_START = "cancelled before it started"


class Stop(enum.StrEnum):
    """What ``stop`` did."""

    CANCELLED = "cancelled"  # it was queued: it will never start
    REQUESTED = "requested"  # it trains: its trainer saves a checkpoint and stops
    ENDED = "ended"  # it ended on its own between the look and the stop: nothing to do


def submit(store: RunStore, cfg: TrainConfig, *, name: str | None = None,
           tags: list[str] | None = None, notes: str = "",
           on: str = Executor.LOCAL) -> int:
    """Validate ``cfg`` and queue it for the next free worker, or with ``on="ray"`` as a job
    on the Ray cluster at ``GPTDASH_RAY_ADDRESS``; the run id.

    Checked here without torch (``check_device=False``); the worker or job that claims the
    run checks it against its own device, which may be another machine's GPU. A cluster
    that does not answer is refused before anything is written.
    """
    if on == Executor.LOCAL:
        return runner.create_run(store, cfg, name=name, tags=tags, notes=notes,
                                 check_device=False)
    cluster = ray_executor.cluster_for(on)
    run_id = runner.create_run(store, cfg, name=name, tags=tags, notes=notes,
                               check_device=False, executor=Executor.RAY)
    ray_executor.start_runs(store, cluster, [run_id])
    return run_id


def stop(store: RunStore, run_id: int) -> Stop:
    """Cancel a queued run or ask a running one to stop (it saves a checkpoint).

    Raises GptdashError for a run that is neither queued nor running.
    """
    run = store.get_run(run_id)
    if run.status not in (RunStatus.QUEUED, RunStatus.RUNNING):
        raise GptdashError(f"run {run_id} is {run.status}, not running or queued: "
                           "nothing to stop")
    # The flag first: a worker claiming the run from now on starts a trainer that stops at
    # once, so a stop racing a claim is never lost.
    store.request_stop(run_id)
    status = store.get_run(run_id).status
    if status == RunStatus.QUEUED:
        store.set_status(run_id, RunStatus.CANCELLED, error=CANCELLED_BEFORE_START)
        if run.executor == Executor.RAY:  # its job need not wait for resources to end
            ray_executor.cancel_job(run)
        return Stop.CANCELLED
    return Stop.REQUESTED if status == RunStatus.RUNNING else Stop.ENDED


def resume(store: RunStore, run_id: int, *, on: str = Executor.LOCAL) -> str:
    """Queue a stopped, interrupted, failed or cancelled run to continue from its checkpoint
    (or from step 0 with the same config when it never saved one), for the next free worker
    or with ``on="ray"`` as a new Ray job; how it will start, in one line."""
    if on == Executor.LOCAL:
        return runner.queue_resume(store, run_id)
    cluster = ray_executor.cluster_for(on)
    return ray_executor.queue_resume(store, run_id, cluster)
