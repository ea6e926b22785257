"""How close is the Live page's ETA to the time a run really had left?

    .venv/bin/python bench/eta_accuracy.py              # three tiny CPU runs, about 2 min
    .venv/bin/python bench/eta_accuracy.py --runs 1
    .venv/bin/python bench/eta_accuracy.py --replay ~/.gptdash/gptdash.db

In a temporary home folder it trains tiny runs with `gptdash train --quiet` on the CPU and
meanwhile reads the database as the Live page does, every 0.2 s. When a run's last step
passes 25%, 50% and 75% of max_steps it takes the ETA the page would show then
(``ui.eta.run_eta``), and, for comparison, the ETA the page showed before (the median
``step_time_ms`` times the steps to go, plus the evaluations to go at their median
``eval_time_ms``). Once the run has ended, each is compared with the time it really had
left (its ``finished_at`` less the moment of the reading). The target: within ±20% from
25% of the run on. One JSON line per reading, then a table; the load average is printed
with it (a busy machine's pace changes under any ETA).

``--replay DB`` trains nothing: for each completed run in that database it reads the ETA
from the rows the run had written by the report at 25%, 50% and 75% (what the page read
then, less the second the writer may lag), against its ``finished_at``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gptcore.metric_keys import EVAL_TIME_MS, STEP_TIME_MS  # noqa: E402
from storage.store import RunRecord, RunStore  # noqa: E402
from ui.eta import eta_seconds, evals_between, run_eta  # noqa: E402

FRACTIONS = (0.25, 0.5, 0.75)
# The tiny preset as shipped, evaluating more often, and saving more often.
RUNS = [{"max_steps": 400}, {"max_steps": 400, "eval_interval": 20},
        {"max_steps": 600, "checkpoint_interval": 100}]


def step_time_eta(rows, run: RunRecord, step: int) -> float | None:
    """The ETA the page showed before, from these step_time_ms and eval_time_ms rows: the
    median step time and the median evaluation time."""
    steps = rows[rows["key"] == STEP_TIME_MS].sort_values("step")["value"].tail(20)
    evals = rows[rows["key"] == EVAL_TIME_MS].sort_values("step")["value"].tail(20)
    if steps.empty:
        return None
    every = int(run.config.get("eval_interval") or 0)
    left = evals_between(step, run.max_steps, run.max_steps, every)
    return ((run.max_steps - step) * statistics.median(steps) / 1000
            + left * (statistics.median(evals) / 1000 if not evals.empty else 0.0))


def _error(eta: float | None, actual: float) -> float | None:
    return round(eta / actual - 1, 3) if eta is not None else None


def watch(home: Path, overrides: dict) -> list[dict]:
    """Train one run, reading its ETA at each fraction of it; the readings."""
    sets = [a for k, v in {**overrides, "device": "cpu"}.items() for a in ("--set", f"{k}={v}")]
    env = {**os.environ, "GPTDASH_HOME": str(home)}
    env.pop("GPTDASH_DB_URL", None)
    store = RunStore(f"sqlite:///{home / 'gptdash.db'}")
    known = {r.id for r in store.list_runs()}
    proc = subprocess.Popen([sys.executable, "-m", "jobs", "train", "--preset", "tiny", *sets,
                             "--quiet"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    readings, todo, run_id = [], list(FRACTIONS), None
    while proc.poll() is None:
        time.sleep(0.2)
        if run_id is None:
            new = [r.id for r in store.list_runs() if r.id not in known]
            run_id = new[0] if new else None
            continue
        run = store.get_run(run_id)
        if todo and run.max_steps and run.last_step >= todo[0] * run.max_steps:
            now = time.time()
            timings = store.metrics([run.id], [STEP_TIME_MS, EVAL_TIME_MS])
            readings.append({"fraction": todo.pop(0), "step": run.last_step, "at": now,
                             "eta_s": run_eta(store, run, now),
                             "step_time_eta_s": step_time_eta(timings, run, run.last_step)})
    if proc.returncode != 0:
        raise SystemExit(f"gptdash train failed: {proc.stderr.read().strip()}")
    run = store.get_run(run_id)
    store.close()
    end = run.finished_at.timestamp()
    for r in readings:
        r["actual_s"] = end - r.pop("at")
        r["error"] = _error(r["eta_s"], r["actual_s"])
        r["step_time_error"] = _error(r["step_time_eta_s"], r["actual_s"])
        r.update(run=run_id, **overrides, actual_s=round(r["actual_s"], 1),
                 eta_s=r["eta_s"] and round(r["eta_s"], 1),
                 step_time_eta_s=r["step_time_eta_s"] and round(r["step_time_eta_s"], 1))
    return readings


def replay(db: Path) -> list[dict]:
    """Readings of the ETA at each fraction of the completed runs in ``db``, from the rows
    they had written by then."""
    store = RunStore(f"sqlite:///{db}")
    readings = []
    for run in store.list_runs(status="completed"):
        rows = store.metrics([run.id], [STEP_TIME_MS, EVAL_TIME_MS])
        steps = rows[rows["key"] == STEP_TIME_MS].sort_values("step")
        for fraction in FRACTIONS:
            at = steps[steps["step"] >= fraction * run.max_steps]
            if at.empty:
                continue
            step, now = int(at["step"].iloc[0]), float(at["wall_time"].iloc[0])
            seen = rows[rows["wall_time"] <= now]
            eta = eta_seconds(seen[seen["key"] == STEP_TIME_MS], seen[seen["key"] == EVAL_TIME_MS],
                              max_steps=run.max_steps, now=now,
                              eval_interval=int(run.config.get("eval_interval") or 0),
                              checkpoint_interval=int(run.config.get("checkpoint_interval") or 0))
            before = step_time_eta(seen, run, step)
            actual = run.finished_at.timestamp() - now
            readings.append({"run": run.id, "max_steps": run.max_steps, "fraction": fraction,
                             "step": step, "eta_s": eta and round(eta, 1),
                             "actual_s": round(actual, 1), "error": _error(eta, actual),
                             "step_time_eta_s": before and round(before, 1),
                             "step_time_error": _error(before, actual)})
    store.close()
    return readings


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=len(RUNS), help=f"at most {len(RUNS)}")
    parser.add_argument("--replay", type=Path, help="a gptdash.db whose completed runs to read")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs",
          file=sys.stderr)
    rows = []
    if args.replay:
        rows = replay(args.replay)
        for reading in rows:
            print(json.dumps(reading))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            for overrides in RUNS[: args.runs]:
                for reading in watch(Path(tmp), overrides):
                    print(json.dumps(reading), flush=True)
                    rows.append(reading)
    print(f"load average after: {os.getloadavg()[0]:.2f}", file=sys.stderr)
    print("\n| run | at | step | ETA | actual left | error | step-time ETA (before) | error |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        def pct(x):
            return f"{x:+.0%}" if x is not None else "—"
        print(f"| {r['run']} | {r['fraction']:.0%} | {r['step']} | {r['eta_s']} s | "
              f"{r['actual_s']} s | {pct(r['error'])} | {r['step_time_eta_s']} s | "
              f"{pct(r['step_time_error'])} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
