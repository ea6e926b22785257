"""The Sweeps page's helpers: the form's specs, the runs table (best first), the figure."""

import numpy as np
import pandas as pd
import pytest

from analysis.forecast import Forecast
from gptcore.config import apply_overrides, preset
from gptcore.errors import GptdashError
from storage.store import RunStore
from ui.live import LIVE_REFRESH_S
from ui.sweeps import (
    base_config,
    log_axis,
    plan_summary,
    seed_means,
    specs,
    sweep_figure,
    sweep_refresh_every,
    sweep_table,
    swept_params,
)


def _forecast(predicted: float, low: float, high: float) -> Forecast:
    empty = np.zeros(0)
    return Forecast(predicted_final=predicted, low=low, high=high, upto_step=100, max_steps=400,
                    n_points=5, params={}, residual_std=0.01, level=0.95, note=None,
                    _theta=empty, _cov=empty, _s1=empty, _s2=empty, _t_quantile=2.0)


def _sweep_runs(store: RunStore) -> dict[str, int]:
    """Five runs of an lr sweep, one in each state the table tells apart."""
    sweep_id = store.create_sweep("lr sweep", {"params": ["lr"]})
    ids = {}
    for name, lr, status, step in [("done-a", 1e-3, "completed", 400),
                                   ("done-b", 3e-3, "completed", 400),
                                   ("training", 1e-2, "running", 150),
                                   ("cut", 3e-2, "stopped", 100),
                                   ("waiting", 1e-1, "queued", 0)]:
        cfg = apply_overrides(preset("tiny"), {"lr": lr})
        ids[name] = store.create_run(name, cfg.to_dict(), status=status,
                                     max_steps=cfg.max_steps, sweep_id=sweep_id)
        store.update_run(ids[name], last_step=step)
    return ids


def test_blank_form_rows_are_no_specs():
    assert specs([("lr", " 1e-3, 3e-3 "), ("batch_size", "  "), ("n_layers", "")]) == [
        "lr=1e-3, 3e-3"]


def test_base_config_applies_overrides_line_by_line():
    cfg = base_config("tiny", "max_steps=30\n\n# a comment\n batch_size = 8\n")
    assert (cfg.max_steps, cfg.batch_size) == (30, 8)
    assert cfg.lr == preset("tiny").lr
    with pytest.raises(GptdashError, match="key=value"):
        base_config("tiny", "max_steps 30")
    with pytest.raises(GptdashError):
        base_config("tiny", "max_steps=many")


def test_plan_summary_counts_runs_and_says_when_time_is_unknown():
    assert plan_summary(3, 130.0) == ("3 runs", "about 2 min 10 s")
    assert plan_summary(1, None) == ("1 run", "—")


def test_swept_params_come_from_the_spec_or_what_the_runs_differ_in():
    assert swept_params({"params": ["lr", "n_layers"]}, []) == ["lr", "n_layers"]
    a = apply_overrides(preset("tiny"), {"lr": 1e-3}).to_dict()
    b = apply_overrides(preset("tiny"), {"lr": 1e-2}).to_dict()
    assert swept_params({}, [a, b]) == ["lr"]
    assert swept_params({}, [a]) == []


def test_the_seed_of_a_sweep_with_seeds_is_not_a_swept_param():
    configs = [preset("tiny").to_dict(), apply_overrides(preset("tiny"), {"seed": 2}).to_dict()]
    assert swept_params({"params": [], "seeds": 2}, configs) == []
    assert swept_params({}, configs) == ["seed"]  # an old sweep that swept the seed itself


def test_the_sweep_refreshes_only_while_a_run_waits_or_trains():
    assert sweep_refresh_every(["completed", "queued"]) == LIVE_REFRESH_S
    assert sweep_refresh_every(["completed", "running"], visible=False) is None
    assert sweep_refresh_every(["completed", "stopped", "failed"]) is None


def test_the_table_puts_the_best_final_loss_first_and_forecasts_where_training(store):
    ids = _sweep_runs(store)
    last = {ids["done-a"]: 2.4, ids["done-b"]: 2.1, ids["training"]: 2.6, ids["cut"]: 2.9}
    forecasts = {ids["training"]: _forecast(2.0, 1.9, 2.2)}
    table = sweep_table(store.list_runs(), ["lr"], last, forecasts)
    # Measured losses first; the training run's forecast (2.0, lowest of all) after them.
    assert list(table["name"]) == ["done-b", "done-a", "cut", "training", "waiting"]
    assert list(table["kind"]) == ["final", "final", "at stop", "forecast", ""]
    assert list(table["lr"]) == [3e-3, 1e-3, 3e-2, 1e-2, 1e-1]
    assert np.isnan(table["val loss"].iloc[-1])
    # The best is the lowest *final* loss: a forecast below it is not yet a result.
    assert list(table.loc[table["best"], "name"]) == ["done-b"]
    assert table.loc[3, "forecast low"] == 1.9


def test_a_forecast_is_best_only_while_no_run_has_a_measured_loss(store):
    ids = _sweep_runs(store)
    runs = [r for r in store.list_runs() if r.status != "completed"]
    forecasts = {ids["training"]: _forecast(2.0, 1.9, 2.2)}
    table = sweep_table(runs, ["lr"], {}, forecasts)
    assert list(table.loc[table["best"], "name"]) == ["training"]
    # A run cut at 2.9 is a result; the forecast of 2.0 is not, however low.
    table = sweep_table(runs, ["lr"], {ids["cut"]: 2.9}, forecasts)
    assert list(table.loc[table["best"], "name"]) == ["cut"]
    assert list(table["name"][:2]) == ["cut", "training"]


def test_the_figure_marks_each_kind_its_own_way_and_stars_the_best(store):
    ids = _sweep_runs(store)
    last = {ids["done-a"]: 2.4, ids["done-b"]: 2.1, ids["cut"]: 2.9}
    table = sweep_table(store.list_runs(), ["lr"], last,
                        {ids["training"]: _forecast(2.0, 1.9, 2.2)})
    fig = sweep_figure(table, "lr")
    by_name = {t.name: t for t in fig.data}
    assert set(by_name) == {"final", "forecast", "at stop", "best"}
    assert sorted(by_name["final"].y) == [2.1, 2.4]
    assert by_name["forecast"].marker.symbol == "circle-open"
    assert list(by_name["forecast"].error_y.array) == pytest.approx([0.2])
    assert list(by_name["forecast"].error_y.arrayminus) == pytest.approx([0.1])
    assert by_name["at stop"].marker.symbol == "x"
    assert (list(by_name["best"].x), list(by_name["best"].y)) == ([3e-3], [2.1])
    assert by_name["best"].marker.symbol == "star"
    assert fig.layout.xaxis.type == "log"
    assert fig.layout.title.text == "val loss vs lr"


def test_a_sweep_with_no_val_loss_yet_draws_an_empty_figure_that_says_so(store):
    _sweep_runs(store)
    table = sweep_table(store.list_runs(), ["lr"], {}, {})
    fig = sweep_figure(table, "lr")
    assert not fig.data
    assert fig.layout.annotations[0].text == "No val loss yet"


def test_log_axes_for_lr_like_settings_and_wide_spans_only():
    assert log_axis("lr", pd.Series([1e-3, 3e-3]))
    assert log_axis("batch_size", pd.Series([1, 1000]))
    assert not log_axis("batch_size", pd.Series([8, 16, 32]))
    assert not log_axis("drop_rate", pd.Series([0.0, 0.1, 0.2]))
    assert not log_axis("activation", pd.Series(["gelu", "relu"]))


def test_strings_and_booleans_go_on_a_category_axis():
    table = pd.DataFrame({"name": ["a", "b"], "activation": ["gelu", "relu"],
                          "val loss": [2.0, 2.2], "kind": ["final", "final"],
                          "best": [True, False], "forecast low": np.nan,
                          "forecast high": np.nan})
    fig = sweep_figure(table, "activation")
    assert fig.layout.xaxis.type == "category"
    assert list(fig.data[0].x) == ["gelu", "relu"]


def test_sweeping_max_steps_keeps_one_column_per_name(store):
    sweep_id = store.create_sweep("steps", {"params": ["max_steps"]})
    for steps in (20, 40):
        cfg = apply_overrides(preset("tiny"), {"max_steps": steps})
        run_id = store.create_run(f"s{steps}", cfg.to_dict(), status="completed",
                                  max_steps=steps, sweep_id=sweep_id)
        store.update_run(run_id, last_step=steps)
    table = sweep_table(store.list_runs(), ["max_steps"], {1: 3.0, 2: 2.5}, {})
    assert table.columns.is_unique
    assert list(table["max_steps"]) == [40, 20]
    assert [t.name for t in sweep_figure(table, "max_steps").data] == ["final", "best"]


def test_markers_at_the_extremes_sit_inside_the_plot(store):
    ids = _sweep_runs(store)
    last = {ids["done-a"]: 2.4, ids["done-b"]: 2.1, ids["cut"]: 2.9}
    fig = sweep_figure(sweep_table(store.list_runs(), ["lr"], last, {}), "lr")
    x_low, x_high = fig.layout.xaxis.range  # log10 units on the log axis
    assert x_low < np.log10(1e-3) and x_high > np.log10(3e-2)
    y_low, y_high = fig.layout.yaxis.range
    assert y_low < 2.1 and y_high > 2.9


def _seeded_sweep(store: RunStore) -> tuple[pd.DataFrame, dict[int, float]]:
    """Two lrs, three seeds each; one seed of the second lr still training."""
    sweep_id = store.create_sweep("lr x 3 seeds", {"params": ["lr"], "seeds": 3})
    last = {}
    for lr, losses in ((1e-3, (2.4, 2.5, 2.6)), (3e-3, (2.0, 2.2, 2.9))):
        for seed, loss in zip((1, 2, 3), losses, strict=True):
            cfg = apply_overrides(preset("tiny"), {"lr": lr, "seed": seed})
            status = "running" if (lr, seed) == (3e-3, 3) else "completed"
            run_id = store.create_run(f"lr={lr} seed={seed}", cfg.to_dict(), status=status,
                                      max_steps=cfg.max_steps, sweep_id=sweep_id)
            last[run_id] = loss
    return sweep_table(store.list_runs(), ["lr", "seed"], last, {}), last


def test_seed_means_average_each_points_completed_runs(store):
    table, _ = _seeded_sweep(store)
    means = seed_means(table, ["lr"]).sort_values("lr").reset_index(drop=True)
    assert list(means["lr"]) == [1e-3, 3e-3]
    assert list(means["mean"]) == pytest.approx([2.5, 2.1])  # not the training run's 2.9
    assert list(means["std"]) == pytest.approx([0.1, 2**0.5 / 10])
    assert list(means["n"]) == [3, 2]
    alone = seed_means(table, [])
    assert list(alone["n"]) == [5] and list(alone["mean"]) == pytest.approx([11.7 / 5])


def test_a_sweep_with_seeds_draws_each_points_mean_with_an_error_bar(store):
    table, _ = _seeded_sweep(store)
    means = seed_means(table, ["lr"])
    fig = sweep_figure(table, "lr", means)
    by_name = {t.name: t for t in fig.data}
    mean = by_name["mean of seeds ± std"]
    assert sorted(zip(mean.x, mean.y, strict=True)) == [(1e-3, pytest.approx(2.5)),
                                           (3e-3, pytest.approx(2.1))]
    assert sorted(mean.error_y.array) == pytest.approx(sorted(means["std"]))
    assert by_name["final"].opacity < 1  # the runs faint behind their means
    assert "mean of seeds ± std" not in {t.name for t in sweep_figure(table, "lr").data}
