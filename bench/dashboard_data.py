"""How fast the pages' data paths are on big databases (SQLite, a temporary home).

    python bench/dashboard_data.py            # all cases, one JSON line each

- compare: 10 runs x 100,000 steps of one metric -> downsampled query -> x axis ->
  Plotly figure -> JSON (what st.plotly_chart sends), as the Compare page does.
- runs_page: 500 runs -> the Runs table frame, as the Runs page does.
- one_run_1m: 1,000,000 rows of one run -> a chart-ready downsampled frame.
- live_tick: one Live-page refresh on a 1M-row run: only rows newer than the cursor.
Each figure is the median of ``--repeat`` timings after one untimed warm-up.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from storage.store import RunStore  # noqa: E402
from ui.figures import metric_figure, x_axis_frame  # noqa: E402


def fill(store: RunStore, run_id: int, steps: int, keys=("train/loss",), seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    t0 = time.time()
    for key in keys:
        values = 5 * np.exp(-np.arange(steps) / (steps / 5)) + rng.normal(0, 0.05, steps) + 1.5
        values[rng.integers(0, steps)] += 10  # one spike that downsampling must keep
        for lo in range(0, steps, 100_000):
            hi = min(steps, lo + 100_000)
            store.log_metrics(run_id, [(key, int(s), float(values[s]), t0 + s * 0.01)
                                       for s in range(lo, hi)])


def timed(fn, repeat: int) -> tuple[float, object]:
    fn()  # warm-up: first-touch of pages and caches
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--compare-runs", type=int, default=10)
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--runs-page", type=int, default=500)
    args = p.parse_args()
    home = Path(tempfile.mkdtemp(prefix="gptdash-bench-"))
    os.environ["GPTDASH_HOME"] = str(home)
    store = RunStore()

    build = time.perf_counter()
    ids = [store.create_run(f"run {i}", {"lr": 1e-3 * (i + 1)}, status="completed")
           for i in range(args.compare_runs)]
    for i, run_id in enumerate(ids):
        fill(store, run_id, args.steps, seed=i)
    big = store.create_run("one million", {}, status="running")
    fill(store, big, 1_000_000, seed=99)
    for i in range(args.runs_page - len(ids) - 1):
        store.create_run(f"listed {i}", {"lr": 1e-3}, tags=["sweep", f"t{i % 7}"],
                         status="completed", max_steps=1000)
    build_s = time.perf_counter() - build

    names = {i: f"run {i}" for i in ids}

    def compare():
        frame = store.metrics_downsampled(ids, "train/loss", buckets=1000)
        frame = x_axis_frame(frame, "step")
        fig = metric_figure(frame, title="train/loss", names=names, x="x", smoothing=0.6)
        return len(frame), len(fig.to_json())

    seconds, (points, json_bytes) = timed(compare, args.repeat)
    print(json.dumps({"case": "compare", "runs": len(ids), "steps_per_run": args.steps,
                      "rows_in_db": len(ids) * args.steps, "points_plotted": points,
                      "figure_json_kb": round(json_bytes / 1024), "seconds": round(seconds, 3)}))

    seconds, frame = timed(lambda: store.runs_frame(), args.repeat)
    print(json.dumps({"case": "runs_page", "runs": len(frame), "seconds": round(seconds, 4)}))

    seconds, frame = timed(lambda: store.metrics_downsampled([big], "train/loss",
                                                             buckets=2000), args.repeat)
    spike = float(frame["value"].max())
    print(json.dumps({"case": "one_run_1m", "rows_in_db": 1_000_000, "points": len(frame),
                      "spike_kept": spike > 10, "seconds": round(seconds, 3)}))

    cursor = 999_950
    seconds, frame = timed(lambda: store.metrics([big], ["train/loss"], after_step=cursor),
                           args.repeat)
    print(json.dumps({"case": "live_tick", "rows_in_db": 1_000_000, "new_rows": len(frame),
                      "seconds": round(seconds, 4)}))
    print(json.dumps({"case": "setup", "seconds_to_build_db": round(build_s, 1),
                      "db_mb": round((home / "gptdash.db").stat().st_size / 2**20, 1)}))


if __name__ == "__main__":
    main()
