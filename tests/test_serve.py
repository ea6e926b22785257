"""`gptdash serve` as a user runs it: the worker runs from the start, with no page open."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from storage.store import RunStore

ROOT = Path(__file__).resolve().parent.parent
MICRO = ["--set", "context_length=16", "--set", "emb_dim=32", "--set", "n_layers=2",
         "--set", "batch_size=8", "--set", "eval_interval=10", "--set", "eval_iters=2",
         "--set", "sample_tokens=8", "--set", "warmup_steps=2", "--set", "device=cpu",
         "--set", "checkpoint_interval=10"]


def _env(home: Path) -> dict[str, str]:
    env = {**os.environ, "GPTDASH_HOME": str(home), "PYTHONUNBUFFERED": "1",
           "OMP_NUM_THREADS": "1"}
    env.pop("GPTDASH_DB_URL", None)
    return env


def _gptdash(home: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "jobs", *args], cwd=ROOT, env=_env(home),
                          capture_output=True, text=True, timeout=120)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start_server(home: Path, port: int, log: Path) -> subprocess.Popen:
    with open(log, "a") as out:
        proc = subprocess.Popen([sys.executable, "-m", "jobs", "serve", "--port", str(port)],
                                cwd=ROOT, env=_env(home), stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2):
                return proc
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.25)
    proc.kill()
    raise AssertionError(f"server did not answer:\n{log.read_text()}")


def _wait_for(predicate, timeout: float = 90.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_killed_server_restarted_recovers_and_drains_the_queue_with_no_page_open(tmp_path):
    store = RunStore(f"sqlite:///{tmp_path / 'gptdash.db'}")
    log = tmp_path / "serve.log"
    port = _free_port()
    server = _start_server(tmp_path, port, log)
    try:
        long = _gptdash(tmp_path, "submit", "--preset", "tiny", *MICRO,
                        "--set", "max_steps=100000", "--name", "long")
        assert long.returncode == 0, long.stderr
        long_id = int(long.stdout)
        # No browser ever connects: the server's own worker must pick the run up.
        _wait_for(lambda: store.get_run(long_id).last_step >= 20, what="training to start")
        # Queued behind the long run; it waits until a worker is free.
        short = _gptdash(tmp_path, "submit", "--preset", "tiny", *MICRO,
                         "--set", "max_steps=20", "--name", "short")
        short_id = int(short.stdout)
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()
    assert store.get_run(long_id).status == "running"  # nobody alive to say otherwise yet
    assert store.get_run(short_id).status == "queued"

    server = _start_server(tmp_path, port, log)
    try:
        run = _wait_for(lambda: (r := store.get_run(long_id)).status != "running" and r,
                        what="the orphaned run to be marked")
        assert run.status == "interrupted"
        assert "resume" in run.error
        done = _wait_for(lambda: store.get_run(short_id).status == "completed",
                         what="the queued run to complete")
        assert done
        assert store.get_run(short_id).last_step == 20
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert f"run(s) #{long_id} were left running by a process that is gone" in log.read_text()


def test_serve_on_a_busy_port_says_so_and_exits_non_zero(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        out = _gptdash(tmp_path, "serve", "--port", str(port))
    assert out.returncode == 2
    assert f"port {port} on 127.0.0.1 is busy" in out.stderr
    assert "serving on" not in out.stderr + out.stdout
    assert "Traceback" not in out.stderr
