"""How long the everyday `gptdash` commands take, as a person types them.

Runs each command ``--repeats`` times (default 5) as a fresh process through the
installed ``gptdash`` entry point, on a throw-away home folder holding a few runs,
and prints one JSON line per command with the median and spread of the wall time,
then a summary line. Nothing here trains: ``stop`` cancels a queued run, ``submit``
queues one.

    .venv/bin/python bench/cli_latency.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TINY = ["--preset", "tiny", "--set", "max_steps=50"]


def _gptdash() -> list[str]:
    entry = Path(sys.executable).parent / "gptdash"
    return [str(entry)] if entry.is_file() else [sys.executable, "-m", "jobs"]


def _run(args: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    start = time.perf_counter()
    out = subprocess.run([*_gptdash(), *args], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=120)
    return time.perf_counter() - start, out


def measure(repeats: int) -> list[dict]:
    with tempfile.TemporaryDirectory(prefix="gptdash-cli-latency-") as home:
        env = {**os.environ, "GPTDASH_HOME": home}
        env.pop("GPTDASH_DB_URL", None)
        # A few queued runs to list, show and cancel; the first submit also builds the
        # token cache, so it is not timed.
        for _ in range(repeats + 3):
            _, out = _run(["submit", *TINY], env)
            if out.returncode != 0:
                raise SystemExit(f"setup failed: {out.stderr}")
        commands = {
            "--help": lambda i: ["--help"],
            "list": lambda i: ["list"],
            "show": lambda i: ["show", "1"],
            "stop": lambda i: ["stop", str(2 + i)],  # a different queued run each time
            "submit": lambda i: ["submit", *TINY],
        }
        rows = []
        for name, args_for in commands.items():
            times = []
            for i in range(repeats):
                seconds, out = _run(args_for(i), env)
                if out.returncode != 0:
                    raise SystemExit(f"`gptdash {name}` failed: {out.stderr}")
                times.append(seconds)
            rows.append({"command": name, "median_s": round(statistics.median(times), 3),
                         "min_s": round(min(times), 3), "max_s": round(max(times), 3),
                         "repeats": repeats})
        return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = measure(args.repeats)
    for row in rows:
        print(json.dumps(row))
    print(json.dumps({"summary": "cli_latency", "python": platform.python_version(),
                      "cpus": os.cpu_count(),
                      "slowest_median_s": max(r["median_s"] for r in rows),
                      "all_under_1s": all(r["median_s"] < 1.0 for r in rows)}))


if __name__ == "__main__":
    main()
