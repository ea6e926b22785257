"""RunStore under concurrent use: one writer with readers, and racing queue claims."""

from __future__ import annotations

import multiprocessing
import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from storage.store import RunStore

# Every test here runs on SQLite and on PostgreSQL (see conftest.pytest_generate_tests).
pytestmark = pytest.mark.backends("sqlite", "postgresql")


@pytest.mark.slow
@pytest.mark.backends("sqlite")  # SQLite's single-writer locking is what this exercises
def test_writer_with_concurrent_readers(store: RunStore) -> None:
    run_id = store.create_run("busy", {}, status="running")
    other = store.create_run("other", {})
    done = threading.Event()
    errors: list[BaseException] = []
    reads = [0, 0, 0]

    def write() -> None:
        try:
            for start in range(0, 20_000, 100):
                store.log_metrics(run_id, [("train/loss", s, 1.0 / (s + 1), float(s))
                                           for s in range(start, start + 100)])
                store.update_run(run_id, last_step=start + 99)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
        finally:
            done.set()

    def read(slot: int) -> None:
        try:
            last = -1
            while not done.is_set():
                new = store.metrics([run_id], ["train/loss"], after_step=last)
                if not new.empty:
                    assert new["step"].iloc[0] == last + 1  # no gaps between reads
                    last = int(new["step"].iloc[-1])
                store.list_runs()
                store.runs_frame(status="running")
                store.metrics_downsampled([run_id, other], "train/loss", buckets=50)
                store.stop_requested(run_id)
                reads[slot] += 1
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=write)]
    threads += [threading.Thread(target=read, args=(slot,)) for slot in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    assert all(reads), reads
    assert len(store.metrics([run_id])) == 20_000
    assert store.get_run(run_id).last_step == 19_999


def test_claim_from_threads_never_duplicates(store: RunStore) -> None:
    queued = [store.create_run(f"q{i}", {}) for i in range(60)]

    def claim_all(pid: int) -> list[int]:
        claimed = []
        while (claim := store.claim_next_queued(f"t{pid}", host="h", pid=pid)) is not None:
            claimed.append(claim.run_id)
        return claimed

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(claim_all, range(4)))
    claimed = [run_id for result in results for run_id in result]
    assert sorted(claimed) == queued  # each exactly once
    for pid, result in enumerate(results):
        runs = [store.get_run(run_id) for run_id in result]
        assert all((run.worker, run.owner_pid) == (f"t{pid}", pid) for run in runs)


def _claim_in_process(url: str, worker: str, start: multiprocessing.Event,
                      results: multiprocessing.Queue) -> None:
    """Child process: claim runs until none is queued, then report which."""
    store = RunStore(url)
    start.wait()
    claimed = []
    while (claim := store.claim_next_queued(worker)) is not None:
        claimed.append(claim.run_id)
    store.close()
    results.put((worker, claimed))


def test_claim_from_processes_never_duplicates(store: RunStore) -> None:
    queued = [store.create_run(f"q{i}", {}) for i in range(40)]
    context = multiprocessing.get_context("spawn")
    start, results = context.Event(), context.Queue()
    workers = [f"proc-{i}" for i in range(3)]
    processes = [context.Process(target=_claim_in_process, args=(store.url, w, start, results))
                 for w in workers]
    for process in processes:
        process.start()
    start.set()
    reported = dict(results.get(timeout=120) for _ in processes)
    for process in processes:
        process.join(timeout=60)
        assert process.exitcode == 0
    claimed = [run_id for ids in reported.values() for run_id in ids]
    assert sorted(claimed) == queued
    for worker, ids in reported.items():
        assert all(store.get_run(run_id).worker == worker for run_id in ids)


@pytest.mark.backends("sqlite")
def test_a_new_database_file_another_process_holds_is_waited_for_not_refused(tmp_path) -> None:
    """Two processes opening a new home at once (the ranks of ``torchrun -m jobs train``)
    both switch its file to WAL; SQLite refuses the one that finds the other's lock at once,
    without waiting, and that rank used to end with "database is locked"."""
    path = tmp_path / "gptdash.db"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # the other process, mid-way through setting the file up
    released = threading.Timer(0.5, other.execute, ["ROLLBACK"])
    released.start()
    try:
        store = RunStore(f"sqlite:///{path}")
        assert store.list_runs() == []
        assert store.create_run("after the wait", {}) == 1
        store.close()
    finally:
        released.join()
        other.close()
