"""`gptdash sweep`, `list --sweep` and `forecast` as a user runs them.

The commands run in this process (``main``, as ``python -m jobs`` calls it), so each test
pays for no interpreter start; only the torch check needs a fresh process.
"""

import json
from types import SimpleNamespace

import pytest
from test_cli import python_in
from test_jobs import micro
from test_jobs_forecasting import recorded_run

from jobs import runner
from jobs.cli import main
from jobs.manager import claim_here
from storage.store import RunStore


def db(home) -> RunStore:
    return RunStore(f"sqlite:///{home / 'gptdash.db'}")


@pytest.fixture
def gptdash(home, capsys):
    """Run a command in the test's home folder: its exit code, stdout and stderr."""
    def run(*args: str) -> SimpleNamespace:
        code = main(list(args))
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)
    return run


def test_sweep_queues_its_runs_and_says_what_it_did(home, gptdash):
    out = gptdash("sweep", "--preset", "tiny", "--grid", "lr=1e-3,3e-3,1e-2",
                  "--grid", "n_layers=2,4", "--name", "lr", "--cut", "--set", "eval_interval=20")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "sweep 1 'lr': 6 runs queued; a confident loser is cut at step 100 or 200"
    assert "  run 4: lr=0.003 n_layers=4" in lines
    assert lines[-1].startswith("estimated training time: about ")
    store = db(home)
    runs = store.list_runs(sweep_id=1)
    assert len(runs) == 6 and {r.status for r in runs} == {"queued"}
    assert store.get_run(4).name == "lr lr=0.003 n_layers=4"
    assert store.get_run(4).config["lr"] == 3e-3 and store.get_run(4).config["model"][
        "n_layers"] == 4
    listing = gptdash("list", "--sweep", "1").stdout.splitlines()
    assert listing[0] == "sweep 1 'lr' (successive halving)" and len(listing) == 2 + 6


def test_sweep_seeds_repeats_each_value_with_consecutive_seeds(home, gptdash):
    out = gptdash("sweep", "--preset", "tiny", "--grid", "lr=1e-3,3e-3", "--seeds", "2",
                  "--set", "seed=10")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "sweep 1 'sweep lr x 2 seeds': 4 runs queued"
    store = db(home)
    runs = store.list_runs(sweep_id=1)
    store.close()
    assert sorted((r.config["lr"], r.config["seed"]) for r in runs) == [
        (1e-3, 10), (1e-3, 11), (3e-3, 10), (3e-3, 11)]


@pytest.mark.parametrize("args, message", [
    (["--grid", "lr=1e-3,abc"],
     "the sweep's second of 2 runs (lr=abc): lr must be a number, not 'abc'"),
    (["--grid", "lr"], "--grid needs KEY=V1,V2,...: got 'lr'"),
    (["--range", "lr=1e-2:1e-3", "--random", "2"], "LOW must be below HIGH"),
    (["--grid", "lr=1e-3,1e-2", "--set", "lrr=1"], "unknown setting 'lrr'"),
    (["--random", "2"], "--random 2 needs at least one --range"),
    ([], "a sweep needs at least one --grid"),
    (["--grid", "seed=1,2", "--seeds", "3"], "--seeds 3 sets seed itself"),
    (["--grid", "lr=1e-3,1e-2", "--cut"], "set eval_interval to 20 or less"),
])
def test_a_bad_sweep_is_one_line_exit_2_and_writes_nothing(home, gptdash, args, message):
    out = gptdash("sweep", "--preset", "tiny", *args)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    store = db(home)
    assert store.list_sweeps() == [] and store.list_runs() == []


def test_forecast_of_a_finished_run_as_one_json_line(home, gptdash, store):
    run_id = runner.create_run(store, micro(max_steps=30, eval_interval=3, sample_tokens=0,
                                            checkpoint_interval=1000))
    claim_here(store, run_id)
    assert runner.execute_run(store, run_id).status == "completed"
    out = gptdash("forecast", str(run_id), "--upto", "21")
    assert out.returncode == 0, out.stderr
    assert len(out.stdout.strip().splitlines()) == 1
    report = json.loads(out.stdout)
    assert report["run_id"] == run_id and report["status"] == "completed"
    assert report["upto_step"] == 21 and report["max_steps"] == 30
    last_val = store.metrics([run_id], ["val/loss"])["value"].iloc[-1]
    assert report["actual_final"] == pytest.approx(last_val)
    assert report["low"] <= report["predicted_final"] <= report["high"]
    # Byte-level loss starts near ln(256) = 5.5; 30 steps of a micro model end well above 1.
    assert 1.0 < report["predicted_final"] < 5.6
    assert abs(report["predicted_final"] - last_val) < 1.0
    assert "note" in report


def test_forecast_without_evaluations_or_run_is_a_clear_error(gptdash):
    assert gptdash("submit", "--preset", "tiny").returncode == 0
    out = gptdash("forecast", "1")
    assert out.returncode == 2 and len(out.stderr.strip().splitlines()) == 1
    assert ("gptdash: run 1 (queued) has 0 evaluation(s) after step 0; a forecast needs at "
            "least 5") in out.stderr
    out = gptdash("forecast", "42")
    assert out.returncode == 2 and "run 42 does not exist" in out.stderr


def test_sweep_list_and_forecast_do_not_import_torch(tmp_path):
    """Each command succeeds (exit 0), so each ran its whole path: the forecast fits a run
    with evaluations, not a refusal before any fit."""
    store = db(tmp_path)
    curve = recorded_run(store, range(0, 101, 10))
    store.close()
    code = ("import sys\nfrom jobs.cli import main\n"
            "codes = [main(['sweep', '--preset', 'tiny', '--grid', 'lr=1e-3,1e-2', '--cut', "
            "'--set', 'eval_interval=20']),\n"
            f"         main(['list', '--sweep', '1']), main(['forecast', '{curve}'])]\n"
            "print(codes, 'torch' in sys.modules)")
    out = python_in(tmp_path, code)
    assert out.returncode == 0, out.stderr
    assert '"predicted_final"' in out.stdout
    assert out.stdout.strip().splitlines()[-1] == "[0, 0, 0] False", out.stderr


def test_search_queues_its_first_trials_and_names_its_study(home, gptdash):
    out = gptdash("sweep", "--preset", "tiny", "--search", "tpe", "--trials", "40",
                  "--range", "lr=1e-4:1e-2:log", "--range", "n_layers=2:6",
                  "--choice", "activation=gelu,silu", "--parallel", "2",
                  "--set", "eval_interval=20", "--name", "tune")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("sweep 1 'tune': a tpe search of 40 trials over lr, n_layers, "
                               "activation, minimising loss; pruner forecast; Optuna study ")
    store = db(home)
    runs = store.list_runs(sweep_id=1)
    assert len(runs) == 2 and {r.status for r in runs} == {"queued"}  # --parallel 2
    assert all(r.name.startswith("tune #") for r in runs)
    sweep = store.get_sweep(1)
    assert sweep.study in lines[0] and sweep.cut  # the forecast pruner is the cut's decision

    stopped = gptdash("stop", "--sweep", "1")
    assert stopped.returncode == 0, stopped.stderr
    assert {r.status for r in store.list_runs(sweep_id=1)} == {"cancelled"}
    assert store.get_sweep(1).spec["stopped"] is True  # no worker asks it for more


@pytest.mark.parametrize("args, message", [
    (["--range", "lr=1e-2:1e-4:log"], "LOW must be below HIGH"),
    (["--range", "lr=-1:1e-2:log"], "a log range needs LOW above 0"),
    (["--range", "lrr=1e-4:1e-2"], "unknown setting 'lrr'"),
    (["--choice", "activation=gelu"], "--choice activation has one value"),
    (["--range", "lr=1e-4:1e-2", "--objective", "loss,perplexity"],
     "objectives are loss, flops, time"),
    (["--range", "lr=1e-4:1e-2", "--search", "bayes"], "--search 'bayes': choose tpe or random"),
    (["--range", "lr=1e-4:1e-2", "--grid", "n_layers=2,4"], "--grid is for grid and random"),
    (["--range", "lr=1e-4:1e-2", "--objective", "loss,flops", "--pruner", "median"],
     "--pruner median judges one objective"),
    (["--range", "lr=1e-4:1e-2", "--pruner", "forecast", "--set", "eval_interval=50"],
     "set eval_interval to"),
])
def test_a_bad_search_is_one_line_exit_2_and_writes_nothing(home, gptdash, args, message):
    search = [] if "--search" in args else ["--search", "tpe"]
    out = gptdash("sweep", "--preset", "tiny", "--trials", "8", *search, *args)
    assert out.returncode == 2
    assert message in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
    store = db(home)
    assert store.list_sweeps() == [] and store.list_runs() == []


def test_search_options_without_search_are_refused(home, gptdash):
    out = gptdash("sweep", "--preset", "tiny", "--choice", "activation=gelu,silu")
    assert out.returncode == 2 and "add --search tpe" in out.stderr
