"""Soak the background worker: many tiny runs, stopped and deleted at random moments.

    python bench/soak.py --runs 20 --seed 0

Queues ``--runs`` tiny CPU runs back to back into one ``JobManager`` on a fresh
temporary home folder (real SQLite file). While the worker trains them, a second
thread stops some runs and deletes others at random moments (seeded), half the
time aiming at the run being trained right now (a Delete of a run still queued or
running is refused, and the run is stopped instead, as the Runs page asks). Every
run's callbacks are wrapped with a recorder of what the trainer reported, so at the
end each surviving run's metric rows are compared with what its trainer said. Prints one JSON line:

    runs, completed, stopped, cancelled, deleted, failed, rows_reported, rows_found,
    mismatched_runs, stuck_runs, seconds, worker_alive

plus deletes_refused (Deletes of a queued or running run), stopped_while_running
(how many Stops hit the run in training), rows_left_by_deleted and
folders_left_by_deleted (what a deleted run left behind), action_errors (Stop or
Delete calls that raised) and worker_idle.
Exit status 1 when a run is stuck or mismatched, or a Stop or Delete raised.
``--threads`` (default 1) sets torch's CPU threads: tiny models train fastest on
one, especially on a shared machine. ``tests/test_faults.py`` runs the same soak.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gptcore.config import ModelConfig, TrainConfig, apply_overrides  # noqa: E402
from gptcore.trainer import TrainerCallbacks  # noqa: E402
from jobs import runner  # noqa: E402
from jobs.errors import USER_ERRORS  # noqa: E402
from jobs.manager import JobManager  # noqa: E402
from storage.home import checkpoints_dir  # noqa: E402
from storage.status import FINISHED, RunStatus  # noqa: E402
from storage.store import RunStore  # noqa: E402


def tiny_config(**overrides) -> TrainConfig:
    """The shape of ``micro()`` in tests/test_jobs.py: trains in well under a second on a CPU."""
    base = TrainConfig(
        model=ModelConfig(context_length=16, emb_dim=32, n_heads=4, n_layers=2),
        max_steps=20, batch_size=8, lr=3e-3, warmup_steps=2, min_lr=3e-4, eval_interval=10,
        eval_iters=2, log_interval=5, checkpoint_interval=10, sample_tokens=8, device="cpu",
    )
    return apply_overrides(base, overrides)


class MetricRecorder(TrainerCallbacks):
    """What the trainer reported through ``on_metrics``: (key, step) -> value, last one wins."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, int], float] = {}
        self._lock = threading.Lock()

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        with self._lock:
            for key, value in metrics.items():
                self.values[(key, int(step))] = float(value)

    def snapshot(self) -> dict[tuple[str, int], float]:
        with self._lock:
            return dict(self.values)


class RecordingExecute:
    """A stand-in for ``jobs.runner.execute_run`` that records each run's reported metrics.

    It calls the real ``execute_run`` with a ``MetricRecorder`` as ``extra_callbacks``;
    install it with ``monkeypatch.setattr(runner, "execute_run", RecordingExecute())``
    (the JobManager looks ``runner.execute_run`` up at every run).
    """

    def __init__(self, real=None) -> None:
        self.real = real or runner.execute_run
        self.recorders: dict[int, MetricRecorder] = {}
        self.executed: list[int] = []
        self._lock = threading.Lock()

    def __call__(self, store, run_id, *, claim=None, stop_event=None, extra_callbacks=None,
                 device=None):
        recorder = MetricRecorder()
        with self._lock:
            self.recorders[run_id] = recorder
            self.executed.append(run_id)
        return self.real(store, run_id, claim=claim, stop_event=stop_event,
                         extra_callbacks=recorder, device=device)


@dataclass
class SoakResult:
    run_ids: list[int]
    stopped: dict[int, str] = field(default_factory=dict)  # run id -> status seen when stopped
    deleted: dict[int, str] = field(default_factory=dict)  # run id -> status seen when deleted
    refused: dict[int, str] = field(default_factory=dict)  # a Delete refused: the status seen
    seconds: float = 0.0
    drained: bool = False  # every run reached a final status (or was deleted) before the timeout
    action_errors: list[str] = field(default_factory=list)  # stop/delete calls that raised


def queue_tiny_runs(manager: JobManager, rng: random.Random, runs: int) -> list[int]:
    ids = []
    for i in range(runs):
        cfg = tiny_config(max_steps=rng.randint(30, 60), log_interval=rng.choice([1, 2, 3, 5]),
                          eval_interval=rng.choice([10, 20]), checkpoint_interval=20,
                          sample_tokens=4, seed=rng.randint(0, 10_000))
        ids.append(manager.submit(cfg, name=f"soak-{i}"))
    return ids


def _chaos(store: RunStore, manager: JobManager, rng: random.Random, result: SoakResult,
           n_stop: int, n_delete: int, done: threading.Event, errors: list[BaseException]) -> None:
    """Stop and delete runs at random moments, half the time the run being trained."""
    try:
        actions = ["stop"] * n_stop + ["delete"] * n_delete
        rng.shuffle(actions)
        untouched = list(result.run_ids)
        for action in actions:
            if done.wait(rng.uniform(0.05, 0.5)):
                return
            finished = {r.id for r in store.list_runs(ids=untouched, status=FINISHED)}
            # A Delete may hit a run that ended too; a Stop only one that has not.
            candidates = [r for r in untouched if action == "delete" or r not in finished]
            if not candidates:
                return
            current = manager.current_run
            if current in candidates and rng.random() < 0.5:
                target = current
            else:
                target = rng.choice(candidates)
            untouched.remove(target)
            seen = "unknown"
            try:
                seen = store.get_run(target).status
                if action == "stop":
                    manager.stop(target)
                    result.stopped[target] = seen
                else:
                    store.delete_run(target)
                    result.deleted[target] = seen
            except USER_ERRORS:
                if action == "delete":  # still queued or running: stopped, as the page asks
                    result.refused[target] = seen
                    with contextlib.suppress(*USER_ERRORS):  # it may have ended meanwhile
                        manager.stop(target)
                        result.stopped[target] = seen
            except Exception as exc:  # noqa: BLE001 - a Stop or Delete click that errors
                result.action_errors.append(f"{action} run {target}: {exc!r}")
                if not store.list_runs(ids=[target]):
                    result.deleted[target] = seen  # the row went even though delete raised
    except BaseException as exc:  # noqa: BLE001 - reported to the caller
        errors.append(exc)


def soak(store: RunStore, manager: JobManager, *, runs: int = 20, seed: int = 0,
         timeout: float = 300.0) -> SoakResult:
    """Queue ``runs`` tiny runs, stop ~1/4 and delete ~1/4 at random moments, wait for the end.

    ``runner.execute_run`` must already be a ``RecordingExecute`` for the metric check.
    """
    rng = random.Random(seed)
    start = time.perf_counter()
    result = SoakResult(run_ids=queue_tiny_runs(manager, rng, runs))
    done, errors = threading.Event(), []
    chaos = threading.Thread(target=_chaos, name="soak-chaos", daemon=True,
                             args=(store, manager, rng, result, runs // 4, runs // 4, done, errors))
    chaos.start()
    end = time.monotonic() + timeout

    def drained() -> bool:
        live = [r for r in result.run_ids if r not in result.deleted]
        finals = {r.id for r in store.list_runs(ids=live, status=FINISHED)}
        return len(finals) == len(live) and manager.is_idle()

    while time.monotonic() < end and not drained():
        time.sleep(0.1)
    done.set()
    chaos.join(10)
    result.drained = drained()
    result.seconds = time.perf_counter() - start
    if errors:
        raise errors[0]
    return result


def close(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


def check(store: RunStore, manager: JobManager, executor: RecordingExecute,
          result: SoakResult) -> dict:
    """Compare each surviving run's metric rows with its recorder; the figures as a dict."""
    survivors = [r for r in result.run_ids if r not in result.deleted]
    statuses = {r.id: r.status for r in store.list_runs(ids=survivors)}
    frame = store.metrics(survivors)
    found: dict[int, dict[tuple[str, int], float]] = {r: {} for r in survivors}
    for run_id, key, step, value in zip(frame["run_id"], frame["key"], frame["step"],
                                        frame["value"], strict=True):
        found[int(run_id)][(key, int(step))] = float(value)
    reported = {r: (executor.recorders[r].snapshot() if r in executor.recorders else {})
                for r in survivors}
    mismatched = sorted(
        r for r in survivors
        if reported[r].keys() != found[r].keys()
        or not all(close(reported[r][k], found[r][k]) for k in reported[r]))
    # Interrupted would mean the worker lost a run it was training: stuck too.
    settled = FINISHED - {RunStatus.INTERRUPTED}
    stuck = sorted(r for r in survivors if statuses.get(r) not in settled)
    leftovers = store.metrics(list(result.deleted))
    return {
        "runs": len(result.run_ids),
        "completed": sum(s == "completed" for s in statuses.values()),
        "stopped": sum(s == "stopped" for s in statuses.values()),
        "cancelled": sum(s == "cancelled" for s in statuses.values()),
        "deleted": len(result.deleted),
        "deletes_refused": len(result.refused),
        "stopped_while_running": sum(s == "running" for s in result.stopped.values()),
        "failed": sum(s == "failed" for s in statuses.values()),
        "rows_reported": sum(len(v) for v in reported.values()),
        "rows_found": sum(len(v) for v in found.values()),
        "rows_left_by_deleted": len(leftovers),
        "folders_left_by_deleted": sum(checkpoints_dir(r, create=False).exists()
                                       for r in result.deleted),
        "action_errors": result.action_errors,
        "mismatched_runs": mismatched,
        "stuck_runs": stuck,
        "seconds": round(result.seconds, 2),
        "worker_alive": manager.is_alive(),
        "worker_idle": manager.is_idle(),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads; 1 keeps tiny runs fast on a busy machine")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    saved = {name: os.environ.get(name) for name in ("GPTDASH_HOME", "GPTDASH_DB_URL")}
    with tempfile.TemporaryDirectory(prefix="gptdash-soak-") as tmp:
        os.environ["GPTDASH_HOME"] = tmp
        os.environ.pop("GPTDASH_DB_URL", None)
        store = RunStore()
        executor = RecordingExecute()
        runner.execute_run = executor
        manager = JobManager(store)
        try:
            result = soak(store, manager, runs=args.runs, seed=args.seed, timeout=args.timeout)
            figures = check(store, manager, executor, result)
        finally:
            manager.shutdown()
            runner.execute_run = executor.real
            store.close()
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
    print(json.dumps(figures))
    ok = (not figures["mismatched_runs"] and not figures["stuck_runs"] and figures["worker_alive"]
          and not figures["action_errors"] and result.drained)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
