"""How close is the duration estimate (New run, Sweeps, `gptdash sweep`) to the real time?

    .venv/bin/python bench/estimate_accuracy.py                       # tiny (+ small), 2-4 min
    .venv/bin/python bench/estimate_accuracy.py --presets tiny,small,gpt2-124m
    .venv/bin/python bench/estimate_accuracy.py --tiny-seconds 40

In a temporary home folder it first trains a short calibration run (the tiny preset, 60
steps) with `gptdash train`, so the database holds a finished run to measure this
machine's pace from, as the pages do (``jobs.sweeps.measured_pace``). Then, for each
preset, it estimates a run with ``gptcore.estimate.duration_estimate`` at that pace,
trains it with `gptdash train --quiet` on the CPU, and compares:

- the run's own time (claimed to finished, ``started_at`` to ``finished_at``), which is
  what the estimate models: steps, evaluations with their samples, checkpoint saves and
  start-up (data load, model build);
- the whole `gptdash train` process (interpreter and torch import included).

The tiny run gets as many steps as the estimate says take about ``--tiny-seconds``;
``small`` and ``gpt2-124m`` train a few steps with few evaluation batches, and are skipped
when their estimate passes ``--max-seconds``. One JSON line per run, then a table. The
target is within 25% on an idle machine; the machine's load average is printed with it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gptcore.config import apply_overrides, preset  # noqa: E402
from gptcore.estimate import duration_estimate  # noqa: E402
from jobs.sweeps import measured_pace  # noqa: E402
from storage.store import RunStore  # noqa: E402

CALIBRATION = {"max_steps": 60, "eval_interval": 20, "checkpoint_interval": 200}
# A few steps of the bigger presets, with evaluations cut down to fit a CPU.
FEW_STEPS = {
    "small": {"max_steps": 4, "eval_interval": 2, "eval_iters": 2, "sample_tokens": 20,
              "warmup_steps": 1, "checkpoint_interval": 1000},
    "gpt2-124m": {"max_steps": 2, "eval_interval": 2, "eval_iters": 1, "sample_tokens": 8,
                  "warmup_steps": 1, "checkpoint_interval": 1000},
}


def gptdash_train(home: Path, name: str, overrides: dict) -> float:
    """Train ``name`` with these overrides on the CPU; the process's wall seconds."""
    sets = [a for k, v in {**overrides, "device": "cpu"}.items() for a in ("--set", f"{k}={v}")]
    env = {**os.environ, "GPTDASH_HOME": str(home)}
    env.pop("GPTDASH_DB_URL", None)
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "jobs", "train", "--preset", name, *sets,
                          "--quiet"], cwd=ROOT, env=env, capture_output=True, text=True)
    took = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"gptdash train --preset {name} failed: {out.stderr.strip()}")
    return took


def tiny_steps(store: RunStore, seconds: float) -> int:
    """Steps of the tiny preset that the estimate puts at about ``seconds``."""
    pace = measured_pace(store)
    base = preset("tiny")
    per_400 = duration_estimate(apply_overrides(base, {"max_steps": 400}), pace)
    fixed = per_400.startup_s
    steps = 400 * (seconds - fixed) / (per_400.total_s - fixed)
    return max(50, int(round(steps / 50)) * 50)


def measure(home: Path, store: RunStore, name: str, overrides: dict) -> dict:
    cfg = apply_overrides(preset(name), {**overrides, "device": "cpu"})
    pace = measured_pace(store)
    est = duration_estimate(cfg, pace)
    process_s = gptdash_train(home, name, overrides)
    run = store.list_runs(limit=1)[0]
    run_s = (run.finished_at - run.started_at).total_seconds()
    return {"preset": name, "max_steps": cfg.max_steps, "eval_interval": cfg.eval_interval,
            "eval_iters": cfg.eval_iters, "sample_tokens": cfg.sample_tokens,
            "estimate_s": round(est.total_s, 1),
            "parts_s": {"train": round(est.train_s, 1), "eval": round(est.eval_s, 1),
                        "checkpoint": round(est.checkpoint_s, 2),
                        "startup": round(est.startup_s, 1)},
            "run_s": round(run_s, 1), "process_s": round(process_s, 1),
            "error_vs_run": round(est.total_s / run_s - 1, 3),
            "error_vs_process": round(est.total_s / process_s - 1, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,small",
                        help="comma-separated: tiny, small, gpt2-124m")
    parser.add_argument("--tiny-seconds", type=float, default=40.0)
    parser.add_argument("--max-seconds", type=float, default=150.0,
                        help="skip a preset whose estimate is longer")
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs",
          file=sys.stderr)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        gptdash_train(home, "tiny", CALIBRATION)
        store = RunStore(f"sqlite:///{home / 'gptdash.db'}")
        for name in args.presets.split(","):
            if name == "tiny":
                overrides = {"max_steps": tiny_steps(store, args.tiny_seconds)}
            else:
                overrides = FEW_STEPS[name]
                cfg = apply_overrides(preset(name), {**overrides, "device": "cpu"})
                est = duration_estimate(cfg, measured_pace(store)).total_s
                if est > args.max_seconds:
                    print(json.dumps({"preset": name, "skipped": f"estimate {est:.0f} s > "
                                      f"--max-seconds {args.max_seconds:.0f}"}))
                    continue
            row = measure(home, store, name, overrides)
            print(json.dumps(row), flush=True)
            rows.append(row)
        store.close()
    print(f"load average after: {os.getloadavg()[0]:.2f}", file=sys.stderr)
    print("\n| preset | steps | estimate | run (claim to end) | error | whole process | error |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['max_steps']} | {r['estimate_s']:.1f} s | {r['run_s']:.1f} s "
              f"| {r['error_vs_run']:+.0%} | {r['process_s']:.1f} s | "
              f"{r['error_vs_process']:+.0%} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
