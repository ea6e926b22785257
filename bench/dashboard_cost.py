"""What Live-page tabs cost a training run, now that it trains in a process of its own.

    python bench/dashboard_cost.py --preset tiny --tabs 0,1,3 --rounds 3 --phase-seconds 20
    python bench/dashboard_cost.py --unpinned    # gptdash serve as a user starts it

Pinned (the default): the training worker (`gptdash worker`, one torch thread) on core 0,
the pages' Streamlit server and headless chromium on core 1, so what a tab costs the run
is only what reaches it through the database and the machine. ``--unpinned`` starts
`gptdash serve` (the supervisor, its worker with one torch thread, and the server) and
lets the kernel place everything, browser included, on the machine's cores.

First the latency from pressing Start on the New run page to the run's first training
step (the worker polls the queue; the first step includes torch's start-up in the run).
Then one long run trains, and phases alternate between 0, 1 and 3 Live tabs (the order
rotates every round). Each phase opens its tabs, lets them render, then measures for
``--phase-seconds``: the median of the run's own ``tokens_per_sec`` metrics written in
that window, and the pages' server's CPU time. Prints one JSON line per phase and a JSON
summary (median and min-max spread per tab count); ``--markdown`` also prints the
summary as a table for bench/RESULTS.md.
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
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gptcore.config import apply_overrides, preset  # noqa: E402
from jobs import actions  # noqa: E402
from storage.status import RunStatus  # noqa: E402
from storage.store import RunStore  # noqa: E402
from tests.browser_support import (  # noqa: E402
    CHROMIUM,
    CHROMIUM_ARGS,
    free_port,
    launch_chromium,
    new_context,
    rerun,
    streamlit_process,
    wait_rendered,
)
from ui.live import LIVE_REFRESH_S  # noqa: E402

WORKER_CORE, PAGES_CORE = 0, 1
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
    other_cpu_s: float = 0.0  # the pages' server's CPU time
    worker_core_busy: float = 0.0  # the share of the worker's core others took (pinned)
    script_runs: int = 0  # full and fragment reruns the tabs saw start

    def as_dict(self) -> dict[str, float | int]:
        seconds = self.end - self.start
        return {"tabs": self.tabs, "seconds": round(seconds, 1),
                "tokens_per_sec": round(self.tokens_per_sec, 1), "samples": self.samples,
                "other_cpu_ms_per_s": round(1000 * self.other_cpu_s / seconds, 1),
                "script_runs": self.script_runs,
                "others_on_worker_core": round(self.worker_core_busy, 3)}


def cpu_ticks(pid: int) -> int:
    """utime + stime of a process, in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return int(fields[11]) + int(fields[12])


def queue_long_run(store: RunStore, preset_name: str) -> int:
    """A run that outlasts the benchmark; evaluations and samples as a watched run has them."""
    cfg = apply_overrides(preset(preset_name), {
        "max_steps": 10_000_000, "eval_interval": 500, "checkpoint_interval": 10_000_000,
        "device": "cpu"})
    return actions.submit(store, cfg, name="dashboard cost")


def start_latency(browser, url: str, store: RunStore) -> dict[str, float]:
    """Press Start on the New run page (its default config) and time the run's way to its
    first training step; then cancel it. Seconds from the click to the claim and to the
    first metric row."""
    page = new_context(browser).new_page()
    page.goto(url)
    wait_rendered(page)
    clicked = time.time()
    rerun(page, lambda: page.get_by_role("button", name="Start training").click())
    [run] = store.list_runs()
    while (first := store.metrics([run.id], ["train/loss"])).empty:
        if time.time() - clicked > 300:
            raise RuntimeError("the run from the New run page never trained a step")
        time.sleep(0.05)
    claimed = store.get_run(run.id).started_at.timestamp()
    actions.stop(store, run.id)
    while store.get_run(run.id).status == RunStatus.RUNNING:
        time.sleep(0.2)
    page.context.close()
    return {"click_to_claim_s": round(claimed - clicked, 2),
            "click_to_first_step_s": round(float(first["wall_time"].min()) - clicked, 2)}


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


def core_busy_ticks(core: int) -> int:
    """Busy clock ticks of one CPU core since boot (/proc/stat: all but idle and iowait)."""
    for line in Path("/proc/stat").read_text().splitlines():
        if line.startswith(f"cpu{core} "):
            ticks = [int(v) for v in line.split()[1:]]
            return sum(ticks) - ticks[3] - ticks[4]
    raise RuntimeError(f"no cpu{core} in /proc/stat")


BUSY = -1  # a control phase: no tab, a plain busy loop on the pages' core instead


@contextmanager
def busy_loop(core: int) -> Iterator[None]:
    """A Python busy loop pinned to ``core``: any work at all on the pages' core, to tell
    what the dashboard costs from what merely using the machine's other core costs."""
    proc = subprocess.Popen(["taskset", "-c", str(core), sys.executable, "-c",
                             "while True: pass"])
    try:
        yield
    finally:
        proc.kill()
        proc.wait()


def measure(browser, url: str, pid: int, worker: int, tabs: int, seconds: float) -> Phase:
    """Open ``tabs`` Live pages, each its own session, and measure one window (``BUSY``: no
    tab, a busy loop on the pages' core)."""
    if tabs == BUSY:
        with busy_loop(PAGES_CORE):
            phase = measure(browser, url, pid, worker, 0, seconds)
        phase.tabs = BUSY
        return phase
    contexts = [new_context(browser) for _ in range(tabs)]
    try:
        pages = [context.new_page() for context in contexts]
        for page in pages:
            page.goto(f"{url}/live")
            wait_rendered(page)
        time.sleep(SETTLE_S)
        runs_before = sum(page.evaluate("window.__gptdashRuns") for page in pages)
        core_before, worker_before = core_busy_ticks(WORKER_CORE), cpu_ticks(worker)
        cpu_before, start = cpu_ticks(pid), time.time()
        time.sleep(seconds)
        cpu_after, end = cpu_ticks(pid), time.time()
        others = (core_busy_ticks(WORKER_CORE) - core_before) - (cpu_ticks(worker) - worker_before)
        runs = sum(page.evaluate("window.__gptdashRuns") for page in pages) - runs_before
    finally:
        for context in contexts:
            context.close()
    hz = os.sysconf("SC_CLK_TCK")
    return Phase(tabs, start, end, other_cpu_s=(cpu_after - cpu_before) / hz,
                 script_runs=runs, worker_core_busy=max(0, others) / hz / (end - start))


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
               "script_runs_per_s": round(runs_per_s, 2),
               "others_on_worker_core": round(
                   statistics.median(p.worker_core_busy for p in group), 3)}
        if tabs > 0:
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
             f"| pages' server CPU | per tab and {LIVE_REFRESH_S:g} s refresh "
             "| per script run | others on the worker's core |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        per_tab = r.get("server_ms_per_tab_refresh")
        per_run = r.get("server_ms_per_script_run")
        label = "busy loop, no tab" if r["tabs"] == BUSY else r["tabs"]
        lines.append(
            f"| {label} | {r['tokens_per_sec_median']:,.0f} "
            f"| {r['tokens_per_sec_min']:,.0f}-{r['tokens_per_sec_max']:,.0f} "
            f"| {100 * r['lost_vs_no_tab']:.1f}% | {r['other_cpu_ms_per_s']:.0f} ms/s "
            f"| {'' if per_tab is None else f'{per_tab:.0f} ms'} "
            f"| {'' if per_run is None else f'{per_run:.0f} ms'} "
            f"| {100 * r['others_on_worker_core']:.1f}% |")
    return "\n".join(lines)


def _children(pid: int) -> dict[int, str]:
    """Child processes of ``pid`` with their command lines."""
    found = {}
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and int(
                    (proc / "stat").read_text().rpartition(")")[2].split()[1]) == pid:
                found[int(proc.name)] = (proc / "cmdline").read_bytes().decode(errors="replace")
        except (OSError, ValueError):
            continue
    return found


@contextmanager
def pinned_dashboard(home: Path) -> Iterator[tuple[int, int, str]]:
    """The worker on WORKER_CORE, the pages' server on PAGES_CORE (what `gptdash serve`
    starts, placed by hand); yields the server's pid and URL."""
    env = {**os.environ, "GPTDASH_HOME": str(home), "OMP_NUM_THREADS": "1"}
    port = free_port()
    with open(home / "worker.log", "w") as wlog, open(home / "server.log", "w") as slog:
        worker = subprocess.Popen(["taskset", "-c", str(WORKER_CORE), sys.executable, "-m",
                                   "jobs", "worker"], cwd=ROOT, env=env, stdout=wlog,
                                  stderr=subprocess.STDOUT)
        server = subprocess.Popen(["taskset", "-c", str(PAGES_CORE), sys.executable, "-m",
                                   "streamlit", "run", "app.py", "--server.address",
                                   "127.0.0.1", "--server.port", str(port)],
                                  cwd=ROOT, env=env, stdout=slog, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError((home / "server.log").read_text()[-2000:]) from None
                time.sleep(0.25)
        yield server.pid, worker.pid, url
    finally:
        for proc in (worker, server):
            proc.terminate()
        for proc in (worker, server):
            proc.wait(60)


@contextmanager
def served_dashboard(home: Path) -> Iterator[tuple[int, int, str]]:
    """`gptdash serve` as a user starts it, unpinned; yields its server's pid and URL."""
    with streamlit_process(home, home / "serve.log") as (supervisor, url):
        children = _children(supervisor.pid).items()
        [server] = [pid for pid, cmd in children if "streamlit" in cmd]
        [worker] = [pid for pid, cmd in children if "worker" in cmd]
        yield server, worker, url


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--tabs", default="0,1,3", help="comma-separated Live tab counts")
    p.add_argument("--control", action="store_true",
                   help="also a phase with no tab and a busy loop on the pages' core (pinned)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--phase-seconds", type=float, default=20)
    p.add_argument("--unpinned", action="store_true",
                   help="gptdash serve as is, the kernel placing every process")
    p.add_argument("--markdown", action="store_true", help="also print a table for RESULTS.md")
    args = p.parse_args()
    tabs = [int(t) for t in args.tabs.split(",")] + ([BUSY] if args.control else [])
    if not args.unpinned and len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("needs two cores: one for the worker, one for the pages and browser")

    home = Path(tempfile.mkdtemp(prefix="gptdash-cost-"))
    os.environ["GPTDASH_HOME"] = str(home)
    os.environ.pop("GPTDASH_DB_URL", None)
    store = RunStore()
    if not args.unpinned:
        # This process and the browser it launches (children inherit it) stay off the
        # worker's core.
        os.sched_setaffinity(0, {PAGES_CORE})
    from playwright.sync_api import sync_playwright

    phases: list[Phase] = []
    dashboard = served_dashboard if args.unpinned else pinned_dashboard
    with dashboard(home) as (server_pid, worker_pid, url), sync_playwright() as pw:
        # Headless chromium with --disable-gpu composites through SwiftShader, whose worker
        # threads pin themselves to every core (the worker's included, whatever this
        # process's affinity): measured as a fifth of the worker's core with tabs open. Off
        # here, so what is measured is the dashboard, not the test browser's rasterizer.
        browser = (launch_chromium(pw) if args.unpinned else
                   pw.chromium.launch(executable_path=CHROMIUM,
                                      args=[*CHROMIUM_ARGS, "--disable-software-rasterizer"]))
        latency = start_latency(browser, url, store)
        print(json.dumps({"start": latency}))
        run_id = queue_long_run(store, args.preset)
        wait_for_step(store, run_id, WARMUP_STEPS)
        for round_index in range(args.rounds):
            for n in phase_order(tabs, round_index):
                phases.append(measure(browser, url, server_pid, worker_pid, n,
                                      args.phase_seconds))
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
                      "phase_seconds": args.phase_seconds, "pinned": not args.unpinned,
                      "start": latency, "summary": rows}))
    if args.markdown:
        print(markdown(rows))


if __name__ == "__main__":
    main()
