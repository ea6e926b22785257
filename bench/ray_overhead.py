"""What a Ray job costs a short run against a plain worker, side by side.

Starts a throw-away home (SQLite), one `gptdash worker` waiting on the queue and a local
Ray head (2 CPUs, its own ports and temp dir, as the tests start it), both ready before
the first run, as a team's would be. Then, one run at a time, it submits the same short
run (`tiny`, ``--steps`` steps, on the CPU) with ``gptdash submit`` (the worker trains it),
with ``gptdash submit --on ray`` (a Ray job trains it) and, as a control, with
``gptdash train`` (a fresh process of its own, which imports torch for that one run as each
Ray job does), ``--repeat`` rounds, the order rotated each round. All train with one torch
thread: Ray starts a job that asks for one CPU with ``OMP_NUM_THREADS=1``, and the worker
and ``train`` are started so too. For each run, from the moment its command starts:

- ``submit_s``: the submit command itself (a fresh process, as a user runs it; none for
  ``train``, which returns when the run has ended);
- ``to_claim_s``: until the run is claimed (the worker, or the Ray job's entrypoint);
- ``to_first_step_s``: until its first train-loss row (the model built, data loaded);
- ``wall_s``: until the run has ended ``completed``;
- ``tokens_per_s``: the median of the trainer's own tokens/s after its first log.

One JSON line per run (the ``--warmup`` rounds first, marked and left out of the medians);
``--markdown`` also prints the medians as a table.

    .venv/bin/python bench/ray_overhead.py [--steps 100] [--repeat 3] [--warmup 1] [--markdown]
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

from gptcore.metric_keys import TOKENS_PER_SEC, TRAIN_LOSS  # noqa: E402
from storage.status import FINISHED, RunStatus  # noqa: E402
from storage.store import RunStore  # noqa: E402
from tests.ray_support import ray_env, start_head  # noqa: E402

RUN_TIMEOUT_S = 600
# local: a waiting `gptdash worker`; ray: a Ray job; train: `gptdash train`, a fresh process
# that imports torch for its one run as each Ray job does, without Ray (the control).
MODES = ("local", "ray", "train")


def _gptdash() -> list[str]:
    entry = Path(sys.executable).parent / "gptdash"
    return [str(entry)] if entry.is_file() else [sys.executable, "-m", "jobs"]


def measure(store: RunStore, env: dict[str, str], on: str, steps: int) -> dict:
    """Start one short run ``on`` a mode of MODES and follow it to its end; its timings."""
    config = ["--preset", "tiny", "--set", f"max_steps={steps}", "--set", "device=cpu",
              "--set", "eval_interval=50", "--name", f"bench {on}"]
    if on == "train":
        cmd = [*_gptdash(), "train", *config]
        env = {**env, "OMP_NUM_THREADS": "1"}
    else:
        cmd = [*_gptdash(), "submit", *config, "--on", on]
    start = time.time()
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    submitted = time.time()
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])}: {done.stderr.strip()}")
    # train prints no id: its run is the newest
    run_id = store.list_runs(limit=1)[0].id if on == "train" else int(done.stdout.split()[0])
    deadline = start + RUN_TIMEOUT_S
    while (run := store.get_run(run_id)).status not in FINISHED:
        if time.time() > deadline:
            raise RuntimeError(f"run {run_id} ({on}) did not end in {RUN_TIMEOUT_S} s")
        time.sleep(0.1)
    if run.status != RunStatus.COMPLETED:
        raise RuntimeError(f"run {run_id} ({on}) ended {run.status}: {run.error}")
    first = store.metrics([run_id], [TRAIN_LOSS])["wall_time"].min()
    tps = store.metrics([run_id], [TOKENS_PER_SEC])["value"].tolist()[1:]
    return {"on": on, "run": run_id,
            "submit_s": None if on == "train" else round(submitted - start, 2),
            "to_claim_s": round(run.started_at.timestamp() - start, 2),
            "to_first_step_s": round(float(first) - start, 2),
            "wall_s": round(run.finished_at.timestamp() - start, 2),
            "tokens_per_s": round(statistics.median(tps)) if tps else None}


def table(results: list[dict]) -> str:
    keys = ["submit_s", "to_claim_s", "to_first_step_s", "wall_s", "tokens_per_s"]
    lines = ["| started by | runs | " + " | ".join(f"{k} (median, min-max)" for k in keys) + " |",
             "|---" * (len(keys) + 2) + "|"]
    for on in MODES:
        mine = [r for r in results if r["on"] == on]
        cells = []
        for key in keys:
            values = [r[key] for r in mine if r[key] is not None]
            cells.append(f"{statistics.median(values):g} ({min(values):g}-{max(values):g})"
                         if values else "—")
        lines.append(f"| {on} | {len(mine)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1,
                        help="rounds run first and left out (the cluster's first job)")
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args()

    home = Path(tempfile.mkdtemp(prefix="gptdash-ray-bench-"))
    cluster = start_head()
    env = {**ray_env(), "GPTDASH_HOME": str(home), "GPTDASH_RAY_ADDRESS": cluster.address,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                       os.environ.get("PYTHONPATH")]))}
    env.pop("GPTDASH_DB_URL", None)
    env.pop("GPTDASH_ARTIFACTS", None)
    # Ray runs a job that asks for one CPU with OMP_NUM_THREADS=1; the worker gets the same,
    # so the two differ in how the run reaches its trainer, not in torch's threads.
    worker = subprocess.Popen([*_gptdash(), "worker", "--name", "bench-worker"],
                              env={**env, "OMP_NUM_THREADS": "1"}, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.environ["GPTDASH_HOME"] = str(home)
    os.environ.pop("GPTDASH_DB_URL", None)
    store = RunStore()
    results = []
    try:
        while not any(w.name == "bench-worker" for w in store.workers()):
            time.sleep(0.2)
        for i in range(-args.warmup, args.repeat):
            shift = i % len(MODES)
            for on in MODES[shift:] + MODES[:shift]:
                result = measure(store, env, on, args.steps)
                print(json.dumps({**result, "warmup": i < 0}), flush=True)
                if i >= 0:
                    results.append(result)
    finally:
        worker.terminate()
        worker.wait(timeout=60)
        store.close()
        cluster.stop()
    if args.markdown:
        print(table(results))


if __name__ == "__main__":
    main()
