"""One run as two Ray Train workers (TorchTrainer, gloo on the CPU) on a real local Ray
cluster: it matches one process with the same global batch and rank 0 alone records it; a
Stop ends it ``stopped`` with a checkpoint; workers that die leave it ``interrupted`` with
Ray's reason. Plus the ``nodes`` field and what a plain worker says to it.

The driver is this test process, connected to the session's ``ray_cluster`` as the Ray
job's ``ray-run`` entrypoint is to its cluster; the cluster's workers import this checkout
through the PYTHONPATH the cluster was started with.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import ray
from test_gptcore_distributed import (
    ACCUM,
    STEPS,
    single_process_same_global_batch,
    two_rank_config,
)

from gptcore.checkpoint import load_checkpoint
from gptcore.config import TrainConfig, apply_overrides
from gptcore.distributed import RAY_TRAIN_ENV, Ranks, check_nproc, ranks_from_env
from gptcore.errors import GptdashError
from gptcore.metric_keys import TOKENS_SEEN, TRAIN_LOSS
from jobs import runner
from jobs.manager import claim_here
from jobs.ray_train import capacity_problem, needs_ray_train, num_workers, run_with_ray_train
from storage.status import Executor, RunStatus

# Generous: a worker group takes 11-13 s to start on an idle two-core box, but these tests
# took 208-246 s each with the cores half taken by other work (bench/RESULTS.md).
WAIT_S = 600


@pytest.fixture(scope="module")
def ray_driver(ray_cluster):
    """This process connected to the session's Ray cluster as a driver."""
    ray.init(address=ray_cluster.gcs_address, log_to_driver=False)
    yield ray_cluster
    ray.shutdown()


def _claimed_run(store, cfg: TrainConfig, executor: str = Executor.RAY) -> int:
    run_id = (runner.create_run(store, cfg, executor=executor) if executor == Executor.RAY
              # a plain worker's run with nodes > 1 (queued by a release before the check)
              else store.create_run("old", cfg.to_dict(), max_steps=cfg.max_steps))
    claim_here(store, run_id)  # as the ray-run entrypoint does before it calls us
    return run_id


def _claim(store, run_id: int) -> int:
    """The token of the claim ``_claimed_run`` made."""
    return store.get_run(run_id).claim_token


def _in_background(store, run_id: int, stop_event: threading.Event):
    """run_with_ray_train in a thread; returns the thread and the list its status lands in."""
    out: list[str] = []
    claim = _claim(store, run_id)
    thread = threading.Thread(target=lambda: out.append(
        run_with_ray_train(store, run_id, claim=claim, stop_event=stop_event)), daemon=True)
    thread.start()
    return thread, out


def _wait_for_step(store, run_id: int, step: int) -> None:
    deadline = time.monotonic() + WAIT_S
    while store.get_run(run_id).last_step < step:
        assert store.get_run(run_id).status == RunStatus.RUNNING, store.get_run(run_id).error
        assert time.monotonic() < deadline, f"run {run_id} did not reach step {step}"
        time.sleep(0.3)


@pytest.mark.slow
def test_two_ray_train_workers_match_one_process_with_the_same_global_batch(
        ray_driver, store, tmp_path, monkeypatch):
    cfg = two_rank_config()  # nproc 2 on one node: 2 workers
    assert needs_ray_train(cfg) and num_workers(cfg) == 2
    run_id = _claimed_run(store, cfg)

    assert run_with_ray_train(store, run_id, claim=_claim(store, run_id)) == RunStatus.COMPLETED

    run = store.get_run(run_id)
    assert (run.status, run.last_step, run.device) == (RunStatus.COMPLETED, STEPS, "cpu x2")
    frame = store.metrics([run_id], [TRAIN_LOSS])
    ddp = dict(zip(frame["step"], frame["value"], strict=True))
    assert sorted(ddp) == list(range(STEPS))
    seen = store.metrics([run_id], [TOKENS_SEEN])["value"]
    assert seen.iloc[-1] == STEPS * 8 * ACCUM * 16 * 2  # steps x batch x accum x context x 2
    # Rank 0 alone records: one sample per evaluation (a second recorder would double them;
    # metric rows are one per key and step whoever writes them).
    assert sorted(store.samples(run_id)["step"]) == [0, 15, 30]
    reference = single_process_same_global_batch(tmp_path, monkeypatch)
    assert ddp[0] != pytest.approx(ddp[STEPS - 1], abs=0.3)  # it trained
    for step, value in reference.items():
        assert ddp[step] == pytest.approx(value, abs=1e-4), step


@pytest.mark.slow
def test_a_stop_mid_run_ends_every_worker_stopped_with_a_checkpoint(ray_driver, store):
    # No checkpoint on the way: the one there is at the end is the stop's.
    run_id = _claimed_run(store, two_rank_config(max_steps=100_000, checkpoint_interval=100_000))
    stop_event = threading.Event()
    thread, out = _in_background(store, run_id, stop_event)
    _wait_for_step(store, run_id, 3)

    # The ray-run job was told to stop (SIGTERM, Ctrl-C): it raises the run's stop flag, the
    # one `gptdash stop` and the page's Stop raise (test_ray_executor stops a run that way),
    # and rank 0 hands it on to every worker.
    stop_event.set()
    thread.join(WAIT_S)

    assert not thread.is_alive()  # fit() returned: every worker left the loop
    run = store.get_run(run_id)
    assert out == [RunStatus.STOPPED] and run.status == RunStatus.STOPPED
    assert run.error == f"stopped on request at step {run.last_step}"
    assert Path(run.checkpoint_path).is_file()
    payload = load_checkpoint(run.checkpoint_path)
    assert payload["step"] == run.last_step and len(payload["rng"]["ranks"]) == 2


@pytest.mark.slow
def test_workers_that_die_leave_the_run_interrupted_with_rays_reason(ray_driver, store):
    from ray.util.state import list_actors

    run_id = _claimed_run(store, two_rank_config(max_steps=100_000, checkpoint_interval=100_000))
    thread, out = _in_background(store, run_id, threading.Event())
    _wait_for_step(store, run_id, 3)
    workers = list_actors(address=ray_driver.address, detail=True, filters=[
        ("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE"),
        ("job_id", "=", ray.get_runtime_context().get_job_id())])
    pids = [actor.pid for actor in workers]
    assert len(pids) == 2
    # Their machine dies: frozen first, so neither records anything about the other's end.
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        for pid in pids:
            os.kill(pid, sig)
    thread.join(WAIT_S)

    assert not thread.is_alive()
    run = store.get_run(run_id)
    assert out == [RunStatus.INTERRUPTED] and run.status == RunStatus.INTERRUPTED
    assert run.error.startswith("the Ray Train worker of rank ")
    assert " died at step " in run.error and f"gptdash resume {run_id}" in run.error


def test_a_run_the_cluster_can_never_hold_fails_at_once_saying_what_to_change(ray_driver, store):
    cpus = int(ray.cluster_resources()["CPU"])  # 2 on the session's head
    run_id = _claimed_run(store, two_rank_config(nproc=cpus + 1))

    assert run_with_ray_train(store, run_id, claim=_claim(store, run_id)) == RunStatus.FAILED

    assert store.get_run(run_id).error == (
        f"nodes 1 x nproc {cpus + 1} is {cpus + 1} Ray Train workers, one CPU each, but the Ray "
        f"cluster has {cpus} CPUs: lower nodes or nproc, or add machines to the cluster")


# ---- nodes, and ranks under Ray Train (no cluster needed) -----------------------------------
def test_nodes_is_one_by_default_and_must_be_at_least_one():
    assert TrainConfig().nodes == 1
    cfg = apply_overrides(TrainConfig(), {"nodes": 0})
    with pytest.raises(GptdashError, match="nodes must be at least 1, not 0"):
        cfg.validate()


def test_nodes_multiply_the_tokens_per_step_and_the_ray_workers():
    one = two_rank_config()
    three = two_rank_config(nodes=3)
    assert three.tokens_per_step == 3 * one.tokens_per_step
    assert num_workers(three) == 6
    assert needs_ray_train(two_rank_config(nproc=1, nodes=2))
    assert not needs_ray_train(two_rank_config(nproc=1))


def test_workers_need_a_cpu_each_and_a_gpu_each_on_cuda():
    cfg = two_rank_config(nodes=2)  # 4 workers
    assert capacity_problem(cfg, "cpu", {"CPU": 4.0}) is None
    assert capacity_problem(cfg, "cuda", {"CPU": 8.0, "GPU": 4.0}) is None
    assert "one GPU each, but the Ray cluster has 3 GPUs" in capacity_problem(
        cfg, "cuda", {"CPU": 8.0, "GPU": 3.0})
    assert "has 0 GPUs" in capacity_problem(cfg, "cuda", {"CPU": 8.0})


def test_a_plain_worker_refuses_nodes_above_one(store):
    run_id = _claimed_run(store, two_rank_config(nproc=1, nodes=2, max_steps=5),
                          executor=Executor.LOCAL)
    result = runner.execute_run(store, run_id)
    run = store.get_run(run_id)
    assert result.status == run.status == RunStatus.FAILED
    assert "nodes 2" in run.error and "needs --on ray" in run.error


def test_nodes_above_one_on_plain_workers_is_refused_before_anything_is_written(store):
    from jobs import actions

    with pytest.raises(GptdashError, match="nodes=2 spreads the run over 2 machines of a Ray "
                                           "cluster: queue it with --on ray"):
        actions.submit(store, two_rank_config(nproc=1, nodes=2, max_steps=5))
    assert store.list_runs() == []


def test_ray_trains_workers_are_ranks_whose_group_ray_made_and_that_span_machines():
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2"}
    assert ranks_from_env(env) == Ranks(rank=3, local_rank=1, world_size=4, local_world_size=2)
    ray_ranks = ranks_from_env({**env, RAY_TRAIN_ENV: "1"})
    assert ray_ranks.ray_train and ray_ranks.rank == 3
    check_nproc(ray_ranks, nproc=2, nodes=2)  # 2 x 2 workers, wherever Ray placed them
    check_nproc(ray_ranks, nproc=4, nodes=1)  # nproc beyond one machine: Ray spreads them
    with pytest.raises(GptdashError, match="Ray Train started 4 workers"):
        check_nproc(ray_ranks, nproc=1, nodes=2)
    with pytest.raises(GptdashError, match="needs --on ray"):
        check_nproc(ranks_from_env(env), nproc=2, nodes=2)  # torchrun cannot span nodes
