"""jobs.actions: what the CLI and the pages do to runs, through the database alone; and the
pages' process, which never holds a worker nor imports torch until a page samples."""

import ast
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import update
from sqlalchemy.orm import Session
from test_jobs import micro

from gptcore.errors import GptdashError
from jobs import actions, runner
from jobs.actions import Stop
from jobs.manager import claim_here
from storage.schema import Worker, utcnow
from storage.status import RunStatus

ROOT = Path(__file__).resolve().parent.parent


def _python(home: Path, code: str, *args: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter on ``home``: what that process imports."""
    env = {**os.environ, "GPTDASH_HOME": str(home), "OMP_NUM_THREADS": "1"}
    env.pop("GPTDASH_DB_URL", None)
    return subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_stop_cancels_a_queued_run_and_flags_a_running_one(store):
    queued = store.create_run("queued", micro().to_dict(), status=RunStatus.QUEUED)
    running = store.create_run("running", micro().to_dict(), status=RunStatus.QUEUED)
    claim_here(store, running)

    assert actions.stop(store, queued) == Stop.CANCELLED
    assert store.get_run(queued).status == RunStatus.CANCELLED
    assert store.get_run(queued).error == "cancelled before it started"

    assert actions.stop(store, running) == Stop.REQUESTED
    assert store.get_run(running).status == RunStatus.RUNNING  # its trainer stops it
    assert store.stop_requested(running)

    with pytest.raises(GptdashError, match=f"run {queued} is cancelled, not running or queued"):
        actions.stop(store, queued)


def test_resume_queues_a_stopped_run_and_clears_its_stop_flag(store):
    run_id = store.create_run("stopped", micro().to_dict(), status=RunStatus.QUEUED)
    claim_here(store, run_id)
    actions.stop(store, run_id)
    store.set_status(run_id, RunStatus.STOPPED)
    checkpoint = runner.checkpoint_file(run_id)
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"")
    store.update_run(run_id, checkpoint_path=str(checkpoint))

    actions.resume(store, run_id)
    assert store.get_run(run_id).status == RunStatus.QUEUED
    assert not store.stop_requested(run_id)


def test_submit_queues_without_a_worker_and_without_torch(tmp_path):
    code = ("import sys\nfrom gptcore.config import preset\nfrom jobs import actions\n"
            "from storage.store import RunStore\nstore = RunStore()\n"
            "run_id = actions.submit(store, preset('tiny'), name='later')\n"
            "print(store.get_run(run_id).status, 'torch' in sys.modules)")
    out = _python(tmp_path, code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["queued", "False"]


def test_resume_queue_and_stop_answer_without_torch(tmp_path):
    """`gptdash resume --queue` used to import torch to learn the name 'latest.pt'."""
    code = ("import sys\nfrom jobs.cli import main\nfrom storage.status import RunStatus\n"
            "from storage.store import RunStore\n"
            "store = RunStore()\n"
            "run_id = store.create_run('r', {}, status=RunStatus.STOPPED, max_steps=10)\n"
            "from jobs.runner import checkpoint_file\n"
            "path = checkpoint_file(run_id)\npath.parent.mkdir(parents=True)\n"
            "path.write_bytes(b'')\nstore.update_run(run_id, checkpoint_path=str(path))\n"
            "assert main(['resume', str(run_id), '--queue']) == 0\n"
            "assert main(['stop', str(run_id)]) == 0\n"
            "print(store.get_run(run_id).status, 'torch' in sys.modules)")
    out = _python(tmp_path, code)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[-2:] == ["cancelled", "False"]


def _jobs_imports(path: Path) -> set[str]:
    """The ``jobs`` modules a file imports anywhere in it (function-level imports too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "jobs":
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jobs."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("jobs.")}
    return found


def test_jobs_has_no_import_cycle():
    """A cycle hidden by function-level imports still ties the modules into one knot."""
    graph = {p.stem: _jobs_imports(p) - {p.stem} for p in (ROOT / "jobs").glob("*.py")}

    def cycle_from(module: str, path: list[str]) -> list[str] | None:
        for used in sorted(graph.get(module, ())):
            if used in path:
                return [*path[path.index(used):], used]
            if (found := cycle_from(used, [*path, used])) is not None:
                return found
        return None

    for module in sorted(graph):
        assert cycle_from(module, [module]) is None, " -> ".join(cycle_from(module, [module]))


PAGES_THEN_SAMPLE = """
import sys
from streamlit.testing.v1 import AppTest

app, run_id, pages = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
at = AppTest.from_file(app, default_timeout=120)
at.run()
[start] = [b for b in at.button if b.label == "Start training"]
start.click().run()  # the default config, queued from the New run page
assert not at.exception, [e.value for e in at.exception]
for page in pages:
    at.switch_page(page)
    at.run()
    assert not at.exception, (page, [e.value for e in at.exception])
print("pages", "torch" in sys.modules)
at.switch_page("app_pages/playground.py")
at.run()
at.selectbox(key="play_a").set_value(run_id)
at.text_area[0].input("The ")
[generate] = [b for b in at.button if b.label == "Generate"]
generate.click().run()
assert not at.exception and at.code[0].value.startswith("The ")
print("sampled", "torch" in sys.modules)
"""


def test_the_pages_never_import_torch_until_one_samples(store, home):
    """Training lives in the worker process; the pages' process pays for torch only when a
    page samples from a checkpoint."""
    trained = runner.create_run(store, micro(), name="trained")
    claim_here(store, trained)
    assert runner.execute_run(store, trained).status == "completed"
    pages = ["app_pages/new_run.py", "app_pages/runs.py", "app_pages/live.py",
             "app_pages/compare.py", "app_pages/sweeps.py", "app_pages/compute.py",
             "app_pages/workers.py"]
    out = _python(home, PAGES_THEN_SAMPLE, str(ROOT / "app.py"), str(trained), *pages)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-4:] == ["pages", "False", "sampled", "True"]
    [queued] = store.list_runs(status=RunStatus.QUEUED)  # Start queued it; no worker took it
    assert queued.id != trained


def test_the_sidebar_learns_what_workers_train_from_the_workers_table(store):
    from ui.widgets import training_now  # streamlit: only this test needs it

    running = store.create_run("running", micro().to_dict(), status=RunStatus.QUEUED)
    claim_here(store, running)
    orphan = store.create_run("orphan", micro().to_dict(), status=RunStatus.INTERRUPTED)
    for name in ("busy", "killed", "idle", "gone", "done"):
        store.register_worker(name, host="h", pid=1, device="cpu")
    store.worker_beat("busy", status="training", current_run_id=running)
    # Killed mid-run: it still says training, but its run is interrupted.
    store.worker_beat("killed", status="training", current_run_id=orphan)
    store.worker_stopped("done")
    with Session(store.engine) as session, session.begin():  # silent for an hour: lost
        session.execute(update(Worker).where(Worker.name == "gone")
                        .values(heartbeat_at=utcnow() - timedelta(hours=1)))
    assert training_now(store) == ([running], 3)  # busy, killed, idle are alive


def test_the_sidebar_counts_a_run_its_worker_has_claimed_before_its_next_beat(store):
    """"Worker idle · Queue: #2" stood beside run 2 training: its worker's row said idle
    until its next beat. A run whose worker is lost is trained by nobody."""
    from ui.widgets import training_now

    claimed = store.create_run("claimed", micro().to_dict(), status=RunStatus.QUEUED)
    stranded = store.create_run("stranded", micro().to_dict(), status=RunStatus.QUEUED)
    for name, run_id in (("w1", claimed), ("w2", stranded)):
        store.register_worker(name, host="h", pid=1, device="cpu")  # idle
        store.claim_run(run_id, name, host="h", pid=1)
    with Session(store.engine) as session, session.begin():
        session.execute(update(Worker).where(Worker.name == "w2")
                        .values(heartbeat_at=utcnow() - timedelta(hours=1)))
    assert training_now(store) == ([claimed], 1)


def test_the_sidebar_keeps_watching_while_a_run_is_due_to_resume_by_itself(store):
    """After a kill -9 the sidebar said "Worker idle" beside the run that had resumed: with
    nothing running or queued it had stopped refreshing, and the run was only interrupted."""
    from ui.widgets import resumes_due

    due = store.create_run("due", micro().to_dict(), status=RunStatus.QUEUED)
    stopped = store.create_run("stopped", micro().to_dict(), status=RunStatus.QUEUED)
    for run_id in (due, stopped):
        store.claim_run(run_id, "w", host="h", pid=1)
    store.end_if_still(due, worker="w", was=RunStatus.RUNNING, status=RunStatus.INTERRUPTED,
                       error="gone", resume_after=utcnow() + timedelta(seconds=10))
    store.end_if_still(stopped, worker="w", was=RunStatus.RUNNING,
                       status=RunStatus.INTERRUPTED, error="gone")  # no automatic resume
    assert resumes_due(store) == [due]
