"""The search figures of the Sweeps page, from a trials frame as ``jobs.search`` builds it."""

import math

import pandas as pd
import pytest

from ui.search_view import (
    best_so_far_figure,
    importance_figure,
    parallel_figure,
    pareto_figure,
    state_counts,
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


def test_state_counts_say_how_many_trials_are_where():
    assert state_counts(trials()) == "4 complete, 1 pruned, 1 running"
