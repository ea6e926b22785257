"""Two tiny runs at once against one at a time, on torch's default threads and on ours.

torch gives every process one thread per core. Two `gptdash train` processes side by side
then spin twice as many threads as the machine has cores, and the spinning threads wait on
each other. ``jobs.threads`` gives each its share of the cores instead. Each case trains the
tiny preset as fresh `gptdash train` processes, on a throw-away home folder, in an
environment without OMP_NUM_THREADS (as a user's), and prints one JSON line with each run's
wall time and the whole case's:

- ``alone``: one run, nothing beside it (our rule: every core);
- ``one_after_another``: two runs, the second started when the first ended;
- ``together_torch_default``: two at once, each on ``--threads <cores>``, which is what
  torch picks for a process by itself (what gptdash did before issue 23);
- ``together_our_rule``: two at once, no ``--threads``: each takes its share.

    .venv/bin/python bench/threads.py [--steps 150]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from gptcore.device import usable_cores  # noqa: E402 - after the path above


def _train_cmd(steps: int, threads: int | None) -> list[str]:
    entry = Path(sys.executable).parent / "gptdash"
    base = [str(entry)] if entry.is_file() else [sys.executable, "-m", "jobs"]
    cmd = [*base, "train", "--preset", "tiny", "--set", f"max_steps={steps}",
           "--set", "device=cpu", "--set", "eval_interval=1000000", "--set", "sample_tokens=0",
           "--set", "checkpoint_interval=1000000", "--quiet"]
    return cmd + (["--threads", str(threads)] if threads else [])


def _runs(env: dict[str, str], cmds: list[list[str]], together: bool) -> dict[str, object]:
    """Wall seconds of each command and of them all, started at once or one by one."""
    start = time.perf_counter()
    walls = []
    if together:
        procs = [(time.perf_counter(), subprocess.Popen(c, cwd=REPO, env=env,
                                                        stdout=subprocess.DEVNULL,
                                                        stderr=subprocess.PIPE, text=True))
                 for c in cmds]
        for began, proc in procs:
            _, err = proc.communicate(timeout=1800)
            assert proc.returncode == 0, err
            walls.append(time.perf_counter() - began)
    else:
        for c in cmds:
            began = time.perf_counter()
            out = subprocess.run(c, cwd=REPO, env=env, capture_output=True, text=True,
                                 timeout=1800)
            assert out.returncode == 0, out.stderr
            walls.append(time.perf_counter() - began)
    return {"run_s": [round(w, 1) for w in walls],
            "total_s": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150, help="steps of each run")
    args = parser.parse_args()
    cores = usable_cores()
    with tempfile.TemporaryDirectory() as home:
        env = {k: v for k, v in os.environ.items()
               if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "GPTDASH_DB_URL")}
        env["GPTDASH_HOME"] = home
        _runs(env, [_train_cmd(25, None)], together=False)  # the corpus' tokens, cached once
        ours, default = _train_cmd(args.steps, None), _train_cmd(args.steps, cores)
        cases = {"alone": ([ours], False),
                 "one_after_another": ([ours, ours], False),
                 "together_torch_default": ([default, default], True),
                 "together_our_rule": ([ours, ours], True)}
        for case, (cmds, together) in cases.items():
            print(json.dumps({"case": case, "steps": args.steps, "cores": cores,
                              **_runs(env, cmds, together),
                              "machine": platform.processor() or platform.machine()}),
                  flush=True)


if __name__ == "__main__":
    main()
