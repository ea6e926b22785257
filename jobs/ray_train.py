"""One run across several machines: Ray Train's TorchTrainer runs the trainer's DDP path.

A run on Ray (``--on ray``) with ``nodes`` or ``nproc`` above one trains as ``nodes x
nproc`` Ray Train workers, one CPU (and one GPU on CUDA) each, gloo on the CPU and NCCL on
GPUs. Ray places the workers, gives each its place (RANK, WORLD_SIZE, LOCAL_RANK, ...) and
makes the process group; every worker then trains the run as a torchrun rank does
(``runner.execute_run``): rank 0 records, the others only train (``gptcore.distributed``
joins Ray's group as it is, marked by ``GPTDASH_RAY_TRAIN``).

The caller (the Ray job's ``ray-run`` entrypoint) has claimed the run. Here, as in
``jobs.torchrun``, the driver forwards a stop as the run row's flag (rank 0 polls it and
tells the other ranks) and turns a worker group that ended without ending the run into an
``interrupted`` row (a worker or its machine died: resume continues from the checkpoint)
or a ``failed`` one (an error in a worker), with Ray's reason. Ray Train retries nothing
(a resume is the run's own retry), and a run the cluster can never hold fails at once.

Ray is imported only when a run trains here, so the rest of ``jobs`` never needs it.
"""

from __future__ import annotations

import logging
import os
import threading

from gptcore.config import TrainConfig
from gptcore.distributed import RAY_TRAIN_ENV
from gptcore.errors import GptdashError
from jobs.ray_secrets import PASSFILE_ENV, db_env
from storage import home
from storage.status import RunStatus
from storage.store import RunStore

log = logging.getLogger(__name__)

POLL_S = 0.5
# Ray Train's own records of a run (no checkpoints: those are the trainer's) go in a folder
# of this name in the run's checkpoint folder, which every machine reaches.
RAY_TRAIN_NAME = "ray-train"
# Passed on to the workers when set here (the job's pgpass file among them).
ENV_PASSED = ("GPTDASH_HOME", PASSFILE_ENV)


def needs_ray_train(cfg: TrainConfig) -> bool:
    """Whether a run on Ray trains as several Ray Train workers (else as the job itself)."""
    return cfg.world_size > 1


def num_workers(cfg: TrainConfig) -> int:
    """The processes a run trains as on Ray: ``nproc`` on each of ``nodes`` machines."""
    return cfg.world_size


def worker_device(cfg: TrainConfig, cluster_gpus: float) -> str:
    """``cuda`` or ``cpu`` for every worker: ``auto`` takes GPUs when the cluster has one
    for each worker."""
    if cfg.device == "auto":
        return "cuda" if cluster_gpus >= num_workers(cfg) else "cpu"
    if cfg.device not in ("cuda", "cpu"):
        raise GptdashError(f"nodes x nproc on Ray trains on cuda or cpu, not {cfg.device}: "
                           "set device to cuda, cpu or auto")
    return cfg.device


def capacity_problem(cfg: TrainConfig, device: str, capacity: dict[str, float]) -> str | None:
    """Why a cluster with at most ``capacity`` (resource -> amount) can never hold the run's
    workers, one CPU (and one GPU on cuda) each; None when it can."""
    workers = num_workers(cfg)
    for resource in ("CPU", "GPU") if device == "cuda" else ("CPU",):
        has = int(capacity.get(resource, 0))
        if has < workers:
            return (f"nodes {cfg.nodes} x nproc {cfg.nproc} is {workers} Ray Train workers, one "
                    f"{resource} each, but the Ray cluster has {has} {resource}s: lower nodes "
                    "or nproc, or add machines to the cluster")
    return None


def run_with_ray_train(store: RunStore, run_id: int, *, claim: int,
                       stop_event: threading.Event | None = None) -> str:
    """Train a claimed run as ``nodes x nproc`` Ray Train workers; returns its final status.
    Rank 0 writes with the caller's ``claim``; ClaimLost once another process took the run.

    Connects to the Ray cluster of the current job (or ``RAY_ADDRESS``) unless this process
    is connected already. ``stop_event`` set asks the run to stop, with a checkpoint.
    """
    import ray

    stop_event = stop_event or threading.Event()
    try:
        cfg = TrainConfig.from_dict(store.get_run(run_id).config).validate()
        if not ray.is_initialized():
            ray.init()
        trainer = _trainer(store, run_id, cfg, claim)
    except GptdashError as exc:
        store.set_status(run_id, RunStatus.FAILED, error=str(exc), claim=claim)
        return RunStatus.FAILED
    error = _fit(trainer, store, run_id, stop_event)
    run = store.get_run(run_id)
    if run.status == RunStatus.RUNNING:  # the workers died before rank 0 could say how it ended
        status, reason = ended_without_the_run(error, run.last_step)
        store.set_status(run_id, status, claim=claim,
                         error=f"{reason}; resume it with `gptdash resume {run_id}`")
    elif error is not None:
        log.info("run %s ended %s; Ray Train then reported: %s", run_id, run.status, error)
    return store.get_run(run_id).status


def _capacity() -> dict[str, float]:
    """The most of each resource the cluster can have: what its autoscaler may start (Ray
    Train's own check reads the same), else what its nodes have now."""
    import ray
    from ray._private.state import state

    return state.get_max_resources_from_cluster_config() or ray.cluster_resources()


def _trainer(store: RunStore, run_id: int, cfg: TrainConfig, claim: int):
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    capacity = _capacity()
    device = worker_device(cfg, capacity.get("GPU", 0))
    if problem := capacity_problem(cfg, device, capacity):
        raise GptdashError(problem)  # else it would wait for the resources for ever
    use_gpu = device == "cuda"
    # Ray shows the workers' environment too: the password goes by file (jobs.ray_secrets).
    env = {**{key: os.environ[key] for key in ENV_PASSED if key in os.environ},
           **db_env(store.url), "GPTDASH_ARTIFACTS": str(home.artifacts_dir().resolve()),
           RAY_TRAIN_ENV: "1"}
    return TorchTrainer(
        _train_worker,
        train_loop_config={"run_id": run_id, "claim": claim, "device": device,
                           "cwd": os.getcwd()},
        torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
        scaling_config=ScalingConfig(
            num_workers=num_workers(cfg), use_gpu=use_gpu,
            resources_per_worker={"CPU": 1, **({"GPU": 1} if use_gpu else {})},
            # Several machines where Ray can find them; else as few as hold the workers.
            placement_strategy="SPREAD" if cfg.nodes > 1 else "PACK"),
        run_config=RunConfig(
            name=RAY_TRAIN_NAME, storage_path=str(home.checkpoints_dir(run_id).resolve()),
            # No retry of a worker group that failed or lost a machine (a resume is the
            # run's retry); one waiting for resources busy elsewhere waits (Ray's default).
            failure_config=FailureConfig(max_failures=0, max_preemption_failures=0),
            worker_runtime_env={"env_vars": env}))


def _fit(trainer, store: RunStore, run_id: int, stop_event: threading.Event
         ) -> BaseException | None:
    """Run ``trainer.fit()`` to its end, forwarding a stop; returns the error it raised.

    fit() runs in a thread of its own: it blocks, and in the main thread Ray would take
    over Ctrl-C (aborting the workers without a checkpoint) from the caller's handler.
    """
    errors: list[BaseException] = []

    def fit() -> None:
        try:
            trainer.fit()
        except BaseException as exc:  # handed to the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=fit, name=f"ray-train-{run_id}", daemon=True)
    thread.start()
    stop_sent = False
    while thread.is_alive():
        thread.join(POLL_S)
        if stop_event.is_set() and not stop_sent:
            store.request_stop(run_id)  # every worker stops at its next log_interval
            stop_sent = True
    return errors[0] if errors else None


def ended_without_the_run(error: BaseException | None, last_step: int) -> tuple[str, str]:
    """The status and reason of a run whose Ray Train workers ended while it was running:
    ``interrupted`` when a worker (or its machine) died, ``failed`` for an error in one."""
    from ray.exceptions import RayActorError
    from ray.train import ControllerError, WorkerGroupError

    at = f"at step {last_step}"
    if error is None:
        return RunStatus.FAILED, f"Ray Train ended {at} without the run ending"
    failures: dict[str, BaseException] = {}
    if isinstance(error, WorkerGroupError):
        failures = {f"the Ray Train worker of rank {rank}": exc
                    for rank, exc in sorted(error.worker_failures.items())}
    elif isinstance(error, ControllerError):
        failures = {"Ray Train's controller": error.controller_failure}
    # A dead worker shows as a failed health check; the others then fail in a collective.
    failures = {who: getattr(exc, "health_check_failure", exc)
                for who, exc in (failures or {"Ray Train": error}).items()}
    for who, exc in failures.items():
        if isinstance(exc, RayActorError):
            return RunStatus.INTERRUPTED, f"{who} died {at}: {_gist(exc)}"
    who, exc = next(iter(failures.items()))
    return RunStatus.FAILED, f"{who} failed {at}: {_gist(exc)}"


def _gist(exc: BaseException) -> str:
    """One line of an error: its message's first line, or a traceback's last."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return lines[-1].strip() if lines[0].startswith("Traceback") else lines[0]


def _train_worker(config: dict) -> None:
    """One Ray Train worker: trains the run as a torchrun rank does (rank 0 records)."""
    import torch
    from ray.train.torch import get_device

    from jobs import runner

    if os.path.isdir(config["cwd"]):  # relative paths mean what they meant to the submitter
        os.chdir(config["cwd"])
    if config["device"] == "cuda":
        torch.cuda.set_device(get_device())  # the GPU Ray gave this worker
    store = RunStore()  # the run's database: GPTDASH_DB_URL in this worker's environment
    try:
        result = runner.execute_run(store, config["run_id"], claim=config["claim"],
                                    device=config["device"])
    finally:
        store.close()
    if result.status == RunStatus.FAILED:
        # An error ends the whole group, so no other worker waits in a collective for this one.
        raise RuntimeError(f"the run failed: {result.reason}")
