"""Runs that lose nothing: a restart before the first checkpoint, SIGTERM/SIGHUP and a second
Ctrl-C on the CLI, init_from and prompts refused in one line, and the time spent training."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from test_cli import (  # noqa: F401 (the fixture is autouse here too)
    MICRO,
    ROOT,
    _no_process_outlives_its_test,
    _spawned,
    _wait_for_training,
    as_from_a_terminal,
    gptdash,
    spawn,
)
from test_jobs import claim, micro

from gptcore.callbacks import TrainerCallbacks
from gptcore.checkpoint import check_checkpoint_file
from gptcore.errors import GptdashError
from gptcore.trainer import Trainer
from jobs import runner
from jobs.bridge import Chain, StoreCallbacks
from storage.queue import INTERRUPTED_ERROR, INTERRUPTED_NO_CHECKPOINT_ERROR
from storage.schema import utcnow
from storage.status import RunStatus
from storage.store import RunStore

LEGACY = Path(__file__).parent / "data" / "gptdash-8635e74.db"


def _crash_at(monkeypatch, step: int) -> None:
    """Training batches fail from ``step`` on: an attempt that dies mid-run."""
    real = Trainer._batch

    def crash(self, split, gen):
        if gen is self.data_gen and self.step >= step:
            raise RuntimeError("the machine went away")
        return real(self, split, gen)

    monkeypatch.setattr(Trainer, "_batch", crash)


# ---- 1. resume before the first checkpoint ---------------------------------------------------
def test_a_run_that_died_before_its_first_checkpoint_restarts_from_step_0_cleanly(
        store, monkeypatch):
    run_id = runner.create_run(store, micro(checkpoint_interval=1000))
    claim(store, run_id)
    with monkeypatch.context() as patch:
        _crash_at(patch, 15)
        runner.execute_run(store, run_id)
    dead = store.get_run(run_id)
    assert dead.status == RunStatus.FAILED and dead.checkpoint_path is None
    assert len(store.samples(run_id)) == 2  # steps 0 and 10 of the dead attempt
    restarted_at = time.time()

    assert runner.can_resume(store, run_id)
    assert runner.queue_resume(store, run_id) == (
        f"run {run_id} has no checkpoint yet: restarting from step 0")
    claim(store, run_id)
    assert runner.execute_run(store, run_id).status == RunStatus.COMPLETED
    run = store.get_run(run_id)
    assert run.last_step == 20 and run.checkpoint_path
    losses = store.metrics([run_id], ["train/loss"])
    assert list(losses["step"]) == list(range(20))
    # Every row is the fresh attempt's: none of the dead one's samples or events is left.
    assert (store.metrics([run_id])["wall_time"] >= restarted_at).all()
    assert sorted(store.samples(run_id)["step"]) == [0, 10, 20]
    assert all(e.wall_time >= restarted_at for e in store.event_rows([run_id]))


def test_resume_drops_what_the_dead_attempt_logged_after_the_checkpoint_keeps_the_best(store):
    run_id = runner.create_run(store, micro(max_steps=40))
    claim(store, run_id)
    store.request_stop(run_id)
    runner.execute_run(store, run_id)
    assert store.get_run(run_id).last_step < 40
    # What a killed attempt had logged past the checkpoint, at a step the resume never reaches.
    store.log_metrics(run_id, [("train/loss", 39, 9.0, 0.0), ("val/loss", 45, 9.0, 0.0)])
    store.log_event(run_id, 45, "spike", "from the dead attempt")
    # A best evaluation before the checkpoint that the resumed attempt never beats.
    store.log_metrics(run_id, [("val/loss", 0, 0.5, 0.0)])
    assert runner.queue_resume(store, run_id) == f"run {run_id} resumes from its last checkpoint"
    claim(store, run_id)
    assert runner.execute_run(store, run_id).status == RunStatus.COMPLETED
    assert 9.0 not in set(store.metrics([run_id])["value"])
    assert all(e.step <= 40 for e in store.event_rows([run_id]))
    assert store.get_run(run_id).best_val_loss == 0.5  # the run's best, not this attempt's


@pytest.mark.backends("sqlite", "postgresql")
def test_an_orphaned_run_is_told_whether_it_has_a_checkpoint_and_ends_at_its_last_beat(store):
    with_ckpt, without = store.create_run("saved", {}), store.create_run("unsaved", {})
    for run_id in (with_ckpt, without):
        store.claim_run(run_id, "w", host="here", pid=100 + run_id)
    store.update_run(with_ckpt, checkpoint_path="/runs/1/latest.pt")
    beat = utcnow() - timedelta(minutes=10)
    store.update_run(without, heartbeat_at=beat)

    assert sorted(store.recover_orphans(host="here", pid_alive=lambda pid: False,
                                        dead_after_s=3600)) == [with_ckpt, without]
    saved, unsaved = store.get_run(with_ckpt), store.get_run(without)
    assert saved.error.endswith("resume it to continue from its last checkpoint")
    assert "last checkpoint" not in unsaved.error
    assert unsaved.error.endswith("it saved no checkpoint yet: resume it to restart from step 0")
    assert unsaved.finished_at == beat  # not when someone noticed, ten minutes later


@pytest.mark.backends("sqlite", "postgresql")
def test_mark_interrupted_words_by_checkpoint_and_ends_at_the_last_beat(store):
    with_ckpt, without = store.create_run("saved", {}), store.create_run("unsaved", {})
    for run_id in (with_ckpt, without):
        store.update_run(run_id, status=RunStatus.RUNNING, worker="host:1")
    store.update_run(with_ckpt, checkpoint_path="/runs/1/latest.pt")
    beat = utcnow() - timedelta(minutes=10)
    store.update_run(without, heartbeat_at=beat)
    assert store.mark_interrupted() == [with_ckpt, without]
    assert store.get_run(with_ckpt).error == INTERRUPTED_ERROR
    unsaved = store.get_run(without)
    assert unsaved.error == INTERRUPTED_NO_CHECKPOINT_ERROR and unsaved.finished_at == beat


# ---- 3. a second Ctrl-C (in process; the CLI test below sends real signals) ------------------
class _AbortAt(TrainerCallbacks):
    """What the CLI's handler does at a second Ctrl-C: KeyboardInterrupt mid-training."""

    def __init__(self, step: int):
        self.step = step

    def on_metrics(self, step, metrics):
        if step >= self.step:
            raise KeyboardInterrupt("aborted by a second Ctrl-C")


@pytest.mark.parametrize("checkpoint_interval, status", [(1000, RunStatus.INTERRUPTED),
                                                          (5, RunStatus.STOPPED)])
def test_an_abort_ends_the_run_resumable_not_failed(store, checkpoint_interval, status):
    run_id = runner.create_run(store, micro(checkpoint_interval=checkpoint_interval))
    claim(store, run_id)
    with pytest.raises(KeyboardInterrupt):
        runner.execute_run(store, run_id, extra_callbacks=_AbortAt(12))
    run = store.get_run(run_id)
    assert run.status == status and run.finished_at is not None
    assert run.error.startswith("aborted by a second Ctrl-C at step")
    assert f"gptdash resume {run_id}" in run.error
    assert not list(runner.checkpoint_file(run_id).parent.glob(".*.tmp"))


# ---- SIGHUP: a display whose terminal is gone -----------------------------------------------
class _GoneTerminal(TrainerCallbacks):
    def on_metrics(self, step, metrics):
        raise OSError(5, "Input/output error")


def test_a_display_whose_terminal_closed_does_not_fail_the_run(store):
    run_id = runner.create_run(store, micro())
    claim(store, run_id)
    assert runner.execute_run(store, run_id, extra_callbacks=_GoneTerminal()).status == (
        RunStatus.COMPLETED)
    chain = Chain(StoreCallbacks(store, run_id, store.get_run(run_id).claim_token),
                  _GoneTerminal())
    chain.on_metrics(1, {"lr": 1.0})
    assert chain.other is None
    chain.close()


# ---- 4. init_from that is not a checkpoint ---------------------------------------------------
def test_init_from_a_file_that_is_not_a_checkpoint_is_refused_before_a_row(store, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("not a checkpoint\n")
    with pytest.raises(GptdashError, match="notes.txt is not a gptdash checkpoint"):
        runner.create_run(store, micro(init_from=str(notes)), check_device=False)
    zipped = tmp_path / "other.zip"
    shutil.make_archive(str(tmp_path / "other"), "zip", root_dir=tmp_path, base_dir="notes.txt")
    with pytest.raises(GptdashError, match="other.zip is not a gptdash checkpoint"):
        check_checkpoint_file(zipped)
    assert store.list_runs() == []


def test_a_real_checkpoint_passes_the_torch_free_check(store):
    run_id = runner.create_run(store, micro())
    claim(store, run_id)
    runner.execute_run(store, run_id)
    check_checkpoint_file(runner.checkpoint_file(run_id))
    child = runner.create_run(store, micro(init_from=str(runner.checkpoint_file(run_id))))
    assert store.get_run(child).status == RunStatus.QUEUED


def test_cli_refuses_init_from_a_text_file_in_one_line(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello\n")
    out = gptdash(tmp_path, "train", "--preset", "tiny", *MICRO, "--set", f"init_from={notes}")
    assert out.returncode == 2
    assert out.stderr.strip() == ("gptdash: notes.txt is not a gptdash checkpoint: give a run "
                                  "id (7, 7:best, 7:latest) or a .pt file that gptdash saved")
    assert RunStore(f"sqlite:///{tmp_path / 'gptdash.db'}").list_runs() == []


# ---- 5. a prompt longer than the context, or with terminal controls -------------------------
def test_sample_with_a_prompt_longer_than_the_context_continues_it_and_says_so(store, home):
    run_id = runner.create_run(store, micro(max_steps=2))  # context 16, byte-level tokenizer
    claim(store, run_id)
    runner.execute_run(store, run_id)
    out = gptdash(home, "sample", str(run_id), "--prompt", "x" * 40, "--max-new-tokens", "5")
    assert out.returncode == 0
    assert out.stdout.startswith("x" * 40)
    assert out.stderr.strip().splitlines() == [
        "gptdash: note: the prompt is 40 tokens and this model's context 16: it continues "
        "from the last 16"]


def test_sample_shows_escape_sequences_and_bidi_controls_escaped(store, home):
    run_id = runner.create_run(store, micro(max_steps=2))
    claim(store, run_id)
    runner.execute_run(store, run_id)
    prompt = "red \x1b[31mtext\u202e reversed\tand\nlines"
    out = gptdash(home, "sample", str(run_id), "--prompt", prompt, "--max-new-tokens", "30",
                  "--temperature", "2")
    assert out.returncode == 0
    assert out.stdout.startswith("red \\x1b[31mtext\\u202e reversed\tand\nlines")
    assert "\x1b" not in out.stdout and "\u202e" not in out.stdout


# ---- 6. duration: time spent training, over attempts -----------------------------------------
def test_duration_counts_training_not_the_day_a_stopped_run_waited(store):
    run_id = runner.create_run(store, micro(max_steps=40))
    claim(store, run_id)
    store.request_stop(run_id)
    runner.execute_run(store, run_id)
    first = store.get_run(run_id)
    assert first.status == RunStatus.STOPPED and 0 < first.duration_s < 600
    # Resumed a day later.
    store.update_run(run_id, started_at=first.started_at - timedelta(days=1),
                     finished_at=first.finished_at - timedelta(days=1))
    runner.queue_resume(store, run_id)
    claim(store, run_id)
    assert runner.execute_run(store, run_id).status == RunStatus.COMPLETED
    run = store.get_run(run_id)
    assert first.duration_s < run.duration_s < 600
    frame = store.runs_frame().set_index("id")
    assert frame.loc[run_id, "duration_s"] == pytest.approx(run.duration_s)


@pytest.mark.backends("sqlite", "postgresql")
def test_duration_is_the_recorded_training_time_when_there_is_one(store):
    run_id = store.create_run("r", {})
    store.set_status(run_id, RunStatus.RUNNING)
    store.update_run(run_id, started_at=utcnow() - timedelta(days=2), trained_s=90.0)
    store.set_status(run_id, RunStatus.STOPPED)
    assert store.get_run(run_id).duration_s == 90.0
    assert store.runs_frame().set_index("id").loc[run_id, "duration_s"] == 90.0


def test_show_gives_the_time_spent_training(store, home):
    run_id = store.create_run("r", {}, status=RunStatus.RUNNING)
    store.update_run(run_id, started_at=utcnow() - timedelta(days=2), trained_s=90.0)
    store.set_status(run_id, RunStatus.STOPPED)
    out = gptdash(home, "show", str(run_id))
    assert out.returncode == 0 and json.loads(out.stdout)["duration_s"] == 90.0


def test_a_database_from_before_0004_keeps_its_runs_durations(tmp_path):
    path = tmp_path / LEGACY.name
    shutil.copyfile(LEGACY, path)
    store = RunStore(f"sqlite:///{path}")
    try:
        done = store.get_run(1)
        assert done.trained_s == pytest.approx(
            (done.finished_at - done.started_at).total_seconds())
        assert store.get_run(3).trained_s is None  # queued: never trained
    finally:
        store.close()


# ---- 2. and 3. through the CLI: real signals to a real process -------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_stop_like_ctrl_c(tmp_path, sig):
    proc = spawn(tmp_path, "train", "--preset", "tiny", *MICRO, "--set", "max_steps=100000",
                 "--quiet")
    store, run_id = _wait_for_training(tmp_path, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 128 + sig
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if f"run {run_id} stopped at step" in line]
    assert len(lines) == 1 and f"gptdash resume {run_id}" in lines[0]
    run = store.get_run(run_id)
    assert run.status == RunStatus.STOPPED and runner.can_resume(store, run_id)
    assert Path(run.checkpoint_path).is_file()


def test_sigterm_stops_an_nproc_2_run_trained_as_torchrun_children(tmp_path):
    proc = spawn(tmp_path, "train", "--preset", "tiny", *MICRO, "--set", "max_steps=100000",
                 "--set", "nproc=2", "--set", "log_interval=5", "--quiet")
    store, run_id = _wait_for_training(tmp_path, proc)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in err and f"run {run_id} stopped at step" in err
    run = store.get_run(run_id)
    assert run.status == RunStatus.STOPPED and Path(run.checkpoint_path).is_file()


def test_a_hang_up_of_the_whole_terminal_stops_an_nproc_2_run_with_a_checkpoint(tmp_path):
    """The terminal signals its whole process group: torchrun must not get it and kill the
    ranks mid-step; the supervisor stops them through the run's flag."""
    env = {**os.environ, "GPTDASH_HOME": str(tmp_path), "PYTHONUNBUFFERED": "1"}
    env.pop("GPTDASH_DB_URL", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "jobs", "train", "--preset", "tiny", *MICRO, "--set",
         "max_steps=100000", "--set", "nproc=2", "--set", "log_interval=5", "--quiet"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own group, as a terminal's, that the test can signal
        preexec_fn=as_from_a_terminal)
    _spawned.append(proc)
    store, run_id = _wait_for_training(tmp_path, proc)
    os.killpg(proc.pid, signal.SIGHUP)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 128 + signal.SIGHUP, err
    run = store.get_run(run_id)
    assert run.status == RunStatus.STOPPED and Path(run.checkpoint_path).is_file()


def test_a_second_signal_aborts_at_once_and_the_hint_works(tmp_path):
    proc = spawn(tmp_path, "train", "--preset", "tiny", *MICRO, "--set", "max_steps=100000",
                 "--set", "checkpoint_interval=100000", "--quiet")
    store, run_id = _wait_for_training(tmp_path, proc)
    # Both pending while it is paused, so the second lands before the first stop completes
    # (two SIGINTs would merge into one pending signal).
    os.kill(proc.pid, signal.SIGSTOP)
    os.kill(proc.pid, signal.SIGINT)
    os.kill(proc.pid, signal.SIGTERM)
    os.kill(proc.pid, signal.SIGCONT)
    _, err = proc.communicate(timeout=180)
    assert "Traceback" not in err
    # Which of the two pending signals Python handles first is not fixed once the trainer has
    # threads (another thread may take one and trip its flag later): the exit code is the
    # first's, and the line names the second.
    orders = {130: ("Ctrl-C", "SIGTERM"), 143: ("SIGTERM", "Ctrl-C")}
    assert proc.returncode in orders, (proc.returncode, err)
    first, second = orders[proc.returncode]
    lines = err.splitlines()
    (at,) = [i for i, line in enumerate(lines) if "aborted" in line]
    assert lines[at - 1] == "", err  # a new line: the terminal's echoed ^C^C ends the one before
    assert lines[at].startswith(f"run {run_id} aborted by a second {second}; resume it with "
                                f"`gptdash resume {run_id}` (no checkpoint yet"), (first, err)
    run = store.get_run(run_id)
    assert run.status == RunStatus.INTERRUPTED and run.checkpoint_path is None

    store.update_run(run_id, config={**run.config, "max_steps": 30}, max_steps=30)
    out = gptdash(tmp_path, "resume", str(run_id), "--quiet")
    assert out.returncode == 0, out.stderr
    assert f"run {run_id} has no checkpoint yet: restarting from step 0" in out.stderr
    assert store.get_run(run_id).status == RunStatus.COMPLETED
    assert list(store.metrics([run_id], ["train/loss"])["step"]) == list(range(30))


def test_resume_queue_of_a_run_without_checkpoint_says_it_restarts(store, home):
    run_id = store.create_run("dead early", micro().to_dict(), max_steps=20)
    store.set_status(run_id, RunStatus.RUNNING)
    store.set_status(run_id, RunStatus.INTERRUPTED)
    out = gptdash(home, "resume", str(run_id), "--queue")
    assert out.returncode == 0, out.stderr
    assert "no checkpoint yet: restarting from step 0" in out.stdout
    assert store.get_run(run_id).status == RunStatus.QUEUED
