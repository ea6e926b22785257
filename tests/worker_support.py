"""Real `gptdash worker` processes for the tests that kill them: a micro config, starting a
worker, waiting for what it does, and ending the ones left."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# A model that trains tens of steps a second on one core, saving a checkpoint every 10.
MICRO = {"context_length": 16, "emb_dim": 32, "n_heads": 4, "n_layers": 2, "batch_size": 8,
         "eval_interval": 10, "eval_iters": 2, "sample_tokens": 8, "warmup_steps": 2,
         "device": "cpu", "log_interval": 5, "checkpoint_interval": 10}
DEAD_AFTER_S = 6


def start_worker(name: str, home: Path, log: Path, *, db_url: str | None = None,
                 host: str | None = None) -> subprocess.Popen:
    """`gptdash worker --name NAME` on ``home`` (its SQLite file, else ``db_url``), its output
    appended to ``log``; with ``host``, as if on a machine of that name (no one can check
    another machine's pid, only its beat)."""
    env = {**os.environ, "GPTDASH_HOME": str(home), "OMP_NUM_THREADS": "1",
           "PYTHONUNBUFFERED": "1"}
    env.pop("GPTDASH_DB_URL", None)
    if db_url is not None:
        env["GPTDASH_DB_URL"] = db_url
    if host is not None:
        env["GPTDASH_HOST"] = host
    with open(log, "a") as out:
        return subprocess.Popen([sys.executable, "-m", "jobs", "worker", "--name", name,
                                 "--dead-after", str(DEAD_AFTER_S)],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_for(predicate, timeout: float, what: str, log: Path | None = None):
    """``predicate()``'s first truthy value within ``timeout`` seconds; AssertionError (with
    the workers' ``log``) when none came."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    said = f"; workers said:\n{log.read_text()}" if log is not None else ""
    raise AssertionError(f"timed out waiting for {what}{said}")


def end_workers(workers: list[subprocess.Popen]) -> None:
    """SIGTERM the workers still running (each stops its run with a checkpoint) and reap
    them all."""
    for proc in workers:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in workers:
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
