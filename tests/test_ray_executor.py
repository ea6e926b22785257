"""Runs on Ray (`--on ray`): a Ray job per attempt of a run, on a real local Ray head.

The cluster tests share the session's ``ray_cluster`` (2 CPUs); each has its own SQLite
file, so run ids repeat across tests while the cluster keeps every job: a job's attempt
number goes past the cluster's earlier jobs of that run id, and the tests count only the
jobs made while they ran. The executor column's migration and the claim rule need no
cluster.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from stat import S_IMODE
from urllib.parse import quote

import pytest
from sqlalchemy import text

from gptcore.config import apply_overrides, preset
from gptcore.metric_keys import TRAIN_LOSS
from jobs import ray_executor, runner
from jobs.cli import main
from jobs.ray_cluster import jobs, submit_job
from jobs.ray_executor import reconcile
from jobs.ray_secrets import db_env
from jobs.recovery import pid_alive, this_host
from jobs.serve import checks
from jobs.supervisor import Periodic, Supervisor
from storage.migrate import upgrade
from storage.schema import make_engine
from storage.status import FINISHED, Executor, RunStatus
from storage.store import RunStore

MICRO = ["--preset", "tiny", "--set", "context_length=16", "--set", "emb_dim=32",
         "--set", "n_layers=2", "--set", "batch_size=8", "--set", "eval_iters=2",
         "--set", "sample_tokens=8", "--set", "warmup_steps=2", "--set", "device=cpu"]
TIMEOUT_S = 180.0
PASSWORD = "S3cretPw"


def wait_for(predicate: Callable[[], object], what: str, timeout: float = TIMEOUT_S) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def gptdash(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """One CLI command in this process, as a user types it: (exit code, stdout, stderr)."""
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def on_ray(home: Path, ray_cluster, monkeypatch: pytest.MonkeyPatch) -> RunStore:
    """A fresh SQLite home whose commands reach the session's Ray cluster."""
    monkeypatch.setenv("GPTDASH_RAY_ADDRESS", ray_cluster.address)
    store = RunStore()
    yield store
    store.close()


def new_jobs(address: str, before: set[str], run_id: int) -> list:
    """The run id's jobs on the cluster that were not there ``before``, oldest first."""
    return sorted((j for j in jobs(address, run_id) if j.submission_id not in before),
                  key=lambda j: j.attempt)


def job_ids(address: str) -> set[str]:
    return {j.submission_id for j in jobs(address)}


def status_is(store: RunStore, run_id: int, *statuses: str) -> Callable[[], bool]:
    return lambda: store.get_run(run_id).status in statuses


def train_steps(store: RunStore, run_id: int) -> list[int]:
    return [int(s) for s in store.metrics([run_id], [TRAIN_LOSS])["step"]]


def test_two_runs_on_ray_complete_each_trained_once_by_its_own_job(on_ray, ray_cluster,
                                                                   capsys):
    before = job_ids(ray_cluster.address)
    run_ids = []
    for name in ("first", "second"):
        code, out, err = gptdash(capsys, "submit", *MICRO, "--set", "max_steps=20",
                                 "--set", "eval_interval=10", "--name", name, "--on", "ray")
        assert code == 0, err
        run_ids.append(int(out))
        assert f"queued: Ray job gptdash-run-{out.strip()}-" in err
    for run_id in run_ids:
        wait_for(status_is(on_ray, run_id, *FINISHED),
                 f"run {run_id} to end")
    address = ray_cluster.address
    for run_id in run_ids:
        run = on_ray.get_run(run_id)
        assert (run.status, run.error, run.executor) == ("completed", None, Executor.RAY)
        (job,) = new_jobs(address, before, run_id)  # one job per run, no retry
        assert job.submission_id == run.worker
        wait_for(lambda r=run_id: jobs(address, r)[0].status == "SUCCEEDED", "the job's end")
        assert train_steps(on_ray, run_id) == list(range(20))  # every step once, no gap
        shown = json.loads(gptdash(capsys, "show", str(run_id))[1])
        assert (shown["executor"], shown["worker"]) == ("ray", job.submission_id)


def test_stop_from_the_cli_then_resume_on_ray_continues_the_curve(on_ray, ray_cluster,
                                                                  capsys):
    before = job_ids(ray_cluster.address)
    code, out, err = gptdash(capsys, "submit", *MICRO, "--set", "max_steps=40",
                             "--set", "eval_interval=20", "--on", "ray")
    assert code == 0, err
    run_id = int(out)
    # Stopped once its job has it, so it stops early on any machine, however fast.
    wait_for(status_is(on_ray, run_id, RunStatus.RUNNING), "its job to take it")
    code, out, err = gptdash(capsys, "stop", str(run_id))
    assert code == 0 and "stop requested" in out, err
    wait_for(status_is(on_ray, run_id, *FINISHED), "the stop")
    stopped = on_ray.get_run(run_id)
    assert stopped.status == RunStatus.STOPPED
    assert Path(stopped.checkpoint_path).is_file()
    assert 1 <= stopped.last_step < 40

    resumed_at = time.time()
    code, out, err = gptdash(capsys, "resume", str(run_id), "--on", "ray")
    assert code == 0, err
    first, second = new_jobs(ray_cluster.address, before, run_id)
    assert second.attempt == first.attempt + 1
    assert f"resumes from its last checkpoint, as Ray job {second.submission_id}" in out
    wait_for(status_is(on_ray, run_id, *FINISHED), "the resumed run to end")
    run = on_ray.get_run(run_id)
    assert (run.status, run.worker, run.last_step) == ("completed", second.submission_id, 40)
    curve = on_ray.metrics([run_id], [TRAIN_LOSS])
    assert list(curve["step"]) == list(range(40))  # every step once, no gap
    # The steps before the stop are the first job's, the rest the second's: continued from
    # the checkpoint, not trained again from step 0.
    first_job = curve["step"] < stopped.last_step
    assert (curve["wall_time"][first_job] < resumed_at).all()
    assert (curve["wall_time"][~first_job] > resumed_at).all()


def entrypoint_pid(run_id: int, job: str) -> int:
    """The process Ray started for a job, the one it tracks: the outermost process whose
    command line runs the job's ``ray-run``."""
    marker = f"jobs ray-run {run_id} --job {job}"
    parents = {}
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            if entry.name.isdigit() and marker in cmdline:
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rpartition(")")[2].split()[1])
        except OSError:
            continue
    (pid,) = [pid for pid, parent in parents.items() if parent not in parents]
    return pid


def test_killing_a_jobs_entrypoint_takes_its_trainer_along_and_resume_completes(
        on_ray, ray_cluster, capsys):
    code, out, err = gptdash(capsys, "submit", *MICRO, "--set", "max_steps=40",
                             "--set", "eval_interval=20", "--on", "ray")
    assert code == 0, err
    run_id = int(out)
    wait_for(status_is(on_ray, run_id, RunStatus.RUNNING), "its job to take it")
    run = on_ray.get_run(run_id)
    os.kill(entrypoint_pid(run_id, run.worker), signal.SIGKILL)
    # The trainer dies with it (a shell between them used to leave it training under PID 1).
    wait_for(lambda: not pid_alive(run.owner_pid), "the trainer to die with its job", 5.0)
    steps = train_steps(on_ray, run_id)
    wait_for(lambda: jobs(ray_cluster.address, run_id)[0].status == "FAILED",
             "Ray to see its job fail")
    assert on_ray.get_run(run_id).status == RunStatus.RUNNING  # nothing but Ray knows yet
    assert train_steps(on_ray, run_id) == steps  # nothing written since

    code, out, err = gptdash(capsys, "list")  # any command's recovery pass reconciles
    assert code == 0
    assert f"run {run_id}: Ray job {run.worker} ended (FAILED); marked interrupted" in err
    dead = on_ray.get_run(run_id)
    assert dead.status == RunStatus.INTERRUPTED
    assert f"its Ray job {run.worker} ended (FAILED) while the run was training" in dead.error
    assert "Job entrypoint command failed with exit code" in dead.error  # Ray's own words

    code, out, err = gptdash(capsys, "resume", str(run_id), "--on", "ray")
    assert code == 0, err
    wait_for(status_is(on_ray, run_id, *FINISHED), "the resumed run to end")
    assert on_ray.get_run(run_id).status == RunStatus.COMPLETED
    assert train_steps(on_ray, run_id) == list(range(40))


def a_job_named_by(store: RunStore, run_id: int, entrypoint: str) -> str:
    """Submit a stand-in Ray job under the name the run's row gives its next attempt."""
    cluster = ray_executor.connect()
    job = cluster.next_job(run_id)
    store.update_run(run_id, worker=job)
    submit_job(cluster.client, entrypoint=entrypoint, submission_id=job)
    return job


def job_status(address: str, job: str) -> Callable[[], str]:
    return lambda: next(j.status for j in jobs(address) if j.submission_id == job)


def test_a_job_that_fails_before_training_fails_its_run_with_rays_reason(on_ray, ray_cluster):
    run_id = on_ray.create_run("never starts", {}, executor=Executor.RAY)
    # What a node without gptdash installed would do with the entrypoint.
    job = a_job_named_by(on_ray, run_id, "echo \"No module named 'jobs'\" >&2; exit 1")
    status = job_status(ray_cluster.address, job)
    wait_for(lambda: status() == "FAILED", "the job to fail")
    assert on_ray.get_run(run_id).status == RunStatus.QUEUED

    assert reconcile(on_ray) == [f"run {run_id}: Ray job {job} ended (FAILED); marked failed"]
    run = on_ray.get_run(run_id)
    assert run.status == RunStatus.FAILED
    assert f"its Ray job {job} ended (FAILED) before it started training" in run.error
    assert "No module named 'jobs'" in run.error
    assert reconcile(on_ray) == []  # settled once


def test_a_run_whose_job_ended_stays_running_while_its_trainer_may_live(
        on_ray, ray_cluster, monkeypatch):
    here = on_ray.create_run("here", {}, executor=Executor.RAY)
    here_job = a_job_named_by(on_ray, here, "exit 1")
    away = on_ray.create_run("away", {}, executor=Executor.RAY)
    away_job = a_job_named_by(on_ray, away, "exit 1")
    trainer = subprocess.Popen(["sleep", "120"])  # a trainer its job's end left behind
    try:
        assert on_ray.claim_ray_run(here, here_job, host=this_host(), pid=trainer.pid)
        assert on_ray.claim_ray_run(away, away_job, host="elsewhere", pid=trainer.pid)
        for job in (here_job, away_job):
            wait_for(lambda j=job: job_status(ray_cluster.address, j)() == "FAILED",
                     f"{job} to fail")
        on_ray.heartbeat(away)  # the other host's trainer beats on
        assert reconcile(on_ray) == []  # and the pid on this host lives
        assert {on_ray.get_run(r).status for r in (here, away)} == {RunStatus.RUNNING}
    finally:
        trainer.kill()
        trainer.wait()
    monkeypatch.setattr(ray_executor, "TRAINER_QUIET_S", 0.5)
    time.sleep(0.6)
    assert reconcile(on_ray) == [
        f"run {here}: Ray job {here_job} ended (FAILED); marked interrupted",
        f"run {away}: Ray job {away_job} ended (FAILED); marked interrupted"]


def test_a_run_that_ignores_its_stop_has_its_job_stopped_after_the_grace(on_ray, ray_cluster,
                                                                          monkeypatch):
    run_id = on_ray.create_run("hung", {}, executor=Executor.RAY)
    job = a_job_named_by(on_ray, run_id, "sleep 120")  # a trainer that never polls its flag
    assert on_ray.claim_ray_run(run_id, job, host="elsewhere", pid=1)
    status = job_status(ray_cluster.address, job)
    wait_for(lambda: status() == "RUNNING", "the job to start")
    on_ray.request_stop(run_id)
    stops = ray_executor.StopWatch(grace_s=1.0)
    assert reconcile(on_ray, stops=stops) == []  # the flag may yet be heeded
    assert reconcile(on_ray) == []  # a one-off pass keeps no clock: it never stops a job
    time.sleep(1.2)
    assert reconcile(on_ray, stops=stops) == [
        f"run {run_id} did not stop within 1 s of its Stop: stopped its Ray job {job}"]
    wait_for(lambda: status() == "STOPPED", "Ray to stop the job")
    monkeypatch.setattr(ray_executor, "TRAINER_QUIET_S", 0.0)  # its trainer beats no more
    assert reconcile(on_ray) == [
        f"run {run_id}: Ray job {job} ended (STOPPED); marked interrupted"]
    assert on_ray.get_run(run_id).status == RunStatus.INTERRUPTED


def test_a_queued_run_whose_job_never_came_gets_it_and_a_cancel_stops_that_job(
        on_ray, ray_cluster, capsys):
    # What a submitter that died between naming the job and submitting it leaves behind.
    cfg = apply_overrides(preset("tiny"), {"context_length": 16, "emb_dim": 32, "n_layers": 2,
                                           "batch_size": 8, "device": "cpu"})
    run_id = runner.create_run(on_ray, cfg, check_device=False, executor=Executor.RAY)
    job = ray_executor.connect().next_job(run_id)
    on_ray.update_run(run_id, worker=job)
    assert reconcile(on_ray) == [f"run {run_id}'s Ray job {job} was missing: submitted it"]
    assert reconcile(on_ray) == []  # submitted once

    code, out, err = gptdash(capsys, "stop", str(run_id))
    assert (code, out) == (0, f"run {run_id} cancelled\n"), err
    status = job_status(ray_cluster.address, job)
    wait_for(lambda: status() in ("STOPPED", "SUCCEEDED"), "its job to end")
    run = on_ray.get_run(run_id)
    assert (run.status, run.last_step, run.started_at) == ("cancelled", 0, None)


def test_no_password_in_what_ray_shows_of_a_job_on_postgresql(home, ray_cluster, pg_head_url,
                                                               monkeypatch, capsys):
    url = pg_head_url.replace("gptdash@", f"gptdash:{PASSWORD}@")
    monkeypatch.setenv("GPTDASH_DB_URL", url)
    monkeypatch.setenv("GPTDASH_RAY_ADDRESS", ray_cluster.address)
    code, out, err = gptdash(capsys, "submit", *MICRO, "--set", "max_steps=4",
                             "--set", "eval_interval=2", "--on", "ray")
    assert code == 0, err
    store = RunStore(url)
    run_id = int(out)
    wait_for(status_is(store, run_id, *FINISHED), "the run to end")
    run = store.get_run(run_id)
    assert run.status == RunStatus.COMPLETED, run.error  # its job reached the database
    store.close()

    client = ray_executor.connect().client
    info = client.get_job_info(run.worker)
    with urllib.request.urlopen(f"{ray_cluster.address}/api/jobs/", timeout=30) as answer:
        shown = [answer.read().decode(), info.model_dump_json(),
                 json.dumps([job.model_dump(mode="json") for job in client.list_jobs()])]
    logs = [p for p in ray_cluster.folder.rglob("*") if p.suffix in (".log", ".out", ".err")]
    assert any(p.name.startswith("runtime_env_agent") for p in logs)
    shown += [p.read_text(errors="replace") for p in logs if p.is_file()]
    assert [text for text in shown if PASSWORD in text] == []
    assert info.runtime_env["env_vars"]["GPTDASH_DB_URL"] == pg_head_url


def _password_libpq_sends(env: dict[str, str], monkeypatch) -> str:
    """The password libpq sends when a job connects with ``env`` (its URL and PGPASSFILE)."""
    monkeypatch.setenv("PGPASSFILE", env["PGPASSFILE"])
    engine = make_engine(env["GPTDASH_DB_URL"])
    try:
        with engine.connect() as connection:
            return connection.connection.dbapi_connection.info.password
    finally:
        engine.dispose()


def test_a_jobs_database_password_is_in_a_file_for_its_user_alone_where_libpq_finds_it(
        home, pg_head_url, monkeypatch):
    password = "S3c:r\\et pw"
    env = db_env(pg_head_url.replace("gptdash@", f"gptdash:{quote(password, safe='')}@"))
    assert env["GPTDASH_DB_URL"] == pg_head_url
    passfile = Path(env["PGPASSFILE"])
    assert passfile.is_relative_to(home)
    assert [S_IMODE(p.stat().st_mode) for p in (passfile, passfile.parent)] == [0o600, 0o700]
    assert _password_libpq_sends(env, monkeypatch) == password
    sqlite = f"sqlite:///{home / 'gptdash.db'}"
    assert db_env(sqlite) == {"GPTDASH_DB_URL": sqlite}  # nothing to hide, nothing written
    # libpq also takes the password as a query parameter: it leaves the URL all the same.
    in_query = db_env(f"{pg_head_url}?connect_timeout=5&password={quote(password, safe='')}")
    assert in_query["GPTDASH_DB_URL"] == f"{pg_head_url}?connect_timeout=5"
    assert "S3c" not in in_query["GPTDASH_DB_URL"]
    assert _password_libpq_sends(in_query, monkeypatch) == password


@pytest.mark.parametrize("command", [["submit"], ["sweep", "--grid", "lr=1e-3,3e-3"]])
def test_a_cluster_that_does_not_answer_is_one_line_and_queues_nothing(home, monkeypatch,
                                                                       capsys, command):
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("GPTDASH_RAY_ADDRESS", f"http://127.0.0.1:{port}")
    code, out, err = gptdash(capsys, *command, *MICRO, "--on", "ray")
    assert (code, out) == (2, "")
    assert err.startswith(f"gptdash: No Ray cluster answers at http://127.0.0.1:{port}")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    store = RunStore()
    assert (store.list_runs(), store.list_sweeps()) == ([], [])


def test_on_ray_without_an_address_says_to_set_it(home, monkeypatch, capsys):
    monkeypatch.delenv("GPTDASH_RAY_ADDRESS", raising=False)
    code, out, err = gptdash(capsys, "submit", *MICRO, "--on", "ray")
    assert (code, out) == (2, "")
    assert err == ("gptdash: --on ray needs GPTDASH_RAY_ADDRESS: set it to the Ray cluster's "
                   "dashboard address, e.g. http://head:8265\n")
    assert RunStore().list_runs() == []


def test_on_ray_without_ray_installed_says_how_to_install_it(home, monkeypatch, capsys):
    monkeypatch.setenv("GPTDASH_RAY_ADDRESS", "http://127.0.0.1:8265")
    monkeypatch.setitem(sys.modules, "ray.job_submission", None)  # as if the extra were missing
    code, out, err = gptdash(capsys, "submit", *MICRO, "--on", "ray")
    assert (code, out) == (2, "")
    assert err == ("gptdash: --on ray needs Ray, which is not installed here: pip install "
                   "'gptdash[ray]' (make setup does)\n")
    assert RunStore().list_runs() == []


def test_migration_0005_gives_older_runs_the_local_executor(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    try:
        upgrade(engine, to="0004")
        with engine.begin() as connection:
            connection.execute(text(
                "INSERT INTO runs (name, status, config, tags, notes, created_at, stop_requested,"
                " last_step, max_steps, tokens_seen) VALUES ('old', 'queued', '{}', '[]', '',"
                " '2024-01-01 00:00:00', 0, 0, 10, 0)"))
    finally:
        engine.dispose()
    store = RunStore(url)  # SQLite is upgraded in place as it opens
    try:
        assert store.get_run(1).executor == Executor.LOCAL
        assert store.claim_next_queued("w").run_id == 1  # an older queued run is a plain worker's
    finally:
        store.close()


@pytest.mark.backends("sqlite", "postgresql")
def test_a_plain_worker_never_claims_a_ray_run(store: RunStore) -> None:
    on_ray = store.create_run("on ray", {}, executor=Executor.RAY)
    store.update_run(on_ray, worker="gptdash-run-1-1")
    local = store.create_run("local", {})
    assert store.claim_next_queued("w", host="h", pid=1).run_id == local
    assert store.claim_next_queued("w", host="h", pid=1) is None
    assert store.get_run(on_ray).status == RunStatus.QUEUED
    # Only the job the row names takes it, once.
    assert not store.claim_ray_run(on_ray, "gptdash-run-1-2", host="h", pid=2)
    assert store.claim_ray_run(on_ray, "gptdash-run-1-1", host="h", pid=2)
    assert not store.claim_ray_run(on_ray, "gptdash-run-1-1", host="h", pid=3)
    run = store.get_run(on_ray)
    assert (run.status, run.worker, run.owner_pid) == ("running", "gptdash-run-1-1", 2)


def test_the_supervisor_runs_its_checks_beside_its_children_and_says_a_failure_once():
    calls = []

    def check() -> list[str]:
        calls.append(len(calls))
        if len(calls) == 1:
            return ["run 1: settled"]
        raise RuntimeError("the cluster hiccuped")

    said: list[str] = []
    supervisor = Supervisor([], say=said.append, periodic=[Periodic("check", 0.0, check)])
    threading.Timer(1.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
    assert supervisor.run() == 0
    assert len(calls) >= 3
    assert said == ["run 1: settled", "the check failed: the cluster hiccuped"]


def test_serve_reconciles_only_with_an_address_and_an_unreachable_cluster_is_silent(
        store, monkeypatch):
    monkeypatch.delenv("GPTDASH_RAY_ADDRESS", raising=False)
    assert checks(store) == []
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("GPTDASH_RAY_ADDRESS", f"http://127.0.0.1:{port}")
    run_id = store.create_run("on ray", {}, executor=Executor.RAY)
    store.update_run(run_id, worker="gptdash-run-1-1")
    (reconciler,) = checks(store)
    assert reconciler.call() == []
    assert store.get_run(run_id).status == RunStatus.QUEUED


@pytest.mark.backends("sqlite", "postgresql")
def test_a_dead_ray_jobs_run_waits_for_the_reconciler_until_its_heartbeat_is_old(
        store: RunStore) -> None:
    on_ray = store.create_run("on ray", {}, executor=Executor.RAY)
    store.update_run(on_ray, worker="gptdash-run-1-1")
    assert store.claim_ray_run(on_ray, "gptdash-run-1-1", host="here", pid=123)
    local = store.create_run("local", {})
    store.claim_run(local, "here:124", host="here", pid=124)
    gone = lambda pid: False  # noqa: E731 - both owners' processes have died
    # Ray says why its job ended (jobs.ray_executor.reconcile); a plain worker's is gone.
    assert store.recover_orphans(host="here", pid_alive=gone, dead_after_s=60) == [local]
    assert store.get_run(on_ray).status == RunStatus.RUNNING
    assert store.recover_orphans(host="here", pid_alive=gone, dead_after_s=0) == [on_ray]


def test_a_killed_jobs_run_resumes_itself_as_a_new_job(on_ray, ray_cluster, capsys):
    # Long enough not to end on its own between step 15 and the kill on a quiet machine.
    code, out, err = gptdash(capsys, "submit", *MICRO, "--set", "max_steps=400",
                             "--set", "eval_interval=10", "--set", "checkpoint_interval=10",
                             "--on", "ray")
    assert code == 0, err
    run_id = int(out)
    wait_for(lambda: on_ray.get_run(run_id).last_step >= 15, "its job to train a while")
    run = on_ray.get_run(run_id)
    os.kill(entrypoint_pid(run_id, run.worker), signal.SIGKILL)
    wait_for(lambda: job_status(ray_cluster.address, run.worker)() == "FAILED",
             "Ray to see its job fail")
    # Any command's recovery pass marks it, once the trainer is seen gone (the killed process
    # may still be a zombie for a moment on a busy machine).
    said = f"run {run_id}: Ray job {run.worker} ended (FAILED); marked interrupted"
    deadline = time.monotonic() + 30
    while said not in (err := gptdash(capsys, "list")[2]) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert said in err
    dead = on_ray.get_run(run_id)
    assert dead.status == RunStatus.INTERRUPTED and dead.resume_after is not None
    on_ray.update_run(run_id, resume_after=dead.finished_at)  # its back-off has passed

    code, out, err = gptdash(capsys, "list")  # nobody resumes it: the reconciler does
    resumed = on_ray.get_run(run_id)
    assert (f"run {run_id} resumes by itself (automatic resume 1 of 3) as Ray job "
            f"{resumed.worker}") in err
    assert resumed.worker != run.worker and resumed.auto_resumes == 1
    wait_for(status_is(on_ray, run_id, *FINISHED), "the resumed run to end")
    assert on_ray.get_run(run_id).status == RunStatus.COMPLETED
    assert train_steps(on_ray, run_id) == list(range(400))
    (note,) = [e for e in on_ray.event_rows([run_id]) if e.kind == "auto_resume"]
    assert note.message.startswith(f"attempt 2, automatic resume 1 of 3: the previous attempt "
                                   f"ended: its Ray job {run.worker} ended (FAILED)")
