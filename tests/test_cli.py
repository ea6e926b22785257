"""The `gptdash` CLI as a user runs it: exit codes, one-line messages, Ctrl-C, kill -9."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_jobs import wait_for

from gptcore.metric_keys import LR
from storage.store import RunStore

ROOT = Path(__file__).resolve().parent.parent
MICRO = ["--set", "context_length=16", "--set", "emb_dim=32", "--set", "n_layers=2",
         "--set", "batch_size=8", "--set", "eval_interval=10", "--set", "eval_iters=2",
         "--set", "sample_tokens=8", "--set", "warmup_steps=2", "--set", "device=cpu"]


def python_in(home, code: str) -> subprocess.CompletedProcess:
    """``code`` run by a fresh interpreter on ``home`` (SQLite): what a new process imports."""
    env = {**os.environ, "GPTDASH_HOME": str(home)}
    env.pop("GPTDASH_DB_URL", None)
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


def gptdash(home, *args, timeout=120):
    env = {**os.environ, "GPTDASH_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    env.pop("GPTDASH_DB_URL", None)
    return subprocess.run([sys.executable, "-m", "jobs", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


_spawned: list[subprocess.Popen] = []


def as_from_a_terminal() -> None:
    """In the child: hang-ups and Ctrl-C as a process started from a terminal gets them. A
    suite run under nohup passes SIGHUP on as ignored, one started in the background of a
    script (``cmd &``) passes SIGINT on as ignored, and gptdash rightly keeps them ignored."""
    for signum in (signal.SIGHUP, signal.SIGINT):
        signal.signal(signum, signal.SIG_DFL)


def spawn(home, *args):
    env = {**os.environ, "GPTDASH_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    env.pop("GPTDASH_DB_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "jobs", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=as_from_a_terminal)
    _spawned.append(proc)
    return proc


@pytest.fixture(autouse=True)
def _no_process_outlives_its_test():
    """A test that fails half-way must not leave its `gptdash train` training on."""
    yield
    while _spawned:
        proc = _spawned.pop()
        if proc.poll() is None:
            try:
                if os.getpgid(proc.pid) == proc.pid:  # a group of its own: its children too
                    os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.kill()
            proc.communicate()


@pytest.mark.parametrize(
    "args, message",
    [(["--set", "lr=abc"], "gptdash: lr must be a number, not 'abc'"),
     (["--set", "n_heads=5"], "emb_dim 96 is not divisible by n_heads 5"),
     (["--set", "lrr=1"], "unknown setting 'lrr' (did you mean lr?)"),
     (["--set", "batch_size=0"], "batch_size must be at least 1, not 0"),
     (["--set", "lr"], "--set takes key=value"),
     (["--set", "schedule=wsd", "--set", "decay_fraction=0"],
      "decay_fraction must be greater than 0.0, not 0.0")],
)
def test_bad_set_values_exit_2_with_one_line_and_no_run(tmp_path, args, message):
    out = gptdash(tmp_path, "train", "--preset", "tiny", *args)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert RunStore(f"sqlite:///{tmp_path / 'gptdash.db'}").list_runs() == []


def test_train_list_show_and_sample(tmp_path):
    out = gptdash(tmp_path, "train", "--preset", "tiny", *MICRO, "--set", "max_steps=20",
                  "--name", "cli run")
    assert out.returncode == 0, out.stderr
    assert "run 1 'cli run' completed at step 20" in out.stdout
    listing = gptdash(tmp_path, "list")
    assert "completed" in listing.stdout and "cli run" in listing.stdout
    assert '"status": "completed"' in gptdash(tmp_path, "show", "1").stdout
    sample = gptdash(tmp_path, "sample", "1", "--prompt", "The ", "--max-new-tokens", "20",
                     "--seed", "1")
    assert sample.returncode == 0 and sample.stdout.startswith("The ")
    assert len(sample.stdout.strip()) > len("The")


def test_unknown_run_is_a_clear_error(tmp_path):
    out = gptdash(tmp_path, "show", "42")
    assert out.returncode == 2 and "run 42 does not exist" in out.stderr


def _wait_for_training(home, proc, timeout=180):
    store = RunStore(f"sqlite:///{home / 'gptdash.db'}")
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        runs = store.list_runs()
        if runs and runs[0].last_step >= 20:
            return store, runs[0].id
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    raise AssertionError("training did not start")


def test_ctrl_c_stops_within_a_step_saves_a_checkpoint_and_prints_one_line(tmp_path):
    proc = spawn(tmp_path, "train", "--preset", "tiny", *MICRO, "--set", "max_steps=100000",
                 "--quiet")
    store, run_id = _wait_for_training(tmp_path, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130
    assert "Traceback" not in err
    assert f"run {run_id} stopped at step" in err and "gptdash resume" in err
    run = store.get_run(run_id)
    assert run.status == "stopped"
    assert Path(run.checkpoint_path).is_file()


def test_kill_9_then_list_shows_interrupted_and_resume_continues_with_no_server(tmp_path):
    # An end it never reaches (a fast machine finished 400 steps before the kill).
    proc = spawn(tmp_path, "train", "--preset", "tiny", *MICRO, "--set", "max_steps=100000",
                 "--set", "checkpoint_interval=10", "--quiet")
    store, run_id = _wait_for_training(tmp_path, proc)
    assert wait_for(lambda: store.get_run(run_id).checkpoint_path), "no checkpoint was saved"
    proc.kill()
    proc.wait()
    # No server, no page: the next command that reads runs finds the owner gone.
    listing = gptdash(tmp_path, "list")
    assert listing.returncode == 0
    assert f"{run_id:>4}  interrupted" in listing.stdout, listing.stdout
    run = store.get_run(run_id)
    end = run.last_step + 30  # a reachable end, past every step recorded before the kill
    store.update_run(run_id, config={**run.config, "max_steps": end}, max_steps=end)
    out = gptdash(tmp_path, "resume", str(run_id), "--quiet")
    assert out.returncode == 0, out.stderr
    assert "restarting from step 0" not in out.stderr  # from its checkpoint
    assert store.get_run(run_id).status == "completed"
    steps = store.metrics([run_id], ["train/loss"])["step"]
    assert list(steps) == list(range(end))  # the resumed part fills in every step after it


def test_list_with_an_unknown_status_names_the_valid_ones(tmp_path):
    out = gptdash(tmp_path, "list", "--status", "bogus")
    assert out.returncode == 2
    assert "'bogus' is not a run status" in out.stderr
    assert all(status in out.stderr for status in ("queued", "running", "interrupted"))
    assert "no runs yet" not in out.stdout


def test_a_wsd_run_trains_on_its_schedule_and_is_forecast(tmp_path):
    out = gptdash(tmp_path, "train", "--preset", "tiny", *MICRO, "--set", "max_steps=60",
                  "--set", "log_interval=1", "--set", "schedule=wsd",
                  "--set", "decay_fraction=0.5")
    assert out.returncode == 0, out.stderr
    store = RunStore(f"sqlite:///{tmp_path / 'gptdash.db'}")
    lr = dict(zip(*(store.metrics([1], [LR])[c] for c in ("step", "value")), strict=True))
    store.close()
    assert lr[10] == lr[29] == pytest.approx(3e-3)  # stable until the last half (30 steps)
    assert lr[30] > lr[45] > lr[59] > 3e-4
    forecast = json.loads(gptdash(tmp_path, "forecast", "1").stdout)
    assert forecast["max_steps"] == 60 and forecast["low"] <= forecast["predicted_final"]


def test_submit_queues_a_run_and_prints_its_id_without_training(tmp_path):
    out = gptdash(tmp_path, "submit", "--preset", "tiny", *MICRO, "--name", "later")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "1"
    listing = gptdash(tmp_path, "list", "--status", "queued")
    assert "later" in listing.stdout and "queued" in listing.stdout


def test_submit_refuses_bad_input_like_train(tmp_path):
    out = gptdash(tmp_path, "submit", "--preset", "tiny", "--set", "n_heads=5")
    assert out.returncode == 2 and "not divisible by n_heads 5" in out.stderr
    assert RunStore(f"sqlite:///{tmp_path / 'gptdash.db'}").list_runs() == []


def test_light_commands_do_not_import_torch(tmp_path):
    """`gptdash list` is typed dozens of times a day: it must not pay for torch. Each command
    succeeds, so each ran its whole path, not a refusal before it."""
    code = ("import sys\nfrom jobs.cli import main\n"
            "codes = [main(['submit', '--preset', 'tiny', '--set', 'max_steps=50']),\n"
            "         main(['list']), main(['show', '1']), main(['stop', '1'])]\n"
            "print(codes, 'torch' in sys.modules)")
    out = python_in(tmp_path, code)
    assert out.returncode == 0, out.stderr
    assert "run 1 cancelled" in out.stdout  # stop found the queued run that submit made
    assert out.stdout.strip().splitlines()[-1] == "[0, 0, 0, 0] False", out.stderr


def test_train_refuses_a_bad_value_before_it_imports_torch(tmp_path):
    """A typo in `gptdash train` is answered at once, not after torch's 1-2 s import."""
    code = ("import sys\nfrom jobs.cli import main\n"
            "code = main(['train', '--preset', 'tiny', '--set', 'lr=abc'])\n"
            "print(code, 'torch' in sys.modules)")
    out = python_in(tmp_path, code)
    assert "lr must be a number, not 'abc'" in out.stderr
    assert out.stdout.strip().splitlines()[-1] == "2 False"


def test_list_and_show_do_not_import_pandas(tmp_path):
    """pandas costs a third of a second to import; `list` and `show` answer without it."""
    store = RunStore(f"sqlite:///{tmp_path / 'gptdash.db'}")
    run_id = store.create_run("with an event", {}, max_steps=10)
    store.log_event(run_id, 3, "spike", "loss 9.0 at step 3")
    store.close()
    code = ("import sys\nfrom jobs.cli import main\nmain(['list'])\n"
            f"main(['show', '{run_id}'])\nprint('pandas' in sys.modules)")
    out = python_in(tmp_path, code)
    assert out.returncode == 0, out.stderr
    assert '"kind": "spike"' in out.stdout  # show lists the event
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_plan_answers_without_torch_and_proposes_a_ladder_on_an_empty_database(tmp_path):
    code = ("import sys\nfrom jobs.cli import main\n"
            "code = main(['plan', '--flops', '1e14', '--json'])\n"
            "print(code, 'torch' in sys.modules)")
    out = python_in(tmp_path, code)
    assert out.returncode == 0, out.stderr
    *report, last = out.stdout.strip().splitlines()
    assert last == "0 False", out.stderr
    plan = json.loads(report[-1])
    assert plan["mode"] == "prior" and plan["ladder"]["runs"]
    refused = gptdash(tmp_path, "plan", "--budget", "2h")
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert "recorded its tokens/s" in refused.stderr
