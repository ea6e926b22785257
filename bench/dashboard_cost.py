"""What Live-page tabs cost a training run in the dashboard's own process, side by side.

    python bench/dashboard_cost.py --preset tiny --tabs 0,1,3 --rounds 3 --phase-seconds 20

The server (`streamlit run app.py`, the way the browser tests start it) is pinned to
core 0 with `taskset -c 0` and trains one long run in its worker thread with one torch
thread, so the dashboard's Python competes with training for that core and the GIL,
as it does beside a GPU. Headless chromium is pinned to core 1, so the browser's
drawing costs the run nothing: what is lost is the server's share alone.

Phases alternate between 0, 1 and 3 Live tabs (the order rotates every round). Each
phase opens its tabs, lets them render, then measures for ``--phase-seconds``:
the median of the run's own ``tokens_per_sec`` metrics written in that window, and
the server's CPU time outside the training thread (what the tabs added, per tab and
refresh period and per script run). Prints one JSON line per phase and a JSON
summary (median and min-max spread per tab count); ``--markdown`` also prints the
summary as a table for bench/RESULTS.md.

The server inherits this environment, so Streamlit options can be compared side by
side: ``STREAMLIT_RUNNER_POST_SCRIPT_GC=false`` turns off the full garbage collection
Streamlit forces after every script run (150-200 ms with torch and plotly loaded,
most of a refresh's cost).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gptcore.config import apply_overrides, preset  # noqa: E402
from jobs import runner  # noqa: E402
from storage.store import RunStore  # noqa: E402
from tests.browser_support import (  # noqa: E402
    launch_chromium,
    new_context,
    streamlit_process,
    wait_rendered,
)
from ui.live import LIVE_REFRESH_S  # noqa: E402

SERVER_CORE, BROWSER_CORE = 0, 1
WARMUP_STEPS = 200  # past torch's first slow steps before anything is measured
SETTLE_S = 3.0  # after the tabs' first render, before the window opens


@dataclass
class Phase:
    """One measured window: how many tabs were open and what the run and server did."""

    tabs: int
    start: float
    end: float
    tokens_per_sec: float = float("nan")
    samples: int = 0
    other_cpu_s: float = 0.0  # server CPU outside the training thread
    script_runs: int = 0  # full and fragment reruns the tabs saw start

    def as_dict(self) -> dict[str, float | int]:
        seconds = self.end - self.start
        return {"tabs": self.tabs, "seconds": round(seconds, 1),
                "tokens_per_sec": round(self.tokens_per_sec, 1), "samples": self.samples,
                "other_cpu_ms_per_s": round(1000 * self.other_cpu_s / seconds, 1),
                "script_runs": self.script_runs}


def _cpu_ticks(stat_path: Path) -> int:
    """utime + stime of a /proc stat file, in clock ticks."""
    fields = stat_path.read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def cpu_snapshot(pid: int) -> tuple[int, dict[str, int]]:
    """The process's CPU ticks (exited threads included) and each live thread's."""
    threads = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            threads[task.name] = _cpu_ticks(task / "stat")
        except (FileNotFoundError, ProcessLookupError):
            continue  # a thread that ended while we looked
    return _cpu_ticks(Path(f"/proc/{pid}/stat")), threads


def other_cpu_seconds(before: tuple[int, dict[str, int]],
                      after: tuple[int, dict[str, int]]) -> float:
    """CPU seconds the process spent outside its busiest thread (the trainer) in between."""
    total = after[0] - before[0]
    busiest = max((ticks - before[1].get(tid, 0) for tid, ticks in after[1].items()), default=0)
    return (total - busiest) / os.sysconf("SC_CLK_TCK")


def queue_long_run(store: RunStore, preset_name: str) -> int:
    """A run that outlasts the benchmark; evaluations and samples as a watched run has them."""
    cfg = apply_overrides(preset(preset_name), {
        "max_steps": 10_000_000, "eval_interval": 500, "checkpoint_interval": 10_000_000,
        "device": "cpu"})
    return runner.create_run(store, cfg, name="dashboard cost")


def wait_for_step(store: RunStore, run_id: int, step: int, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while store.get_run(run_id).last_step < step:
        if time.monotonic() > deadline:
            raise RuntimeError(f"run {run_id} did not reach step {step}: is the worker running?")
        time.sleep(0.5)


def phase_order(tabs: list[int], round_index: int) -> list[int]:
    """The tab counts of one round, rotated so no count always follows the same one."""
    shift = round_index % len(tabs)
    return tabs[shift:] + tabs[:shift]


def measure(browser, url: str, pid: int, tabs: int, seconds: float) -> Phase:
    """Open ``tabs`` Live pages, each its own session, and measure one window."""
    contexts = [new_context(browser) for _ in range(tabs)]
    try:
        pages = [context.new_page() for context in contexts]
        for page in pages:
            page.goto(f"{url}/live")
            wait_rendered(page)
        time.sleep(SETTLE_S)
        runs_before = sum(page.evaluate("window.__gptdashRuns") for page in pages)
        cpu_before, start = cpu_snapshot(pid), time.time()
        time.sleep(seconds)
        cpu_after, end = cpu_snapshot(pid), time.time()
        runs = sum(page.evaluate("window.__gptdashRuns") for page in pages) - runs_before
    finally:
        for context in contexts:
            context.close()
    return Phase(tabs, start, end, other_cpu_s=other_cpu_seconds(cpu_before, cpu_after),
                 script_runs=runs)


def summarise(phases: list[Phase]) -> list[dict[str, float | int]]:
    """Per tab count: median tokens/s, its spread, the loss against no tab, server CPU."""
    by_tabs: dict[int, list[Phase]] = {}
    for phase in phases:
        by_tabs.setdefault(phase.tabs, []).append(phase)
    none = by_tabs.get(0, [])
    base = statistics.median(p.tokens_per_sec for p in none) if none else float("nan")
    base_cpu = statistics.median(p.other_cpu_s / (p.end - p.start) for p in none) if none else 0.0
    rows = []
    for tabs, group in sorted(by_tabs.items()):
        tps = [p.tokens_per_sec for p in group]
        cpu = statistics.median(p.other_cpu_s / (p.end - p.start) for p in group)
        runs_per_s = statistics.median(p.script_runs / (p.end - p.start) for p in group)
        row = {"tabs": tabs, "tokens_per_sec_median": round(statistics.median(tps), 1),
               "tokens_per_sec_min": round(min(tps), 1), "tokens_per_sec_max": round(max(tps), 1),
               "lost_vs_no_tab": round(1 - statistics.median(tps) / base, 4),
               "other_cpu_ms_per_s": round(1000 * cpu, 1),
               "script_runs_per_s": round(runs_per_s, 2)}
        if tabs:
            # Server CPU the tabs added: per tab and Live refresh period, and shared out over
            # the script runs they caused (fewer than due when the server falls behind).
            row["server_ms_per_tab_refresh"] = round(1000 * (cpu - base_cpu) / tabs
                                                     * LIVE_REFRESH_S, 1)
            if runs_per_s:
                row["server_ms_per_script_run"] = round(1000 * (cpu - base_cpu) / runs_per_s, 1)
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, float | int]]) -> str:
    lines = ["| Live tabs | tokens/s (median) | spread (min-max) | lost vs no tab "
             f"| server CPU outside training | per tab and {LIVE_REFRESH_S:g} s refresh "
             "| per script run |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        per_tab = r.get("server_ms_per_tab_refresh")
        per_run = r.get("server_ms_per_script_run")
        lines.append(
            f"| {r['tabs']} | {r['tokens_per_sec_median']:,.0f} "
            f"| {r['tokens_per_sec_min']:,.0f}-{r['tokens_per_sec_max']:,.0f} "
            f"| {100 * r['lost_vs_no_tab']:.1f}% | {r['other_cpu_ms_per_s']:.0f} ms/s "
            f"| {'' if per_tab is None else f'{per_tab:.0f} ms'} "
            f"| {'' if per_run is None else f'{per_run:.0f} ms'} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--tabs", default="0,1,3", help="comma-separated Live tab counts")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--phase-seconds", type=float, default=20)
    p.add_argument("--markdown", action="store_true", help="also print a table for RESULTS.md")
    args = p.parse_args()
    tabs = [int(t) for t in args.tabs.split(",")]
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("needs two cores: one for the server, one for the browser")

    home = Path(tempfile.mkdtemp(prefix="gptdash-cost-"))
    os.environ["GPTDASH_HOME"] = str(home)
    os.environ.pop("GPTDASH_DB_URL", None)
    store = RunStore()
    run_id = queue_long_run(store, args.preset)
    # This process and the browser it launches (children inherit it) stay off the server's core.
    os.sched_setaffinity(0, {BROWSER_CORE})
    from playwright.sync_api import sync_playwright

    phases: list[Phase] = []
    with streamlit_process(home, home / "server.log",
                           prefix=["taskset", "-c", str(SERVER_CORE)]) as (server, url), \
            sync_playwright() as pw:
        browser = launch_chromium(pw)
        # `streamlit run` starts the worker on the first page view: open one, then close it.
        first = browser.new_page()
        first.goto(url)
        wait_rendered(first)
        first.close()
        wait_for_step(store, run_id, WARMUP_STEPS)
        for round_index in range(args.rounds):
            for n in phase_order(tabs, round_index):
                phases.append(measure(browser, url, server.pid, n, args.phase_seconds))
        browser.close()
    tps = store.metrics([run_id], ["tokens_per_sec"])
    store.close()

    for phase in phases:
        rows = tps[(tps["wall_time"] >= phase.start) & (tps["wall_time"] < phase.end)]["value"]
        phase.tokens_per_sec = float(rows.median()) if len(rows) else float("nan")
        phase.samples = len(rows)
        print(json.dumps({"phase": phase.as_dict()}))
    rows = summarise(phases)
    print(json.dumps({"preset": args.preset, "rounds": args.rounds,
                      "phase_seconds": args.phase_seconds, "server_core": SERVER_CORE,
                      "browser_core": BROWSER_CORE, "summary": rows}))
    if args.markdown:
        print(markdown(rows))


if __name__ == "__main__":
    main()
