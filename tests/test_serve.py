"""`gptdash serve` as a user runs it: a supervisor of the pages' server and a training
worker, which trains from the start with no page open, and whose children never outlive it.
"""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from jobs.recovery import pid_alive
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


def _submit(home: Path, name: str, max_steps: int) -> int:
    out = _gptdash(home, "submit", "--preset", "tiny", *MICRO, "--set", f"max_steps={max_steps}",
                   "--name", name)
    assert out.returncode == 0, out.stderr
    return int(out.stdout)


def _children(pid: int) -> dict[int, str]:
    """The processes whose parent is ``pid``, by pid, with their command lines."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rpartition(")")[2].split()[1])
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, IndexError, ValueError):
            continue  # gone while we looked
        if ppid == pid:
            found[int(proc.name)] = cmdline
    return found


def _worker_and_server(server: subprocess.Popen) -> tuple[int, int]:
    kids = _wait_for(lambda: len(k := _children(server.pid)) == 2 and k,
                     what="the worker and the server to start")
    [worker] = [pid for pid, cmd in kids.items() if "jobs worker" in cmd]
    [pages] = [pid for pid, cmd in kids.items() if "streamlit run" in cmd]
    return worker, pages


def _latest_checkpoint(home: Path, run_id: int) -> Path:
    return home / "runs" / str(run_id) / "latest.pt"


def test_serve_killed_with_9_takes_its_children_along_and_the_run_resumes(tmp_path):
    store = RunStore(f"sqlite:///{tmp_path / 'gptdash.db'}")
    log = tmp_path / "serve.log"
    port = _free_port()
    server = _start_server(tmp_path, port, log)
    try:
        long_id = _submit(tmp_path, "long", 100_000)
        # No browser ever connects: the supervised worker picks the run up.
        _wait_for(lambda: store.get_run(long_id).last_step >= 20, what="training to start")
        children = _worker_and_server(server)
    finally:
        server.send_signal(signal.SIGKILL)
        server.wait()
    # The parent-death signal: nobody is left to stop them, yet they go.
    _wait_for(lambda: not any(pid_alive(pid) for pid in children), timeout=60,
              what="the worker and the server to die with the supervisor")
    run = store.get_run(long_id)
    # The worker's death signal (SIGTERM) let it save and put its run back in the queue;
    # had it died first, the run would be interrupted and resume by itself.
    assert run.status in ("queued", "interrupted"), run.status
    assert _latest_checkpoint(tmp_path, long_id).is_file()
    stopped_at = run.last_step

    server = _start_server(tmp_path, port, log)
    try:  # nobody presses Resume
        _wait_for(lambda: (r := store.get_run(long_id)).status == "running"
                  and r.last_step > stopped_at, what="the run to go on by itself")
    finally:
        server.terminate()
        assert server.wait(timeout=60) == 0
    assert store.get_run(long_id).status == "queued"


def test_a_worker_killed_with_9_is_restarted_the_queue_trains_and_its_run_resumes_itself(
        tmp_path):
    store = RunStore(f"sqlite:///{tmp_path / 'gptdash.db'}")
    log = tmp_path / "serve.log"
    server = _start_server(tmp_path, _free_port(), log)
    try:
        long_id = _submit(tmp_path, "long", 100_000)
        _wait_for(lambda: store.get_run(long_id).last_step >= 20, what="training to start")
        short_id = _submit(tmp_path, "short", 20)  # queued behind the long run
        worker, pages = _worker_and_server(server)
        os.kill(worker, signal.SIGKILL)
        run = _wait_for(lambda: (r := store.get_run(long_id)).status != "running" and r,
                        what="the killed worker's run to be marked")
        assert run.status == "interrupted"
        assert "resume" in run.error
        done = _wait_for(lambda: store.get_run(short_id).status == "completed",
                         what="the queued run to train on the restarted worker")
        assert done and store.get_run(short_id).last_step == 20
        # Then, with nobody pressing Resume, the long run goes on from its last checkpoint.
        resumed = _wait_for(lambda: (r := store.get_run(long_id)).status == "running"
                            and r.auto_resumes == 1 and r.last_step > run.last_step and r,
                            what="the killed worker's run to resume itself")
        assert resumed.attempts == 2
        new_worker, same_pages = _worker_and_server(server)
        assert new_worker != worker and same_pages == pages
    finally:
        server.terminate()
        code = server.wait(timeout=60)
    assert code == 0
    said = log.read_text()
    assert "the training worker was killed by SIGKILL" in said
    assert f"run(s) #{long_id} marked interrupted" in said


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_mid_run_saves_it_and_the_restarted_dashboard_goes_on_with_it(
        tmp_path, sig):
    # The dashboard was stopped, not the run: it goes back in the queue, and the next
    # `gptdash serve` continues it from its checkpoint with nobody pressing Resume.
    store = RunStore(f"sqlite:///{tmp_path / 'gptdash.db'}")
    log = tmp_path / "serve.log"
    port = _free_port()
    server = _start_server(tmp_path, port, log)
    try:
        run_id = _submit(tmp_path, "long", 100_000)
        _wait_for(lambda: store.get_run(run_id).last_step >= 20, what="training to start")
        children = _worker_and_server(server)
    finally:
        server.send_signal(sig)
        code = server.wait(timeout=60)
    assert code == 0, log.read_text()
    run = store.get_run(run_id)
    assert run.status == "queued" and run.last_step >= 20
    assert _latest_checkpoint(tmp_path, run_id).is_file()
    assert not any(pid_alive(pid) for pid in children)
    assert (f"run {run_id} stopped with a checkpoint; it is back in the queue for the next "
            "worker") in log.read_text()
    server = _start_server(tmp_path, port, log)
    try:
        resumed = _wait_for(lambda: (r := store.get_run(run_id)).status == "running"
                            and r.last_step > run.last_step and r, timeout=120,
                            what="the run to go on in the restarted dashboard")
        assert resumed.attempts == 2 and resumed.auto_resumes == 0
    finally:
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0



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


@pytest.mark.browser
def test_the_pages_server_never_loads_torch_while_pages_render(tmp_path, browser):
    """Training is the worker's: the server process a browser talks to holds no libtorch."""
    from browser_support import goto_page, new_context, streamlit_process, wait_rendered

    with streamlit_process(tmp_path, tmp_path / "serve.log") as (server, url):
        worker, pages = _worker_and_server(server)
        context = new_context(browser)
        page = context.new_page()
        page.goto(url)
        wait_rendered(page)
        for title, part in [("Runs", "/runs"), ("Live run", "/live"), ("Compare", "/compare"),
                            ("Sweeps", "/sweeps"), ("Compute", "/compute"),
                            ("Workers", "/workers")]:
            goto_page(page, title, part)
        context.close()
        assert "libtorch" not in Path(f"/proc/{pages}/maps").read_text()
        # The check can see torch: the worker has it mapped from its start.
        _wait_for(lambda: "libtorch" in Path(f"/proc/{worker}/maps").read_text(),
                  what="the worker to load torch")
