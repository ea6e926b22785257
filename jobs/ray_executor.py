"""Runs on a Ray cluster (``--on ray``): a Ray job per attempt of a run, and the reconciler
that keeps the run rows true to what the cluster did with them.

A run queued for Ray is an ordinary queued row with ``executor`` ``ray`` whose ``worker``
names the Ray job that is to train it: ``gptdash-run-{run}-{attempt}``, attempt 1 for the
first submission and one more for each resume (numbered past every job of that run id on
the cluster, so a database made afresh never reuses an old job's id). The name is written
before the job is submitted, so submitting it again, by a retry or by the reconciler racing
the submitter, finds it already submitted and never starts a second job; and the job
(``python -m jobs ray-run RUN --job ID``) takes the row only while it still names it.

The job trains the run like any worker: it claims the row (owner ``host:pid`` of the job's
process), beats, and records metrics, checkpoints and its end through the database; a Stop
is the row's flag, as for every run. Runs with ``nodes`` or ``nproc`` above 1 train under
Ray Train across Ray workers (``jobs.ray_train``), the job itself asking for no CPU or GPU.

``reconcile`` (the supervisor of ``gptdash serve``, and every command's recovery pass where
``GPTDASH_RAY_ADDRESS`` is set) settles what the cluster knows and the rows do not: a job
that ended while its run was still training leaves the run ``interrupted`` once its
trainer is gone too (a trainer that outlived its job must never meet a resumed one), one
that ended before it started training ``failed``, each with Ray's reason; a queued run whose
job is missing gets it submitted; a run still training 30 s after its Stop has its job
stopped. An interrupted run resumes by itself as a new job once its back-off has passed, up
to its limit of automatic resumes (``storage.queue``), as a plain worker resumes a local one.

Ray is imported only through ``jobs.ray_cluster`` and only when a cluster is asked
something; an unset address costs nothing and an unreachable one a short TCP timeout.
"""

from __future__ import annotations

import logging
import os
import shlex
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from gptcore.config import TrainConfig
from gptcore.errors import GptdashError
from jobs.exit_codes import EXIT_FAILED, EXIT_OK
from jobs.ray_cluster import (
    INSTALL_HINT,
    RAY_ADDRESS_ENV,
    RayJob,
    cluster_address,
    jobs,
    nodes,
    parse_submission_id,
    submit_job,
)
from jobs.ray_cluster import _client as job_client  # the probed JobSubmissionClient
from jobs.ray_secrets import db_env
from jobs.recovery import pid_alive, this_host
from storage import home
from storage.queue import RESTART_HINT, RESUME_HINT, auto_resume_plan
from storage.schema import utcnow
from storage.status import ACTIVE, DEFAULT_AUTO_RESUMES, EXECUTORS, Executor, RunStatus

if TYPE_CHECKING:
    from storage.store import RunRecord, RunStore

log = logging.getLogger(__name__)

JOB_PREFIX = "gptdash-run-"
# A Stop reaches the trainer through the row's flag within a step; a run still training this
# long after it is a hung job, stopped through Ray.
STOP_GRACE_S = 30.0
# After Ray's SIGTERM (a stop_job), how long the job may take to save its checkpoint before
# Ray kills it (RAY_JOB_STOP_WAIT_TIME_S; Ray's own default is 3 s).
STOP_WAIT_S = 60
# A run queued for Ray that has named no job yet is its submitter's for this long.
SUBMIT_GRACE_S = 60.0
BEAT_S = 5.0
# A trainer beats at least every BEAT_S; this long without a beat from another host, it is gone.
TRAINER_QUIET_S = 3 * BEAT_S
TAIL_LINES = 15
_PASSED_ENV = ("GPTDASH_HOME", "RAY_AUTH_MODE")
_TERMINAL = ("STOPPED", "SUCCEEDED", "FAILED")


def job_id(run_id: int, attempt: int) -> str:
    """The submission id of a run's ``attempt``-th Ray job."""
    return f"{JOB_PREFIX}{run_id}-{attempt}"


def require_address() -> str:
    """``GPTDASH_RAY_ADDRESS``, or a one-line GptdashError saying to set it."""
    address = cluster_address()
    if address is None:
        raise GptdashError(f"--on ray needs {RAY_ADDRESS_ENV}: set it to the Ray cluster's "
                           "dashboard address, e.g. http://head:8265")
    return address


@dataclass
class RayCluster:
    """A Ray cluster that answered, through its job server."""

    address: str
    client: Any  # ray.job_submission.JobSubmissionClient

    def gptdash_jobs(self) -> dict[str, RayJob]:
        """Every gptdash job on the cluster, by submission id."""
        return {job.submission_id: job for job in jobs(self.address)}

    def next_job(self, run_id: int, known: dict[str, RayJob] | None = None) -> str:
        """The submission id of the run's next attempt: past every job of this run id."""
        known = self.gptdash_jobs() if known is None else known
        attempts = [job.attempt for job in known.values() if job.run_id == run_id]
        return job_id(run_id, max(attempts, default=0) + 1)

    def submit(self, store: RunStore, run: RunRecord) -> bool:
        """Submit the job ``run.worker`` names; False when it was submitted already."""
        resources = self._resources(run.config)
        try:
            submit_job(
                self.client,
                # exec: the process Ray tracks, stops and reports on is the trainer itself,
                # never a shell whose death would leave the trainer running.
                entrypoint=(f"exec {shlex.quote(sys.executable)} -m jobs ray-run {run.id} "
                            f"--job {run.worker}"),
                submission_id=run.worker, runtime_env={"env_vars": _job_env(store)},
                metadata={"gptdash_run": str(run.id)}, **resources)
        except Exception as exc:  # noqa: BLE001 - Ray raises RuntimeError for anything
            if "already exists" in str(exc):
                return False
            raise GptdashError(f"the Ray cluster at {self.address} refused job {run.worker}: "
                               f"{_last_line(exc)}") from None
        return True

    def stop(self, job: str) -> None:
        """Ask Ray to stop a job: SIGTERM to its process (a run saves its checkpoint), then
        SIGKILL after ``STOP_WAIT_S``."""
        self.client.stop_job(job)

    def _resources(self, config: dict) -> dict[str, float]:
        """The job's own CPUs and GPUs: one CPU and the run's GPU; none when Ray Train's
        workers take them (``nodes``/``nproc`` above 1)."""
        if _spans_workers(config):
            return {"entrypoint_num_cpus": 0, "entrypoint_num_gpus": 0}
        device = config.get("device", "auto")
        # auto trains on a GPU where there is one: ask for one when the cluster has any.
        wants_gpu = device == "cuda" or (device == "auto"
                                         and any(n.gpus > 0 for n in nodes(self.address)
                                                 if n.alive))
        return {"entrypoint_num_cpus": 1, "entrypoint_num_gpus": 1 if wants_gpu else 0}


def connect(address: str | None = None) -> RayCluster:
    """The cluster at ``address`` (default ``GPTDASH_RAY_ADDRESS``), or a one-line
    GptdashError: no address, Ray not installed here, or nothing answering there."""
    address = address or require_address()
    try:  # first, so that a machine without Ray hears how to install it, cluster or not
        import ray.job_submission  # noqa: F401
    except ImportError:
        raise GptdashError(f"--on ray needs Ray, which is not installed here: "
                           f"{INSTALL_HINT}") from None
    return RayCluster(address=address, client=job_client(address))


def cluster_for(on: str) -> RayCluster:
    """The cluster to queue runs on for ``on="ray"``; GptdashError for an unknown executor."""
    if on != Executor.RAY:
        raise GptdashError(f"cannot run on {on!r}: choose {' or '.join(EXECUTORS)}")
    return connect()


def _spans_workers(config: dict) -> bool:
    """Whether the run trains as several Ray Train workers (``jobs.ray_train``)."""
    return TrainConfig.from_dict(config).world_size > 1


def _job_env(store: RunStore) -> dict[str, str]:
    """What the job needs to reach this database and artifacts folder from any node; Ray
    shows all of it, so the database password goes by file (``jobs.ray_secrets``)."""
    env = {**db_env(store.url), "GPTDASH_ARTIFACTS": str(home.artifacts_dir().resolve()),
           "RAY_JOB_STOP_WAIT_TIME_S": str(STOP_WAIT_S)}
    env.update({key: os.environ[key] for key in _PASSED_ENV if os.environ.get(key)})
    return env


def _last_line(exc: BaseException) -> str:
    """The last non-empty line of an error: Ray's errors end a server traceback with it."""
    lines = [line.strip(" .") for line in str(exc).splitlines() if line.strip(" .")]
    return (lines[-1] if lines else type(exc).__name__)[:300]


# ---- submitting -----------------------------------------------------------------------------
def start_runs(store: RunStore, cluster: RayCluster, run_ids: Sequence[int]) -> None:
    """Name and submit the Ray job of each run just queued for Ray.

    When the cluster refuses one, it and the runs after it end ``failed`` with the reason
    (nothing stays queued for a job that will never come) and GptdashError says so.
    """
    known = cluster.gptdash_jobs()
    for i, run_id in enumerate(run_ids):
        try:
            job = cluster.next_job(run_id, known)
            store.update_run(run_id, worker=job)
            cluster.submit(store, store.get_run(run_id))
        except GptdashError as exc:
            for left in run_ids[i:]:
                store.set_status(left, RunStatus.FAILED, error=f"not submitted to Ray: {exc}")
            ids = ", ".join(f"#{r}" for r in run_ids[i:])
            raise GptdashError(f"{exc}; run(s) {ids} marked failed (resume with --on ray once "
                               "the cluster takes jobs)") from None


def queue_resume(store: RunStore, run_id: int, cluster: RayCluster) -> str:
    """Queue a stopped / interrupted / failed / cancelled run as a new attempt on Ray and
    submit its job; how it will start, in one line."""
    from jobs import runner

    job = cluster.next_job(run_id)
    how = runner.queue_resume(store, run_id, executor=Executor.RAY, job=job)
    try:
        cluster.submit(store, store.get_run(run_id))
    except GptdashError as exc:
        store.end_if_still(run_id, worker=job, was=RunStatus.QUEUED, status=RunStatus.FAILED,
                           error=f"not submitted to Ray: {exc}")
        raise
    return f"{how}, as Ray job {job}"


def cancel_job(run: RunRecord) -> None:
    """Stop the pending job of a ray run that was cancelled before it started (best effort:
    a job that starts anyway finds the run cancelled and ends)."""
    if run.executor != Executor.RAY or parse_submission_id(run.worker or "") is None:
        return
    try:
        connect().stop(run.worker)
    except Exception:  # noqa: BLE001 - no cluster, or the job has ended: nothing to stop
        log.info("could not stop Ray job %s", run.worker, exc_info=True)


# ---- the job --------------------------------------------------------------------------------
def run_job(store: RunStore, run_id: int, job: str) -> int:
    """The Ray job's entrypoint: take the run queued for ``job`` and train it here; an exit
    code (0 also when there was nothing to take: the run was cancelled or resumed as a newer
    attempt meanwhile).

    SIGTERM (Ray's stop_job), SIGINT and SIGHUP stop the run with a checkpoint.
    """
    from jobs import runner

    claim = store.claim_ray_run(run_id, job, host=this_host(), pid=os.getpid())
    if claim is None:
        run = store.get_run(run_id)
        print(f"gptdash: run {run_id} is {run.status} and not queued for job {job}: nothing "
              "to train", file=sys.stderr)
        return EXIT_OK
    print(f"gptdash: job {job} trains run {run_id} on {this_host()} (pid {os.getpid()})",
          file=sys.stderr, flush=True)
    stop, done = threading.Event(), threading.Event()
    previous = {sig: signal.signal(sig, lambda signum, frame: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    beat = threading.Thread(target=_beat, args=(store, run_id, claim, done), daemon=True)
    beat.start()
    try:
        if _spans_workers(store.get_run(run_id).config):
            from jobs.ray_train import run_with_ray_train

            status = run_with_ray_train(store, run_id, claim=claim, stop_event=stop)
        else:
            status = runner.execute_run(store, run_id, claim=claim, stop_event=stop).status
    finally:
        done.set()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    run = store.get_run(run_id)
    reason = f": {run.error}" if run.error else ""
    print(f"gptdash: run {run_id} {status} at step {run.last_step}{reason}", file=sys.stderr)
    return EXIT_FAILED if status == RunStatus.FAILED else EXIT_OK


def _beat(store: RunStore, run_id: int, claim: int, done: threading.Event) -> None:
    """Keep the run's heartbeat fresh while the job loads data and builds the model too
    (while ``claim`` owns it)."""
    while not done.wait(BEAT_S):
        try:
            store.heartbeat(run_id, claim=claim)
        except Exception:  # noqa: BLE001 - retried at the next beat
            log.exception("heartbeat of run %s failed", run_id)


# ---- reconciling ----------------------------------------------------------------------------
@dataclass
class StopWatch:
    """When each ray run's Stop was first seen unheeded, across reconcile passes (the
    supervisor keeps one; a one-off pass has none and never stops a job)."""

    grace_s: float = STOP_GRACE_S
    since: dict[int, float] = field(default_factory=dict)

    def overdue(self, run_id: int) -> bool:
        """Whether the run's Stop has gone unheeded for longer than the grace period."""
        first = self.since.setdefault(run_id, time.monotonic())
        return time.monotonic() - first > self.grace_s

    def keep_only(self, run_ids: set[int]) -> None:
        self.since = {r: t for r, t in self.since.items() if r in run_ids}


def reconcile(store: RunStore, *, stops: StopWatch | None = None,
              auto_resume: int = DEFAULT_AUTO_RESUMES) -> list[str]:
    """Settle the runs queued for or trained on Ray with what their jobs did, and resume the
    interrupted ones that are due (``auto_resume`` times, unless a run says); one line per
    change, for the user.

    Cheap and silent where there is nothing to do: no address set or no active or due ray
    run costs two queries; an unreachable cluster changes nothing (the rows' heartbeats still
    show a dead owner to ``recover_interrupted``).
    """
    if cluster_address() is None:
        return []
    runs = [r for r in store.list_runs(status=tuple(ACTIVE)) if r.executor == Executor.RAY]
    if stops is not None:
        stops.keep_only({r.id for r in runs if r.stop_requested})
    now = utcnow()
    due = [r for r in store.list_runs(status=RunStatus.INTERRUPTED)
           if r.executor == Executor.RAY and r.resume_after is not None
           and r.resume_after <= now]
    if not runs and not due:
        return []
    try:
        cluster = connect()
        known = cluster.gptdash_jobs()
    except GptdashError as exc:
        log.info("Ray reconciler: %s", exc)
        return []
    lines = []
    for run in sorted(runs, key=lambda r: r.id):
        try:
            line = _settle(store, cluster, known, run, stops)
        except GptdashError as exc:
            line = f"run {run.id}: {exc}"
        if line:
            lines.append(line)
    for run in sorted(due, key=lambda r: r.resume_after):
        if line := _auto_resume(store, cluster, known, run, auto_resume):
            lines.append(line)
    return lines


def _auto_resume(store: RunStore, cluster: RayCluster, known: dict[str, RayJob],
                 run: RunRecord, default_limit: int) -> str | None:
    """Resume an interrupted ray run whose back-off has passed as a new job, within its
    limit (its own, else ``default_limit``); a line when something changed."""
    limit = default_limit if run.max_auto_resumes is None else run.max_auto_resumes
    if run.auto_resumes >= limit:
        if store.give_up_auto_resume(run.id, limit):
            return f"run {run.id}: not resumed automatically, its limit of {limit} is used"
        return None
    if trainer_may_live(run):  # a second trainer must not start beside it
        return None
    job = cluster.next_job(run.id, known)
    if not store.queue_auto_resume(run.id, run.claim_token, job, limit):
        return None  # another reconciler took it first
    try:
        cluster.submit(store, store.get_run(run.id))
    except GptdashError as exc:
        store.end_if_still(run.id, worker=job, was=RunStatus.QUEUED, status=RunStatus.FAILED,
                           error=f"not submitted to Ray: {exc}")
        return f"run {run.id}: {exc}"
    return (f"run {run.id} resumes by itself (automatic resume {run.auto_resumes + 1} of "
            f"{limit}) as Ray job {job}")


def _settle(store: RunStore, cluster: RayCluster, known: dict[str, RayJob], run: RunRecord,
            stops: StopWatch | None) -> str | None:
    named = run.worker if parse_submission_id(run.worker or "") else None
    job = known.get(named) if named else None
    if run.status == RunStatus.QUEUED:
        if named is None:
            if utcnow() - run.created_at < timedelta(seconds=SUBMIT_GRACE_S):
                return None  # its submitter is naming and submitting it now
            start_runs(store, cluster, [run.id])
            return f"run {run.id} was queued for Ray with no job: submitted {run.worker}"
        if job is None:  # its submitter died before submitting, or the cluster lost it
            cluster.submit(store, run)
            return f"run {run.id}'s Ray job {named} was missing: submitted it"
        if job.status not in _TERMINAL:
            return None
        status = RunStatus.INTERRUPTED if job.status == "STOPPED" else RunStatus.FAILED
        error = (f"its Ray job {named} ended ({job.status}) before it started training: "
                 f"{_reason(job)}")
        resume_after = None  # a job stopped before it trained was stopped by a person
    else:
        if job is None:  # not one of this cluster's jobs: its heartbeat tells
            return None
        if job.status not in _TERMINAL:
            if stops is not None and run.stop_requested and stops.overdue(run.id):
                cluster.stop(named)
                return (f"run {run.id} did not stop within {stops.grace_s:g} s of its Stop: "
                        f"stopped its Ray job {named}")
            return None
        if trainer_may_live(run):  # a resume now would start a second trainer beside it
            return None
        status = RunStatus.INTERRUPTED
        resume_after, why_not = auto_resume_plan(run.auto_resumes, run.max_auto_resumes,
                                                 run.stop_requested)
        then = RESUME_HINT if run.checkpoint_path else RESTART_HINT
        error = (f"its Ray job {named} ended ({job.status}) while the run was training; "
                 f"{why_not + '; ' if why_not else ''}{then}. Ray: {_reason(job)}")
    if store.end_if_still(run.id, worker=named, was=run.status, status=status, error=error,
                          resume_after=resume_after):
        return f"run {run.id}: Ray job {named} ended ({job.status}); marked {status}"
    return None


def trainer_may_live(run: RunRecord) -> bool:
    """Whether the process that trains a run may still live although its Ray job ended: its
    pid, on this host; from another host, a heartbeat within ``TRAINER_QUIET_S``.

    Ray's word that a job ended is about the process it tracks, not about everything that
    process started (a job of an older release ran the trainer under a shell, and killing
    the shell left the trainer training).
    """
    if run.owner_host == this_host() and run.owner_pid is not None:
        return pid_alive(run.owner_pid)
    last = run.heartbeat_at or run.started_at
    return last is not None and utcnow() - last < timedelta(seconds=TRAINER_QUIET_S)


def _reason(job: RayJob) -> str:
    """Ray's word on a job: its message's first line and the end of the log it quotes."""
    lines = job.message.strip().splitlines() or [f"the job {job.status.lower()}"]
    tail = [line for line in lines[1:] if line.strip()][-TAIL_LINES:]
    return "\n".join([lines[0], *tail])
