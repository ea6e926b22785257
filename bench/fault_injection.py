"""Fault injection: a run trained through PostgreSQL restarts and a `kill -9` of its worker,
beside the same run undisturbed (issue 24).

    OMP_NUM_THREADS=1 .venv/bin/python bench/fault_injection.py [--steps 2000] [--every 20]

Two throw-away PostgreSQL 15 servers (as the tests start them), each upgraded to the latest
schema, each with two real `gptdash worker` processes (one torch thread each) and its own
home folder. The same tiny-preset run (same seed, on the CPU) is queued on both at once:

- **undisturbed**: nothing happens to it;
- **disturbed**: its server is restarted (`pg_ctl restart -m fast`) every ``--every``
  seconds until the run ends, and once the run has passed its midpoint and a checkpoint,
  the worker training it is killed with SIGKILL; the other worker resumes it by itself.

The two run side by side so that both see the same load on a shared machine. At the end the
disturbed run's rows are compared with the undisturbed run's: metric (key, step) pairs lost or
extra, rows duplicated (metrics, samples and events counted per (kind, step); the outage and
auto_resume events are the disturbance's own and left out), final statuses, the median of the
``tokens_per_sec`` rows logged while both runs trained (each logging interval's throughput,
so the restart gap of the killed attempt is in none of them) and tokens per trained second
(``runs.trained_s``, which holds the steps the killed attempt trained past its checkpoint
twice, so they are counted), the lines 'Traceback' in each side's worker output, and the
machine's load (``uptime``) before and after.

Metric rows cannot be duplicated by construction (their primary key is (run, key, step) and
a write is an upsert), so the metric check is for lost and extra pairs; samples and events
have no such key, and there a row written twice would show.

``--control`` disturbs neither run: how far the tokens/s of two identical runs side by side
differ on this machine, the noise the disturbed run's ratio is to be read against.

Prints one JSON line and writes a markdown table to ``--report``. Exit status 1 when a row is
lost or duplicated, a run ends other than completed, or a worker printed a traceback.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gptcore.metric_keys import TOKENS_PER_SEC, TRAIN_LOSS, VAL_LOSS  # noqa: E402
from storage.auto_resume import AUTO_RESUME_EVENT  # noqa: E402
from storage.errors import DatabaseUnavailable  # noqa: E402
from storage.migrate import upgrade  # noqa: E402
from storage.schema import make_engine  # noqa: E402
from storage.status import FINISHED  # noqa: E402
from storage.store import RunStore  # noqa: E402
from tests.postgres_support import PostgresServer, start_server  # noqa: E402

# The disturbance's own events: what the undisturbed run cannot have.
DISTURBANCE_EVENTS = ("outage", AUTO_RESUME_EVENT)


@dataclass
class Side:
    """One PostgreSQL server, its home folder, its workers and its run."""

    name: str
    server: PostgresServer
    home: Path
    url: str
    store: RunStore
    log: Path
    workers: dict[str, subprocess.Popen] = field(default_factory=dict)
    run_id: int = 0

    def env(self) -> dict[str, str]:
        return {**os.environ, "GPTDASH_HOME": str(self.home), "GPTDASH_DB_URL": self.url,
                "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def open_side(name: str, root: Path) -> Side:
    server = start_server()
    database = server.create_database()
    url = server.url(database)
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    home = root / name
    home.mkdir()
    return Side(name, server, home, url, RunStore(url), root / f"{name}-workers.log")


def start_workers(side: Side) -> None:
    for worker in ("w1", "w2"):
        with open(side.log, "a") as out:
            side.workers[worker] = subprocess.Popen(
                [sys.executable, "-m", "jobs", "worker", "--name", f"{side.name}-{worker}",
                 "--threads", "1"],
                cwd=REPO, env=side.env(), stdout=out, stderr=subprocess.STDOUT)


def submit(side: Side, steps: int, checkpoint_interval: int) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "jobs", "submit", "--preset", "tiny", "--name", side.name,
         "--set", f"max_steps={steps}", "--set", "device=cpu",
         "--set", f"checkpoint_interval={checkpoint_interval}"],
        cwd=REPO, env=side.env(), capture_output=True, text=True, check=True).stdout
    side.run_id = int(out.split()[-1])


def look(side: Side):
    """The run's row, or None while the database is away (the disturbed side restarts it)."""
    try:
        return side.store.get_run(side.run_id)
    except DatabaseUnavailable:
        return None


def restart_every(server: PostgresServer, every: float, done: threading.Event,
                  restarts: list[float]) -> None:
    while not done.wait(every):
        began = time.monotonic()
        server.restart()
        restarts.append(time.monotonic() - began)


def kill_at_midpoint(side: Side, steps: int, checkpoint_interval: int, done: threading.Event,
                     timeout: float) -> dict:
    """SIGKILL the worker training the run halfway between the first checkpoint past its
    midpoint and the next (so the resumed attempt trains some steps again); then how long
    until it trained again under the other worker."""
    deadline = time.monotonic() + timeout
    target = -(-steps // 2 // checkpoint_interval) * checkpoint_interval + checkpoint_interval // 2
    while not done.is_set() and time.monotonic() < deadline:
        run = look(side)
        if run is not None and run.status in FINISHED:
            return {"killed": False}
        if run is not None and run.status == "running" and run.last_step >= target:
            break
        time.sleep(0.2)
    else:
        return {"killed": False}
    victim = side.workers[run.worker.removeprefix(f"{side.name}-")]
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    killed_at, killed_step = time.monotonic(), run.last_step
    while not done.is_set() and time.monotonic() < deadline:
        again = look(side)
        if again is not None and again.auto_resumes >= 1 and again.status == "running" and (
                again.attempts >= 2 and again.worker != run.worker):
            return {"killed": True, "killed_worker": run.worker, "killed_at_step": killed_step,
                    "resumed_by": again.worker, "resumed_after_s": round(
                        time.monotonic() - killed_at, 1)}
        time.sleep(0.2)
    return {"killed": True, "killed_worker": run.worker, "killed_at_step": killed_step,
            "resumed_by": None}


def wait_finished(side: Side, deadline: float) -> None:
    while time.monotonic() < deadline:
        run = look(side)
        if run is not None and run.status in FINISHED:
            return
        time.sleep(1)


def recorded(side: Side) -> dict:
    store, run_id = side.store, side.run_id
    run = store.get_run(run_id)
    metrics = store.metrics([run_id])
    rows = store.event_rows([run_id])
    events = [(e.kind, e.step) for e in rows if e.kind not in DISTURBANCE_EVENTS]
    tps = metrics[metrics["key"] == TOKENS_PER_SEC]
    losses = metrics[metrics["key"].isin([TRAIN_LOSS, VAL_LOSS])]
    log = side.log.read_text()
    return {
        "status": run.status, "attempts": run.attempts, "auto_resumes": run.auto_resumes,
        "error": run.error,
        "pairs": Counter(zip(metrics["key"], metrics["step"], strict=True)),
        "losses": dict(zip(zip(losses["key"], losses["step"], strict=True), losses["value"],
                           strict=True)),
        "samples": Counter(store.samples(run_id)["step"]),
        "events": Counter(events),
        "event_messages": [(e.kind, e.step, e.message) for e in rows],
        "outage_events": sum(e.kind == "outage" for e in rows),
        "resumed_from_step": [e.step for e in rows if e.kind == AUTO_RESUME_EVENT],
        "tokens_seen": run.tokens_seen,
        "tokens_per_sec": list(zip(tps["wall_time"], tps["value"], tps["step"], strict=True)),
        "trained_s": run.trained_s,
        "tracebacks": log.count("Traceback"),
        "outage_lines": log.count("database unreachable since"),
        "back_lines": log.count("database back after"),
    }


def duplicated(counts: Counter) -> int:
    return sum(n - 1 for n in counts.values() if n > 1)


def side_by_side(quiet: list, noisy: list, near: float = 5.0,
                 steps: range = range(2**31)) -> tuple[float, float]:
    """The median ``tokens_per_sec`` of each run over the intervals both trained in at once
    (a row of the other run within ``near`` seconds): a run that trained alone, while the
    other had ended or was waiting to resume, had the machine's cores less shared. Only the
    intervals that end in ``steps``."""
    def together(rows: list, other: list) -> float:
        times = [t for t, _, _ in other]
        both = [v for t, v, step in rows
                if step in steps and any(abs(t - u) <= near for u in times)]
        return statistics.median(both) if both else math.nan

    return together(quiet, noisy), together(noisy, quiet)


def per_trained_s(result: dict, steps: int, retrained: int) -> float | None:
    """Tokens per second of ``trained_s``, counting the steps the killed attempt trained past
    its last checkpoint (trained twice: trained_s holds both)."""
    if not result["trained_s"]:
        return None
    return result["tokens_seen"] * (steps + retrained) / steps / result["trained_s"]


def compare(quiet: dict, noisy: dict, steps: int, retrained: int) -> dict:
    lost = {k: n for k, n in ((k, quiet["pairs"][k] - noisy["pairs"][k]) for k in quiet["pairs"])
            if n > 0}
    extra = [k for k in noisy["pairs"] if k not in quiet["pairs"]]
    samples_lost = sum((quiet["samples"] - noisy["samples"]).values())
    events_lost = quiet["events"] - noisy["events"]
    # More copies of a (kind, step) than the undisturbed run has: a duplicate; a (kind, step)
    # it does not have at all: extra (the resumed attempt saw something else).
    samples_dup = sum((noisy["samples"] - quiet["samples"]).values())
    more = noisy["events"] - quiet["events"]
    events_dup = Counter({k: n for k, n in more.items() if k in quiet["events"]})
    events_extra = Counter({k: n for k, n in more.items() if k not in quiet["events"]})
    differ = set(events_lost) | set(more)
    a, b = side_by_side(quiet["tokens_per_sec"], noisy["tokens_per_sec"])
    # Before the kill and after the resume apart: is the resumed attempt slower?
    cut = noisy["resumed_from_step"][0] if noisy["resumed_from_step"] else steps // 2
    halves = [side_by_side(quiet["tokens_per_sec"], noisy["tokens_per_sec"], steps=part)
              for part in (range(cut + 1), range(cut + 1, steps + 1))]
    c, d = per_trained_s(quiet, steps, 0), per_trained_s(noisy, steps, retrained)
    return {
        "metric_rows": sum(quiet["pairs"].values()),
        "metric_rows_lost": sum(lost.values()), "metric_rows_extra": len(extra),
        "metric_rows_duplicated": duplicated(noisy["pairs"]),
        "samples_lost": samples_lost, "samples_duplicated": samples_dup,
        "events_lost": sum(events_lost.values()), "events_duplicated": sum(events_dup.values()),
        "events_extra": sum(events_extra.values()),
        "events_differing": sorted(m for r in (quiet, noisy) for m in r["event_messages"]
                                   if m[:2] in differ),
        "lost_examples": sorted(lost)[:5], "extra_examples": sorted(extra)[:5],
        # Not a target: whether the resumed attempt retraced the undisturbed run's losses.
        "losses_differing": sum(abs(v - noisy["losses"].get(k, float("nan"))) > 1e-6 * abs(v)
                                or k not in noisy["losses"] for k, v in quiet["losses"].items()),
        "not_completed": sum(r["status"] != "completed" for r in (quiet, noisy)),
        "tokens_per_sec_median": [round(a), round(b)],
        "tokens_per_sec_ratio": round(b / a, 3),
        "tokens_per_sec_ratio_before_after_resume": [round(y / x, 3) for x, y in halves],
        "tokens_per_trained_s": [round(c or 0), round(d or 0)], "retrained_steps": retrained,
        "tokens_per_trained_s_ratio": round(d / c, 3) if c and d else None,
    }


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def table(summary: dict) -> str:
    q, n = summary["undisturbed"], summary["disturbed"]
    rows = [
        ("final status", q["status"], n["status"]),
        ("attempts (automatic resumes)", f"{q['attempts']} ({q['auto_resumes']})",
         f"{n['attempts']} ({n['auto_resumes']})"),
        ("metric rows", summary["metric_rows"],
         f"{summary['metric_rows']} - {summary['metric_rows_lost']} lost"
         f" + {summary['metric_rows_extra']} extra"),
        ("rows duplicated (metrics / samples / events)", "0 / 0 / 0",
         f"{summary['metric_rows_duplicated']} / {summary['samples_duplicated']}"
         f" / {summary['events_duplicated']}"),
        ("samples / events lost", "-", f"{summary['samples_lost']} / {summary['events_lost']}"),
        ("events the undisturbed run has not", "-", summary["events_extra"]),
        ("loss values unlike the undisturbed run's (same seed)", "-",
         summary["losses_differing"]),
        ("tokens/s (median of the intervals both trained in at once)",
         summary["tokens_per_sec_median"][0],
         f"{summary['tokens_per_sec_median'][1]} ({summary['tokens_per_sec_ratio']}x)"),
        ("tokens per trained second", summary["tokens_per_trained_s"][0],
         f"{summary['tokens_per_trained_s'][1]} ({summary['tokens_per_trained_s_ratio']}x;"
         f" {summary['retrained_steps']} steps trained twice)"),
        ("PostgreSQL restarts (median s down) / kill -9", "-",
         f"{summary['restarts']} ({summary['restart_s_median']} s) / "
         f"{'1' if summary['killed'] else '0'}, resumed after {summary.get('resumed_after_s')} s"),
        ("'Traceback' in worker output", q["tracebacks"], n["tracebacks"]),
        ("outage lines: unreachable / back", f"{q['outage_lines']} / {q['back_lines']}",
         f"{n['outage_lines']} / {n['back_lines']}"),
    ]
    out = ["| | undisturbed | disturbed |", "|---|---|---|"]
    out += [f"| {a} | {b} | {c} |" for a, b, c in rows]
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000,
                        help="max_steps of the tiny run (2000: about 2.5 minutes side by side "
                             "on an idle 2-core box; several times that on a busy one)")
    parser.add_argument("--every", type=float, default=20.0,
                        help="seconds between PostgreSQL restarts")
    parser.add_argument("--checkpoint-interval", type=int, default=100)
    parser.add_argument("--timeout", type=float, default=1200.0,
                        help="seconds to wait for both runs to end")
    parser.add_argument("--report", type=Path,
                        default=Path(tempfile.gettempdir()) / "gptdash-fault-injection.md",
                        help="where the markdown table goes")
    parser.add_argument("--control", action="store_true",
                        help="disturb neither run: the tokens/s two identical runs side by side "
                             "differ by on this machine")
    parser.add_argument("--keep", action="store_true", help="keep the homes and worker logs")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="gptdash-faults-"))
    sides: list[Side] = []
    done = threading.Event()
    restarts: list[float] = []
    load_before = uptime()
    began = time.monotonic()
    try:
        quiet, noisy = open_side("undisturbed", root), None
        sides.append(quiet)
        noisy = open_side("disturbed", root)
        sides.append(noisy)
        for side in sides:
            start_workers(side)
        for side in sides:
            submit(side, args.steps, args.checkpoint_interval)
        deadline = time.monotonic() + args.timeout
        restarter = threading.Thread(target=restart_every, daemon=True,
                                     args=(noisy.server, args.every, done, restarts))
        kill = {"killed": False}
        if not args.control:
            restarter.start()
            kill = kill_at_midpoint(noisy, args.steps, args.checkpoint_interval, done,
                                    args.timeout)
        for side in sides:
            wait_finished(side, deadline)
        done.set()
        if restarter.is_alive():
            restarter.join(60)
        seconds = time.monotonic() - began
        for side in sides:
            for proc in side.workers.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in side.workers.values():
                proc.wait(60)
        results = {side.name: recorded(side) for side in sides}
        resumed_from = results["disturbed"]["resumed_from_step"]
        retrained = (kill["killed_at_step"] - resumed_from[0]
                     if kill["killed"] and resumed_from else 0)
        summary = compare(results["undisturbed"], results["disturbed"], args.steps, retrained)
        summary.update({
            "steps": args.steps, "control": args.control, "restart_every_s": args.every,
            "restarts": len(restarts),
            "restart_s_median": round(statistics.median(restarts), 2) if restarts else None,
            **kill, "seconds": round(seconds, 1), "load_before": load_before,
            "load_after": uptime(), "logs": str(root) if args.keep else None,
        })
        for name, result in results.items():
            summary[name] = {k: v for k, v in result.items()
                             if k not in ("pairs", "losses", "samples", "events",
                                          "event_messages", "tokens_per_sec")}
    finally:
        done.set()
        for side in sides:
            for proc in side.workers.values():
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            side.store.close()
            side.server.stop()
        if not args.keep:
            subprocess.run(["rm", "-rf", str(root)], check=False)
    print(json.dumps(summary, default=str))
    args.report.write_text(table(summary))
    print(table(summary))
    failed = (summary["metric_rows_lost"] or summary["metric_rows_duplicated"]
              or summary["samples_duplicated"] or summary["events_duplicated"]
              or summary["not_completed"] or summary["undisturbed"]["tracebacks"]
              or summary["disturbed"]["tracebacks"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
