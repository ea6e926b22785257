"""Two-process DDP on the CPU (gloo) against one process, same global batch.

Trains ``tiny`` through ``gptdash train`` (the real path: a run row, the bridge, the
database) twice per round, interleaved over ``--repeat`` rounds:

- ``nproc=1``: one process, ``batch_size=B``, torch's default intra-op threads;
- ``nproc=2``: torchrun with 2 ranks (gloo), ``batch_size=B/2`` each, one thread each,

so both see ``B`` sequences a step and use the machine's cores. Reports the median
tokens/s of each (the trainer's own ``tokens_per_sec`` metric, global over ranks, after
the first log interval), the wall time of the command (torchrun's start included), and
the final val loss of each, which should agree within noise since the global batch is
the same.

    .venv/bin/python bench/ddp_cpu.py [--steps 200] [--batch 32] [--repeat 3]
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

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from storage.store import RunStore  # noqa: E402


def _gptdash() -> list[str]:
    entry = Path(sys.executable).parent / "gptdash"
    return [str(entry)] if entry.is_file() else [sys.executable, "-m", "jobs"]


def train_once(home: Path, nproc: int, steps: int, batch: int) -> dict:
    env = {**os.environ, "GPTDASH_HOME": str(home)}
    env.pop("GPTDASH_DB_URL", None)
    if nproc > 1:
        env["OMP_NUM_THREADS"] = "1"
    sets = {"max_steps": steps, "nproc": nproc, "batch_size": batch // nproc, "device": "cpu",
            "eval_interval": steps // 2, "checkpoint_interval": steps, "log_interval": 10}
    args = ["train", "--preset", "tiny", "--quiet"]
    for key, value in sets.items():
        args += ["--set", f"{key}={value}"]
    start = time.perf_counter()
    out = subprocess.run([*_gptdash(), *args], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=900)
    wall = time.perf_counter() - start
    if out.returncode != 0:
        raise SystemExit(f"gptdash {' '.join(args)} failed ({out.returncode}):\n"
                         f"{out.stdout[-2000:]}{out.stderr[-2000:]}")
    store = RunStore(f"sqlite:///{home / 'gptdash.db'}")
    run = store.list_runs()[0]
    frame = store.metrics([run.id], ["tokens_per_sec", "val/loss"])
    store.close()
    tps = frame[(frame["key"] == "tokens_per_sec") & (frame["step"] > 10)]["value"]
    val = frame[frame["key"] == "val/loss"].sort_values("step")["value"]
    return {"nproc": nproc, "status": run.status, "device": run.device,
            "tokens_per_s": float(tps.median()), "wall_s": round(wall, 1),
            "final_val_loss": round(float(val.iloc[-1]), 4)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=32, help="global batch (sequences a step)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    results: dict[int, list[dict]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory(prefix="gptdash-ddp-bench-") as tmp:
        for round_ in range(args.repeat):
            for nproc in (1, 2):
                home = Path(tmp) / f"r{round_}-n{nproc}"
                result = train_once(home, nproc, args.steps, args.batch)
                print(json.dumps({"round": round_, **result}), flush=True)
                results[nproc].append(result)
    print()
    print(f"| processes | batch per process | tokens/s (median of {args.repeat}) | wall s "
          "(median) | final val loss (each round) |")
    print("|---|---|---|---|---|")
    for nproc, rows in results.items():
        tps = statistics.median(r["tokens_per_s"] for r in rows)
        wall = statistics.median(r["wall_s"] for r in rows)
        losses = ", ".join(f"{r['final_val_loss']:.3f}" for r in rows)
        print(f"| {nproc} ({rows[0]['device']}) | {args.batch // nproc} | {tps:,.0f} | {wall} "
              f"| {losses} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
