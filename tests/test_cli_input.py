"""Bad input to `gptdash` gets one clear line on stderr, exit 2, and nothing written (issue 15).

Commands run in this process through ``main`` (as ``python -m jobs`` calls it), except where
what a fresh process does (a closed pipe, its imports) is the point.
"""

import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
from test_cli import MICRO, ROOT, python_in

from jobs.cli import main
from storage.errors import StorageError
from storage.store import RunStore


def db(home) -> RunStore:
    return RunStore(f"sqlite:///{home / 'gptdash.db'}")


@pytest.fixture
def gptdash(home, capsys):
    """Run a command in the test's home folder: its exit code, stdout and stderr."""
    def run(*args: str) -> SimpleNamespace:
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse's usage errors
            code = exc.code
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)
    return run


def refused(out: SimpleNamespace, *fragments: str) -> None:
    """Exit 2 with one line on stderr that holds every fragment, and no traceback."""
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def nothing_written(home) -> None:
    store = db(home)
    try:
        assert store.list_runs() == [] and store.list_sweeps() == []
    finally:
        store.close()


@pytest.mark.parametrize("command", ["train", "submit"])
@pytest.mark.parametrize("vocab", ["1000", "1000000"])
def test_a_vocab_the_byte_tokenizer_cannot_make_is_refused_before_training(
        home, gptdash, command, vocab):
    out = gptdash(command, *MICRO, "--set", f"vocab_size={vocab}", "--set", "max_steps=5")
    refused(out, f"vocab_size {vocab} is more than the byte tokenizer needs (it makes 256 ids)",
            "set it to 0 (automatic) or 256")
    nothing_written(home)


def test_a_corpus_folder_with_nothing_to_read_says_so(home, gptdash, tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00")
    out = gptdash("submit", *MICRO, "--set", f"corpus={folder}")
    refused(out, f"corpus folder '{folder}' has no text, JSON Lines or Parquet files in it")
    nothing_written(home)


@pytest.mark.parametrize("port", ["99999", "0", "http"])
def test_serve_refuses_a_port_out_of_range_in_one_line(home, gptdash, port):
    out = gptdash("serve", "--port", port)
    refused(out, f"gptdash serve: argument --port: {port!r} is not a port: use a number from 1 "
                 "to 65535 (see `gptdash serve --help`)")


@pytest.mark.parametrize("args, fragments", [
    ([], ["gptdash: the following arguments are required: COMMAND", "gptdash --help"]),
    (["trian"], ["invalid choice: 'trian'", "gptdash --help"]),
    (["show"], ["gptdash show: the following arguments are required: run_id"]),
    (["show", "one"], ["gptdash show: argument run_id: invalid int value: 'one'"]),
    (["list", "--status", "done"], ["'done' is not a run status", "gptdash list --help"]),
    (["train", "--preset", "huge"], ["gptdash train: argument --preset: invalid choice"]),
    (["db"], ["gptdash db: the following arguments are required"]),
])
def test_every_usage_error_is_one_line_without_the_usage(home, gptdash, args, fragments):
    refused(gptdash(*args), *fragments)


@pytest.mark.parametrize("args", [["show", "99999999999999999999999"],
                                  ["stop", "--sweep", "2147483648"],
                                  ["resume", "--", "-2147483649"]])
def test_an_id_past_what_the_database_holds_is_refused_as_such(home, gptdash, args):
    refused(gptdash(*args), "is past the largest id, 2147483647: no run or sweep has it")


def test_list_filtered_to_nothing_does_not_say_there_are_no_runs_yet(home, gptdash):
    assert gptdash("submit", *MICRO, "--set", "max_steps=5").returncode == 0
    out = gptdash("list", "--tag", "")
    assert (out.returncode, out.stdout) == (0, "no runs\n")


def test_a_config_that_nests_too_deeply_is_one_line(home, gptdash, tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 300_000 + "]" * 300_000)  # 600 KB: past Python's recursion limit
    for command in ("submit", "train"):
        refused(gptdash(command, "--config", str(deep)), "config nests objects or lists too "
                "deeply to read", "'model' the only object inside it")
    nothing_written(home)


def test_a_config_that_is_a_directory_says_so(home, gptdash, tmp_path):
    refused(gptdash("submit", "--config", str(tmp_path)),
            f"--config '{tmp_path}' is a directory: give the JSON file in it")
    refused(gptdash("submit", "--config", str(tmp_path / "none.json")),
            f"config file '{tmp_path / 'none.json'}' does not exist")
    nothing_written(home)


def test_a_config_from_a_pipe_is_read(home):
    # `--config <(jq ... base.json)` or `--config /dev/stdin` hands over a pipe, not a
    # regular file: it used to be refused as "does not exist".
    env = {**os.environ, "GPTDASH_HOME": str(home)}
    env.pop("GPTDASH_DB_URL", None)
    out = subprocess.run([sys.executable, "-m", "jobs", "submit", "--config", "/dev/stdin"],
                         cwd=ROOT, env=env, input='{"max_steps": ', capture_output=True,
                         text=True, timeout=60)
    refused(out, "config is not valid JSON")
    nothing_written(home)


def test_forecast_of_a_missing_run_answers_before_loading_scipy_or_pandas(home):
    db(home).close()
    out = python_in(home, "import sys\nfrom jobs.cli import main\ncode = main(['forecast', '7'])\n"
                          "print(code, 'scipy' in sys.modules, 'pandas' in sys.modules)")
    assert out.stdout.split() == ["2", "False", "False"], out.stderr
    assert out.stderr.strip() == "gptdash: run 7 does not exist"


def test_list_into_a_closed_pipe_ends_quietly(home):
    store = db(home)
    for i in range(3):
        store.create_run(f"run {i}", {}, max_steps=10)
    store.close()
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader (`head -1`) has gone before gptdash writes
    env = {**os.environ, "GPTDASH_HOME": str(home)}
    env.pop("GPTDASH_DB_URL", None)
    try:
        done = subprocess.run([sys.executable, "-m", "jobs", "list"], cwd=ROOT, env=env,
                              stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=60)
    finally:
        os.close(write_end)
    assert done.stderr == ""
    assert done.returncode == 141


HUGE = ["--set", "emb_dim=16384", "--set", "n_layers=96"]  # ~4.7 TB to train


@pytest.mark.parametrize("command", [["submit"], ["sweep", "--grid", "lr=1e-3,3e-3"]])
def test_submit_and_sweep_refuse_what_fits_no_device_here_without_torch(home, command):
    db(home).close()
    out = python_in(home, "import sys\nfrom jobs.cli import main\n"
                          f"code = main({[*command, '--preset', 'tiny', *HUGE]!r})\n"
                          "print(code, 'torch' in sys.modules)")
    assert out.stdout.split() == ["2", "False"], out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert "but the largest device on this machine has" in out.stderr
    nothing_written(home)


def test_gpu_memory_comes_from_nvidia_smi_when_torch_is_not_loaded(tmp_path, monkeypatch):
    from gptcore import machine

    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho 40960\necho 81920\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delitem(sys.modules, "torch", raising=False)
    machine.gpu_memory_mb.cache_clear()
    try:
        assert machine.gpu_memory_mb() == 81920
        assert machine.largest_memory_mb("cuda") == 81920
        assert machine.largest_memory_mb("auto") == max(81920, machine.host_memory_mb())
        assert machine.largest_memory_mb("cpu") == machine.host_memory_mb()
    finally:
        machine.gpu_memory_mb.cache_clear()


@pytest.mark.parametrize("command, name, what", [
    (["submit", *MICRO], "two\nlines", "run name"),
    (["train", *MICRO, "--set", "max_steps=2"], "red \x1b[31m", "run name"),
    (["sweep", *MICRO, "--grid", "lr=1e-3,3e-3"], "tab\there", "sweep name"),
])
def test_a_name_with_a_control_character_is_refused_in_one_line(home, gptdash, command, name,
                                                                 what):
    out = gptdash(*command, "--name", name)
    refused(out, f"{what} {name!r} holds a control character")
    nothing_written(home)


def test_a_rename_with_a_newline_is_refused_and_the_name_kept(store):
    run_id = store.create_run("kept", {}, max_steps=10)
    with pytest.raises(StorageError, match="holds a control character"):
        store.update_run(run_id, name="one\ntwo")
    assert store.get_run(run_id).name == "kept"


def test_list_keeps_one_line_per_run_for_an_old_name_with_a_newline(home, gptdash):
    from sqlalchemy import update
    from sqlalchemy.orm import Session

    from storage.schema import Run

    store = db(home)
    first, second = store.create_run("old", {}, max_steps=10), store.create_run("b", {})
    with Session(store.engine) as session, session.begin():  # written before the check
        session.execute(update(Run).where(Run.id == first).values(name="old\nrow\x1b[2J"))
    store.close()
    lines = gptdash("list").stdout.splitlines()
    assert len(lines) == 3 and lines[2].endswith(r"old\nrow\x1b[2J"), lines
    assert lines[1].startswith(f"{second:>4}")


def test_worker_refuses_a_name_a_live_worker_holds_before_training(home, gptdash):
    store = db(home)
    store.register_worker("gpu-1", host="other-box", pid=4242, device="cuda")  # beating now
    run_id = store.create_run("waiting", {}, max_steps=10)
    out = gptdash("worker", "--name", "gpu-1", "--exit-when-idle")
    refused(out, "worker name 'gpu-1' is in use by a live worker (other-box pid 4242",
            "choose another --name")
    assert store.get_run(run_id).status == "queued"
    assert [(w.host, w.pid) for w in store.workers()] == [("other-box", 4242)]
    store.close()


def test_a_stopped_stale_or_dead_workers_name_may_be_taken_over(store):
    from datetime import timedelta

    from sqlalchemy import update
    from sqlalchemy.orm import Session

    from storage.schema import Worker, utcnow

    store.register_worker("stopped", host="box", pid=1, device=None)
    store.worker_stopped("stopped")
    store.register_worker("stale", host="box", pid=2, device=None)
    with Session(store.engine) as session, session.begin():
        session.execute(update(Worker).where(Worker.name == "stale")
                        .values(heartbeat_at=utcnow() - timedelta(seconds=120)))
    store.register_worker("dead", host="here", pid=3, device=None)
    for name in ("stopped", "stale", "dead"):
        store.take_worker_name(name, host="here", pid=99, dead_after_s=60,
                               gone=lambda w: w.host == "here" and w.pid == 3)
    assert {(w.name, w.pid, w.status) for w in store.workers()} == {
        ("stopped", 99, "idle"), ("stale", 99, "idle"), ("dead", 99, "idle")}
    store.take_worker_name("new", host="here", pid=99, dead_after_s=60)
    with pytest.raises(StorageError, match="worker name 'new' is in use"):
        store.take_worker_name("new", host="there", pid=5, dead_after_s=60)


SEEDS_101 = "seed=" + ",".join(str(i) for i in range(101))


def test_a_sweep_of_more_than_100_runs_needs_yes(home, gptdash):
    out = gptdash("sweep", *MICRO, "--grid", SEEDS_101)
    refused(out, "this sweep makes 101 runs, more than 100: pass --yes to queue them all")
    nothing_written(home)
    out = gptdash("sweep", *MICRO, "--grid", SEEDS_101, "--yes")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("sweep 1 'sweep seed': 101 runs queued")


def test_a_value_given_twice_in_a_grid_is_one_run(home, gptdash):
    out = gptdash("sweep", *MICRO, "--grid", "lr=1e-3,0.001,1e-3,3e-3")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("sweep 1 'sweep lr': 2 runs queued")
    assert [r.config["lr"] for r in db(home).list_runs()] == [3e-3, 1e-3]


@pytest.mark.parametrize("args, fragments", [
    (["--set", "lr=1e-3", "--grid", "lr=1e-3,3e-3"],
     ["--set lr is swept too (--grid/--range lr)", "drop one of the two"]),
    (["--set", "seed=3", "--range", "seed=1:9", "--random", "2"], ["--set seed is swept too"]),
    (["--grid", "lr=1e-3", "--cut"], ["this sweep has one run: leave out the cut"]),
    (["--range", "lr=1e-4:1e-2:log"], ["--range needs --random N"]),
    (["--range", "lr=1e-4:1e-2:log", "--random", "0"], ["--range needs --random N"]),
])
def test_sweep_specs_that_cannot_mean_what_they_say_are_refused(home, gptdash, args,
                                                                fragments):
    refused(gptdash("sweep", *MICRO, *args), *fragments)
    nothing_written(home)


def test_stop_sweep_cancels_its_queued_runs_and_stops_its_running_one(home, gptdash):
    from jobs.manager import claim_here

    assert gptdash("sweep", *MICRO, "--grid", "lr=1e-3,2e-3,3e-3").returncode == 0
    store = db(home)
    other = store.create_run("not in the sweep", {}, max_steps=10)
    claim_here(store, 2)
    out = gptdash("stop", "--sweep", "1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == [
        "sweep 1: run(s) #1, #3 cancelled",
        "sweep 1: run(s) #2 asked to stop; each saves a checkpoint and stops within a step"]
    assert [store.get_run(i).status for i in (1, 2, 3)] == ["cancelled", "running", "cancelled"]
    assert store.get_run(2).stop_requested
    assert store.get_run(other).status == "queued"
    store.set_status(2, "stopped")  # as its trainer does
    refused(gptdash("stop", "--sweep", "1"), "sweep 1 'sweep lr' has no queued or running runs")
    refused(gptdash("stop", "2", "--sweep", "1"), "stop takes a run id or --sweep SWEEP_ID")
    store.close()
