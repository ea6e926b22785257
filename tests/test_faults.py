"""Fault tolerance of the worker and the database bus: stops, deletes, races, two servers.

Everything runs on a real SQLite file in a temporary home folder; faults are real
actions (stop, delete, a second thread or process), never a mocked database.
``pytest -s`` shows the soak's figures.
"""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import os
import socket
import sys
import threading
import time
import types
from pathlib import Path

import pytest
import torch

from gptcore.checkpoint import load_checkpoint
from gptcore.config import ModelConfig, TrainConfig, apply_overrides
from gptcore.tokens import prepare
from gptcore.trainer import TrainerCallbacks
from jobs import runner
from jobs.manager import JobManager
from jobs.recovery import recover_interrupted
from storage import home as home_paths
from storage.errors import StorageError
from storage.store import RunStore

FINAL = ("completed", "stopped", "failed")

_spec = importlib.util.spec_from_file_location(
    "gptdash_bench_soak", Path(__file__).resolve().parent.parent / "bench" / "soak.py")
soak_bench = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))
_spec.loader.exec_module(soak_bench)


def micro(**overrides) -> TrainConfig:
    """The shape of ``micro()`` in test_jobs.py."""
    base = TrainConfig(
        model=ModelConfig(context_length=16, emb_dim=32, n_heads=4, n_layers=2),
        max_steps=20, batch_size=8, lr=3e-3, warmup_steps=2, min_lr=3e-4, eval_interval=10,
        eval_iters=2, log_interval=5, checkpoint_interval=10, sample_tokens=8, device="cpu",
    )
    return apply_overrides(base, overrides)


def wait_for(predicate, timeout=60.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models train several times faster on one thread when the CPU is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def spawn_safe_main(monkeypatch):
    """A bare ``__main__`` while a test spawns processes.

    Streamlit's AppTest (tests/test_app_pages.py) leaves ``sys.modules["__main__"]`` set
    to app.py, and a spawned child re-runs its parent's ``__main__``: each child would
    then start the app's own JobManager, which trains queued runs behind the test's back.
    """
    monkeypatch.setitem(sys.modules, "__main__", types.ModuleType("__main__"))


@pytest.fixture
def manager(store):
    m = JobManager(store)
    yield m
    m.shutdown()


def train_loss_steps(store: RunStore, run_id: int) -> list[int]:
    return [int(s) for s in store.metrics([run_id], ["train/loss"])["step"]]


def started_training(store: RunStore, run_id: int) -> bool:
    run = store.get_run(run_id)
    return run.status == "running" and run.last_step > 0


# ---- 1. soak ---------------------------------------------------------------------------------

@pytest.mark.slow
def test_soak_random_stops_and_deletes_leave_every_run_final_and_its_metrics_exact(
        store, monkeypatch):
    executor = soak_bench.RecordingExecute()
    monkeypatch.setattr(runner, "execute_run", executor)
    manager = JobManager(store)
    try:
        result = soak_bench.soak(store, manager, runs=20, seed=0, timeout=150)
        figures = soak_bench.check(store, manager, executor, result)
    finally:
        manager.shutdown()
    print("\nsoak:", json.dumps(figures))

    assert result.drained, "runs were still queued or running when the soak timed out"
    assert result.action_errors == [], "a Stop or Delete click raised"
    assert result.stopped and (result.deleted or result.refused), (
        "the soak stopped or deleted nothing")
    # A Delete that came while its run was queued or running was refused.
    assert set(result.refused.values()) <= {"queued", "running"}
    assert manager.completed  # the worker did train
    survivors = [r for r in result.run_ids if r not in result.deleted]
    runs = {r.id: r for r in store.list_runs(ids=survivors)}
    assert set(runs) == set(survivors), "a run nobody deleted disappeared"
    for run_id in survivors:
        assert runs[run_id].status in ("completed", "stopped", "cancelled"), (
            f"run {run_id} ended {runs[run_id].status}: {runs[run_id].error}")
    assert figures["stuck_runs"] == [] and figures["failed"] == 0
    assert figures["worker_alive"] and figures["worker_idle"]
    # Each run was trained at most once, and runs cancelled while queued never.
    assert len(executor.executed) == len(set(executor.executed))
    cancelled = [r for r in survivors if runs[r].error == "cancelled before it started"]
    assert not set(cancelled) & set(executor.executed)
    # What each surviving run's trainer reported is exactly what the database holds.
    for run_id in survivors:
        reported = (executor.recorders[run_id].snapshot()
                    if run_id in executor.recorders else {})
        frame = store.metrics([run_id])
        found = {(k, int(s)): float(v)
                 for k, s, v in zip(frame["key"], frame["step"], frame["value"], strict=True)}
        assert found.keys() == reported.keys(), f"run {run_id}: metric rows differ"
        for key, value in reported.items():
            assert found[key] == pytest.approx(value, rel=1e-9, abs=1e-12), (run_id, key)
    assert figures["mismatched_runs"] == []
    assert figures["rows_found"] == figures["rows_reported"] > 0
    # A deleted run leaves no rows, even one whose trainer was still writing.
    assert figures["rows_left_by_deleted"] == 0
    for run_id in result.deleted:
        assert store.samples(run_id).empty
        with pytest.raises(StorageError, match="does not exist"):
            store.get_run(run_id)


# ---- 2. two sessions press Start together ------------------------------------------------------

def test_two_sessions_pressing_start_at_the_same_moment_both_get_trained(store, manager):
    rounds, ids, errors = 3, [], []
    lock = threading.Lock()
    barrier = threading.Barrier(2)

    def press_start(session: int) -> None:
        try:
            for i in range(rounds):
                barrier.wait(10)
                run_id = manager.submit(micro(max_steps=10), name=f"session{session}-{i}")
                with lock:
                    ids.append(run_id)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=press_start, args=(s,)) for s in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert len(ids) == 2 * rounds and len(set(ids)) == 2 * rounds
    names = {r.name for r in store.list_runs(ids=ids)}
    assert names == {f"session{s}-{i}" for s in (1, 2) for i in range(rounds)}
    assert wait_for(lambda: all(store.get_run(r).status in FINAL for r in ids) and
                    manager.is_idle(), timeout=120)
    assert wait_for(lambda: set(ids) <= set(manager.completed))
    assert sorted(manager.completed) == sorted(ids)  # each trained exactly once
    for run_id in ids:
        assert store.get_run(run_id).status == "completed"
        assert train_loss_steps(store, run_id) == list(range(10))


def test_threads_building_the_same_token_cache_at_once_all_succeed(tmp_path):
    """Two pages validating (or a page and the worker loading) a new corpus at the same time."""
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("Some words for a fresh token cache. " * 5_000)
    n_threads = 8
    for attempt in range(5):
        cache = tmp_path / f"cache{attempt}"
        barrier, errors, lengths = threading.Barrier(n_threads), [], []
        threads = [threading.Thread(target=_load_tokens,
                                    args=(corpus, cache, barrier, lengths, errors))
                   for _ in range(n_threads)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == [], f"attempt {attempt}: {errors[0]!r}"
        ids = len(corpus.read_bytes()) + 1  # its bytes and the end of its one document
        assert lengths == [ids] * n_threads
        assert len(list(cache.glob("tokens-*/manifest.json"))) == 1
        assert not list(cache.glob("*.tmp"))


def _load_tokens(corpus: Path, cache: Path, barrier, lengths: list, errors: list) -> None:
    barrier.wait(10)
    try:
        ready = prepare(str(corpus), "byte", cache, 0.1)
        lengths.append(len(ready.train) + len(ready.val))
    except Exception as exc:  # noqa: BLE001 - reported by the test
        errors.append(exc)


# ---- 3. two server processes on one home folder -------------------------------------------------

def _server_process(home_dir: str, out_file: str, barrier, max_wait: float) -> None:
    """One 'server': its own RunStore and JobManager; trains until the queue is empty."""
    os.environ["GPTDASH_HOME"] = home_dir
    os.environ.pop("GPTDASH_DB_URL", None)
    torch.set_num_threads(1)
    trained: list[int] = []
    real = runner.execute_run

    def recording(store, run_id, **kwargs):
        trained.append(run_id)
        return real(store, run_id, **kwargs)

    runner.execute_run = recording
    store = RunStore()
    barrier.wait(120)  # both servers start their workers together
    manager = JobManager(store)
    end, idle_seen = time.monotonic() + max_wait, 0
    while time.monotonic() < end and idle_seen < 3:
        idle_seen = idle_seen + 1 if not store.queued_ids() and manager.is_idle() else 0
        time.sleep(0.1)
    manager.shutdown()
    Path(out_file).write_text(json.dumps({"worker": manager.worker, "trained": trained,
                                          "alive": manager.is_alive()}))


@pytest.mark.slow
def test_two_server_processes_on_one_home_train_each_run_exactly_once(store, home, tmp_path,
                                                                    spawn_safe_main):
    n_runs, steps = 8, 30
    run_ids = [runner.create_run(store, micro(max_steps=steps), name=f"shared-{i}")
               for i in range(n_runs)]
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(2)
    outs = [tmp_path / f"server{i}.json" for i in range(2)]
    procs = [ctx.Process(target=_server_process, args=(str(home), str(out), barrier, 120.0))
             for out in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(180)
    for p in procs:
        if p.is_alive():
            p.kill()
    assert [p.exitcode for p in procs] == [0, 0]

    reports = [json.loads(out.read_text()) for out in outs]
    sets = [set(r["trained"]) for r in reports]
    print(f"\ntwo servers: trained {sorted(sets[0])} and {sorted(sets[1])}")
    assert all(len(r["trained"]) == len(set(r["trained"])) for r in reports)
    assert sets[0].isdisjoint(sets[1]), "a run was trained by both servers"
    assert sets[0] | sets[1] == set(run_ids), (
        "a queued run was never trained by either server: "
        f"{ {r.id: (r.status, r.worker) for r in store.list_runs()} }")
    assert reports[0]["worker"] != reports[1]["worker"]
    assert not any(r["alive"] for r in reports)  # shutdown ended both workers
    owner = {run_id: r["worker"] for r in reports for run_id in r["trained"]}
    for run_id in run_ids:
        run = store.get_run(run_id)
        assert run.status == "completed", (run_id, run.status, run.error)
        assert run.worker == owner[run_id]
        assert train_loss_steps(store, run_id) == list(range(steps))
        assert len(store.samples(run_id)) == 4  # steps 0, 10, 20, 30: one sample each


# ---- 4. the page reads while the trainer writes ---------------------------------------------

def test_pages_read_all_through_a_run_while_the_trainer_writes_every_step(store, manager):
    steps = 200
    run_id = manager.submit(micro(max_steps=steps, log_interval=1, eval_interval=20,
                                  checkpoint_interval=50))
    stop, errors, seen = threading.Event(), [], []

    def page() -> None:
        while not stop.is_set():
            try:
                frame = store.metrics([run_id])
                store.metrics([run_id], ["train/loss"], after_step=steps // 2)
                store.runs_frame()
                store.metrics_downsampled([run_id], "train/loss", buckets=16)
                store.get_run(run_id)
                seen.append(len(frame))
            except Exception as exc:  # noqa: BLE001 - e.g. "database is locked"
                errors.append(exc)
            time.sleep(0.05)  # a page refreshes; leave the trainer some of the two cores

    readers = [threading.Thread(target=page, daemon=True) for _ in range(2)]
    for t in readers:
        t.start()
    finished = wait_for(lambda: store.get_run(run_id).status in FINAL, timeout=120)
    stop.set()
    for t in readers:
        t.join(10)
    assert finished
    assert errors == [], f"{len(errors)} reads failed, first: {errors[0]!r}"
    assert store.get_run(run_id).status == "completed"
    assert train_loss_steps(store, run_id) == list(range(steps))
    print(f"\npage reads during one run: {len(seen)}, distinct row counts seen: {len(set(seen))}")
    assert len(set(seen)) >= 3, "the reads did not overlap the writes"


# ---- 5. a Delete of a run in training -----------------------------------------------------------

def test_deleting_the_running_run_is_refused_and_it_trains_on_to_its_end(store, manager):
    run_id = manager.submit(micro(max_steps=40, eval_interval=20), name="kept")
    assert wait_for(lambda: started_training(store, run_id))
    with pytest.raises(StorageError, match=f"run {run_id} is running: stop it"):
        store.delete_run(run_id)
    assert wait_for(lambda: run_id in manager.completed, timeout=60)
    assert store.get_run(run_id).status == "completed"
    assert train_loss_steps(store, run_id) == list(range(40))
    assert home_paths.checkpoints_dir(run_id, create=False).exists()


# ---- a kill right after a checkpoint --------------------------------------------------------

def _train_until_killed_after_a_checkpoint(home_dir: str, run_id: int) -> None:
    """Child process: train the run and die (like kill -9) as soon as a checkpoint has landed."""
    os.environ["GPTDASH_HOME"] = home_dir
    os.environ.pop("GPTDASH_DB_URL", None)
    torch.set_num_threads(1)

    class DieAfterCheckpoint(TrainerCallbacks):
        def on_checkpoint(self, step, path):
            os._exit(137)  # no flush, no finally: the process is simply gone

    runner.execute_run(RunStore(), run_id, extra_callbacks=DieAfterCheckpoint())
    os._exit(0)


@pytest.mark.slow
@pytest.mark.parametrize("which", ["periodic", "on_stop"])
def test_a_kill_right_after_a_checkpoint_loses_no_metrics_once_resumed(store, home, which,
                                                                     spawn_safe_main):
    """Resume continues from the checkpoint, so every step before it must already be stored.

    ``periodic``: the checkpoint every 30 steps. ``on_stop``: the one a Stop request saves
    (the stop flag is set before training starts, so it comes after the first step).
    """
    steps = 60
    # log_interval 7 does not divide 30, and no evaluation (which flushes) falls between
    # step 0 and the end.
    run_id = runner.create_run(store, micro(
        max_steps=steps, log_interval=7, eval_interval=1000,
        checkpoint_interval=30 if which == "periodic" else 1000))
    if which == "on_stop":
        store.request_stop(run_id)
    proc = multiprocessing.get_context("spawn").Process(
        target=_train_until_killed_after_a_checkpoint, args=(str(home), run_id))
    proc.start()
    store.claim_run(run_id, "child", host=socket.gethostname(), pid=proc.pid)
    proc.join(120)
    assert proc.exitcode == 137, "the trainer was not killed after its checkpoint"
    saved_at = load_checkpoint(runner.checkpoint_file(run_id))["step"]
    assert saved_at == 30 if which == "periodic" else 0 < saved_at < steps
    assert recover_interrupted(store) == [run_id]
    runner.queue_resume(store, run_id)
    store.claim_run(run_id, "test", host=socket.gethostname(), pid=os.getpid())
    assert runner.execute_run(store, run_id).status == "completed"
    logged = train_loss_steps(store, run_id)
    missing = sorted(set(range(steps)) - set(logged))
    assert missing == [], (f"steps {missing} were trained before the checkpoint at step "
                           f"{saved_at} but never stored")


# ---- a stop that races the worker's claim -------------------------------------------------------

def test_stop_pressed_while_the_worker_claims_the_queued_run_is_not_lost(store):
    """Another worker claims the queued run right after Stop's first database call.

    Whatever order Stop does its work in, the run must end stopped: cancelled if the
    claim came too late, or stopped by its trainer if the claim won.
    """
    manager = JobManager(store, start=False)  # the claiming worker is "another server" below
    run_id = runner.create_run(store, micro(max_steps=60))
    public = [name for name in dir(RunStore)
              if not name.startswith("_") and callable(getattr(RunStore, name))]
    claimed: list[int | None] = []

    def claim_after(name):
        real = getattr(store, name)

        def call(*args, **kwargs):
            try:
                return real(*args, **kwargs)
            finally:
                if not claimed:
                    for n in public:
                        store.__dict__.pop(n, None)
                    claim = store.claim_next_queued("other-server:1")
                    claimed.append(claim and claim.run_id)
        return call

    for name in public:
        store.__dict__[name] = claim_after(name)
    try:
        manager.stop(run_id)
    finally:
        for name in public:
            store.__dict__.pop(name, None)
    assert claimed in ([run_id], [None])
    if claimed == [run_id]:  # the claim won: the other server trains what it claimed
        result = runner.execute_run(store, run_id)
        assert result.status == "stopped", (
            f"Stop was pressed, yet the run ended {result.status} at step {result.step}")
    run = store.get_run(run_id)
    assert run.status == "stopped" and run.last_step < 60, (run.status, run.last_step)


# ---- the bench script --------------------------------------------------------------------------

def test_soak_bench_cli_prints_one_json_line(home, capsys):
    real = runner.execute_run
    code = soak_bench.main(["--runs", "2", "--seed", "1", "--timeout", "60"])
    assert runner.execute_run is real  # the bench put the real function back
    line = capsys.readouterr().out.strip().splitlines()[-1]
    figures = json.loads(line)
    for key in ("runs", "completed", "stopped", "deleted", "failed", "rows_reported",
                "rows_found", "mismatched_runs", "stuck_runs", "seconds", "worker_alive",
                "action_errors"):
        assert key in figures
    assert figures["runs"] == 2 and figures["worker_alive"] and code == 0
    assert os.environ["GPTDASH_HOME"] == str(home)

