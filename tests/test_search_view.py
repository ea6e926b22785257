"""The search figures of the Sweeps page, from a trials frame as ``jobs.search`` builds it."""

import math

import pandas as pd
import pytest

from ui.search_view import (
    best_so_far_figure,
    importance_figure,
    next_trials,
    parallel_figure,
    pareto_figure,
    state_counts,
    trials_left,
)


def trials() -> pd.DataFrame:
    return pd.DataFrame([
        {"number": 0, "state": "complete", "run_id": 10, "loss": 5.0, "flops": 4e12,
         "lr": 1e-3, "activation": "gelu"},
        {"number": 1, "state": "pruned", "run_id": 11, "loss": None, "flops": None,
         "lr": 1e-6, "activation": "silu"},
        {"number": 2, "state": "complete", "run_id": 12, "loss": 4.2, "flops": 9e12,
         "lr": 3e-3, "activation": "<b>silu</b>"},
        {"number": 3, "state": "complete", "run_id": 13, "loss": 4.6, "flops": 2e12,
         "lr": 1e-2, "activation": "gelu"},
        {"number": 4, "state": "complete", "run_id": 14, "loss": 4.9, "flops": 8e12,
         "lr": 2e-3, "activation": "gelu"},
        {"number": 5, "state": "running", "run_id": 15, "loss": None, "flops": None,
         "lr": 5e-3, "activation": "silu"},
    ])


def test_best_so_far_steps_down_through_the_complete_trials_only():
    fig = best_so_far_figure(trials())
    points, best = fig.data
    assert list(points.x) == [0, 2, 3, 4]  # neither the pruned nor the running trial
    assert list(best.y) == [5.0, 4.2, 4.2, 4.2]
    assert list(points.customdata) == [10, 12, 13, 14]


def test_parallel_coordinates_put_lr_on_a_log_axis_and_choices_as_plain_ticks():
    fig = parallel_figure(trials(), ["lr", "activation"])
    lr, activation, loss = fig.data[0].dimensions
    assert lr.values[0] == pytest.approx(math.log10(1e-3))
    assert "0.001" in lr.ticktext
    assert list(activation.ticktext) == ["&lt;b&gt;silu&lt;/b&gt;", "gelu"]  # text, not HTML
    assert list(loss.values) == [5.0, 4.2, 4.6, 4.9]


def test_importances_are_drawn_most_important_on_top():
    fig = importance_figure({"lr": 0.8, "n_layers": 0.15, "activation": 0.05})
    assert list(fig.data[0].y) == ["activation", "n_layers", "lr"]


def test_the_pareto_front_is_marked_apart_from_the_other_trials():
    fig = pareto_figure(trials(), ["loss", "flops"], front=[2, 3])
    others, front = fig.data
    assert list(front.customdata) == [2, 3] and list(front.x) == [4.2, 4.6]
    assert sorted(others.customdata) == [0, 4]
    assert fig.layout.yaxis.type == "log"


def test_the_next_trials_are_the_asked_ones_whose_run_waits_or_trains(store):
    frame = trials()
    frame.loc[len(frame)] = {"number": 6, "state": "running", "run_id": None,
                             "lr": 4e-3, "activation": "gelu"}  # asked, its run not yet queued
    frame.loc[len(frame)] = {"number": 7, "state": "running", "run_id": 17,
                             "lr": 6e-3, "activation": "<b>gelu</b>"}
    frame.loc[len(frame)] = {"number": 8, "state": "running", "run_id": 18,
                             "lr": 7e-3, "activation": "silu"}  # its run stopped by a person
    sweep_id = store.create_sweep("tune", {"params": ["lr", "activation"]})
    ids = {}
    for name, status in [("done", "completed"), ("training", "running"), ("waiting", "queued"),
                         ("paused", "stopped")]:
        ids[name] = store.create_run(f"tune {name}", {}, status=status, max_steps=10,
                                     sweep_id=sweep_id)
    frame["run_id"] = frame["number"].map({0: ids["done"], 5: ids["training"],
                                           7: ids["waiting"], 8: ids["paused"]})
    table = next_trials(frame, ["lr", "activation"], store.list_runs())
    assert list(table.columns) == ["trial", "state", "run", "lr", "activation", "name"]
    assert list(table["trial"]) == [5, 7]
    assert list(table["state"]) == ["running", "queued"]
    assert list(table["run"]) == [ids["training"], ids["waiting"]]
    assert list(table["lr"]) == [5e-3, 6e-3]
    assert list(table["activation"]) == ["silu", "<b>gelu</b>"]  # as proposed, a cell's text
    assert list(table["name"]) == ["tune training", "tune waiting"]
    assert next_trials(frame.iloc[:5], ["lr"], store.list_runs()).empty  # none asked


def test_trials_left_counts_the_asked_trials_with_runs_against_the_budget():
    frame = trials()
    frame.loc[len(frame)] = {"number": 6, "state": "fail", "run_id": None}  # refused: no run
    assert trials_left(frame, 10) == 4
    assert trials_left(frame, 5) == 0


def test_state_counts_say_how_many_trials_are_where():
    assert state_counts(trials()) == "4 complete, 1 pruned, 1 running"
