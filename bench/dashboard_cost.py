"""What a browser tab on the Live page costs a training run, measured side by side.

    python bench/dashboard_cost.py --preset tiny --phase-seconds 20 --rounds 3

Starts the dashboard (`gptdash serve` on a free port), trains one long run with
`gptdash train` in the background, and alternates phases: no tab open, then a
headless Chromium tab on the run's Live page (refreshing every 2 s), and so on. The
run's own `tokens_per_sec` metrics, split by phase through their wall times, give the
throughput of each phase. Prints one JSON line per phase and a summary line.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from storage.store import RunStore  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--no-first-run"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(port: int, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError("the dashboard did not start")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="tiny")
    p.add_argument("--phase-seconds", type=float, default=20)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    home = tempfile.mkdtemp(prefix="gptdash-cost-")
    env = {**os.environ, "GPTDASH_HOME": home, "PYTHONUNBUFFERED": "1"}
    port = free_port()
    py = sys.executable
    server = subprocess.Popen([py, "-m", "jobs", "serve", "--port", str(port)], cwd=ROOT,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    trainer = subprocess.Popen(
        [py, "-m", "jobs", "train", "--preset", args.preset, "--quiet", "--set",
         "max_steps=10000000", "--set", "eval_interval=1000000", "--set", "sample_tokens=0",
         "--set", "checkpoint_interval=10000000", "--name", "dashboard cost"],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    phases: list[tuple[str, float, float]] = []
    try:
        wait_http(port)
        store = RunStore(f"sqlite:///{home}/gptdash.db")
        while not store.list_runs() or store.list_runs()[0].last_step < 50:
            time.sleep(0.5)
        run_id = store.list_runs()[0].id
        from playwright.sync_api import sync_playwright

        with sync_playwright() as pw:
            for _ in range(args.rounds):
                start = time.time()
                time.sleep(args.phase_seconds)
                phases.append(("no tab", start, time.time()))
                browser = pw.chromium.launch(executable_path="/usr/bin/chromium",
                                             args=BROWSER_ARGS)
                page = browser.new_page(viewport={"width": 1400, "height": 1000})
                page.goto(f"http://127.0.0.1:{port}/live")
                page.wait_for_selector('[data-testid="stApp"]'
                                       '[data-test-script-state="notRunning"]', timeout=60000)
                start = time.time()
                time.sleep(args.phase_seconds)
                phases.append(("live tab", start, time.time()))
                browser.close()
        tps = store.metrics([run_id], ["tokens_per_sec"])
    finally:
        trainer.terminate()
        server.terminate()
        trainer.wait(30)
        server.wait(30)
    by_phase: dict[str, list[float]] = {}
    for name, lo, hi in phases:
        rows = tps[(tps["wall_time"] >= lo) & (tps["wall_time"] < hi)]["value"]
        value = float(rows.median()) if len(rows) else float("nan")
        by_phase.setdefault(name, []).append(value)
        print(json.dumps({"phase": name, "tokens_per_sec_median": round(value, 1),
                          "samples": len(rows)}))
    base = statistics.median(by_phase["no tab"])
    tab = statistics.median(by_phase["live tab"])
    print(json.dumps({"preset": args.preset, "no_tab_tokens_per_sec": round(base, 1),
                      "live_tab_tokens_per_sec": round(tab, 1),
                      "slowdown": round(1 - tab / base, 4), "cpu_cores": os.cpu_count(),
                      "rounds": args.rounds, "phase_seconds": args.phase_seconds}))


if __name__ == "__main__":
    main()
