"""The compute view: which runs are points, their FLOPs, and the frontier figure."""

import numpy as np
import pandas as pd
import pytest

from analysis.frontier import FrontierFit
from gptcore.config import apply_overrides, preset
from gptcore.estimate import flops_per_token, param_count
from storage.store import RunStore
from ui.compute import (
    COMPUTE_COLUMNS,
    compute_figure,
    compute_frame,
    fit_caption,
    frontier_fit,
    last_values,
)


def _run(store: RunStore, name: str, status: str, last_step: int, **overrides: object) -> int:
    cfg = apply_overrides(preset("tiny"), overrides)
    run_id = store.create_run(name, cfg.to_dict(), status=status, max_steps=cfg.max_steps)
    store.update_run(run_id, last_step=last_step)
    return run_id


def _frame(compute: list[float], loss: list[float]) -> pd.DataFrame:
    n = len(compute)
    return pd.DataFrame({"run_id": range(1, n + 1), "name": [f"r{i}" for i in range(n)],
                         "status": "completed", "params": 1000, "tokens": 10,
                         "compute": compute, "val_loss": loss})


def test_last_values_takes_each_runs_highest_step():
    metrics = pd.DataFrame({"run_id": [1, 1, 2, 1], "key": "val/loss", "step": [10, 30, 5, 20],
                            "value": [3.0, 2.0, 4.0, 2.5], "wall_time": 0.0})
    assert last_values(metrics) == {1: 2.0, 2: 4.0}
    assert last_values(metrics.iloc[:0]) == {}


def test_finished_runs_with_a_val_loss_become_points_with_their_flops(store: RunStore):
    done = _run(store, "done", "completed", 400)
    stopped = _run(store, "stopped", "stopped", 100, batch_size=8)
    _run(store, "stopped-early", "stopped", 5)  # no evaluation yet: no loss given
    _run(store, "running", "running", 200)
    _run(store, "failed", "failed", 50)
    losses = {done: 2.1, stopped: 2.6, 4: 2.4, 5: 3.0}
    frame = compute_frame(store.list_runs(), losses)
    assert list(frame.columns) == list(COMPUTE_COLUMNS)
    assert sorted(frame["name"]) == ["done", "stopped"]
    row = frame.set_index("name").loc["stopped"]
    cfg = apply_overrides(preset("tiny"), {"batch_size": 8})
    assert row["tokens"] == 100 * 8 * cfg.model.context_length
    assert row["compute"] == pytest.approx(flops_per_token(cfg) * row["tokens"])
    assert row["params"] == param_count(cfg)
    assert row["val_loss"] == 2.6


def test_no_finished_runs_make_an_empty_frame(store: RunStore):
    _run(store, "running", "running", 200)
    frame = compute_frame(store.list_runs(), {})
    assert frame.empty and list(frame.columns) == list(COMPUTE_COLUMNS)


def test_frontier_runs_are_highlighted_and_the_law_drawn_over_them():
    # Four runs on loss = 10 * C**-0.1 + 1; one well above it.
    compute = [1e12, 1e13, 1e14, 1e15, 1e14]
    loss = [10 * c ** -0.1 + 1 for c in compute[:4]] + [4.0]
    frame = _frame(compute, loss)
    fit = frontier_fit(frame)
    assert fit.fitted and fit.b == pytest.approx(0.1, rel=0.05)
    fig = compute_figure(frame, fit)
    by_name = {t.name: t for t in fig.data}
    others, front = by_name["other runs"], by_name["on the frontier"]
    assert list(others.y) == [4.0]
    assert sorted(front.x) == sorted(compute[:4])
    assert front.marker.symbol == "star"
    assert list(front.customdata[0]) == ["r0", "1 k", "1e+12"]  # the hover's name, size, FLOPs
    law = next(t for t in fig.data if t.mode == "lines")
    assert law.name.startswith("fit: ")
    assert min(law.x) < 1e12 and max(law.x) > 1e15
    assert np.allclose(law.y, fit.predict(law.x))
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"


def test_too_few_runs_draw_points_without_a_law_and_say_why():
    frame = _frame([1e12], [3.0])
    fit = frontier_fit(frame)
    assert not fit.fitted
    fig = compute_figure(frame, fit)
    assert [t.name for t in fig.data] == ["on the frontier"]
    assert fit_caption(fit).startswith("No frontier fitted: need at least two runs")


def test_the_caption_names_the_fitted_constants():
    fit = FrontierFit(a=12.5, b=0.12, c=1.5, on_frontier=[0, 1, 2])
    assert fit_caption(fit) == ("Frontier fitted to 3 run(s): loss = 12.5 · C^−0.12 + 1.500 "
                                "(C in FLOPs).")
    tiny_floor = FrontierFit(a=12.5, b=0.12, c=6.7e-21, on_frontier=[0, 1, 2])
    assert "+ 0.000 (C in FLOPs)" in fit_caption(tiny_floor)
    two = FrontierFit(a=12.5, b=0.12, c=0.0, on_frontier=[0, 1],
                      note="two frontier runs: c held at 0 (a pure power law)")
    assert fit_caption(two).endswith("Two frontier runs: c held at 0 (a pure power law).")
