import math

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from gptcore.config import PRESETS, TrainConfig
from ui.figures import (
    MIN_X_SPAN,
    PALETTE,
    hparam_figure,
    lr_schedule_figure,
    metric_figure,
    run_colors,
    x_axis_frame,
    x_axis_range,
)


def metrics(runs=(1, 2), keys=("train/loss", "val/loss"), n=50) -> pd.DataFrame:
    rows = [
        {"run_id": r, "key": k, "step": s, "value": 3.0 - s / n + r, "wall_time": 1000.0 * r + s}
        for r in runs for k in keys for s in range(n)
    ]
    return pd.DataFrame(rows)


NAMES = {1: "alpha", 2: "beta"}


def test_one_trace_per_run_and_key_with_names_colours_and_dashes():
    fig = metric_figure(metrics(), title="Loss", names=NAMES)
    assert [t.name for t in fig.data] == [
        "alpha · train/loss", "alpha · val/loss", "beta · train/loss", "beta · val/loss"]
    colours = [t.line.color for t in fig.data]
    assert colours[0] == colours[1] != colours[2] == colours[3]
    assert fig.data[0].line.dash != fig.data[1].line.dash
    assert fig.data[0].line.dash == fig.data[2].line.dash
    assert fig.layout.hovermode == "x unified"
    assert fig.layout.legend.orientation == "h"
    assert fig.layout.title.text == "Loss"


def test_names_shortened_for_one_key_or_one_run():
    one_key = metric_figure(metrics(keys=("lr",)), title="lr", names=NAMES)
    assert [t.name for t in one_key.data] == ["alpha", "beta"]
    assert one_key.layout.yaxis.title.text == "lr"
    one_run = metric_figure(metrics(runs=(2,)), title="Loss", names=NAMES)
    assert [t.name for t in one_run.data] == ["train/loss", "val/loss"]
    unnamed = metric_figure(metrics(runs=(7,), keys=("lr",)), title="lr")
    assert unnamed.data[0].name == "run 7"


def test_run_colours_follow_names_order():
    fig = metric_figure(metrics(runs=(2,), keys=("lr",)), title="lr", names={1: "a", 2: "b"})
    assert fig.data[0].line.color == run_colors([1, 2])[2] == PALETTE[1]


def test_scattergl_above_threshold_only():
    df = pd.concat([metrics(runs=(1,), keys=("a",), n=1001), metrics(runs=(2,), keys=("a",))])
    fig = metric_figure(df, title="t")
    assert isinstance(fig.data[0], go.Scattergl)
    assert isinstance(fig.data[1], go.Scatter)


def test_smoothing_adds_faint_shadow_without_legend():
    df = metrics()
    df["value"] += np.random.default_rng(0).normal(0, 0.3, len(df))
    fig = metric_figure(df, title="Loss", names=NAMES, smoothing=0.9)
    assert len(fig.data) == 8
    shadows, lines = fig.data[0::2], fig.data[1::2]
    assert all(t.opacity == pytest.approx(0.25) and t.showlegend is False for t in shadows)
    assert all(t.showlegend is not False for t in lines)
    assert np.std(np.diff(lines[0].y)) < np.std(np.diff(shadows[0].y))
    assert shadows[0].line.color == lines[0].line.color


def test_log_axes_and_x_range():
    fig = metric_figure(metrics(), title="t", log_x=True, log_y=True, x_range=(10, 1000))
    assert fig.layout.xaxis.type == "log" and fig.layout.yaxis.type == "log"
    assert list(fig.layout.xaxis.range) == pytest.approx([1.0, 3.0])
    zero_start = metric_figure(metrics(), title="t", log_x=True, x_range=(0, 1000))
    assert list(zero_start.layout.xaxis.range) == pytest.approx([0.0, 3.0])
    linear = metric_figure(metrics(), title="t", x_range=(5, 40), uirevision="keep")
    assert linear.layout.xaxis.type == "linear"
    assert list(linear.layout.xaxis.range) == [5, 40]
    assert linear.layout.uirevision == "keep"


def test_traces_sorted_by_x_and_custom_x_column():
    df = x_axis_frame(metrics(runs=(1,), keys=("a",)).sample(frac=1.0, random_state=1), "time")
    fig = metric_figure(df, title="t", x="x", x_title="seconds since start")
    assert list(fig.data[0].x) == sorted(fig.data[0].x)
    assert fig.layout.xaxis.title.text == "seconds since start"


def test_empty_frame_says_no_data_yet():
    fig = metric_figure(metrics().iloc[:0], title="Loss")
    assert len(fig.data) == 0
    assert fig.layout.annotations[0].text == "No data yet"


def test_x_axis_frame_modes():
    df = metrics()
    assert (x_axis_frame(df, "step")["x"] == df["step"]).all()
    tokens = x_axis_frame(df, "tokens", {1: 100})
    assert (tokens[tokens.run_id == 1]["x"] == df[df.run_id == 1]["step"] * 100).all()
    assert tokens[tokens.run_id == 2]["x"].isna().all()
    time = x_axis_frame(df, "time")
    assert time.groupby("run_id")["x"].min().tolist() == [0.0, 0.0]
    assert time["x"].max() == 49.0
    assert "x" not in df.columns
    with pytest.raises(ValueError):
        x_axis_frame(df, "tokens")
    with pytest.raises(ValueError):
        x_axis_frame(df, "epochs")


def test_lr_schedule_figure():
    cfg = PRESETS["tiny"]
    fig = lr_schedule_figure(cfg)
    assert fig.layout.height == 220
    assert len(fig.data) == 1
    assert max(fig.data[0].y) == pytest.approx(cfg.lr, rel=1e-6)
    assert fig.data[0].x[-1] == cfg.max_steps - 1
    assert lr_schedule_figure(TrainConfig(schedule="constant")).data[0].y[-1] == 1e-3


def test_lr_schedule_figure_draws_wsd_flat_then_down():
    cfg = TrainConfig(schedule="wsd", max_steps=1000, warmup_steps=50, lr=1e-3, min_lr=1e-4,
                      decay_fraction=0.2)
    fig = lr_schedule_figure(cfg)
    lrs = dict(zip(fig.data[0].x, fig.data[0].y, strict=True))
    assert "wsd" in fig.layout.title.text
    assert lrs[100] == lrs[798] == pytest.approx(1e-3)  # stable until the last 20%
    assert lrs[900] == pytest.approx(5.5e-4)
    assert lrs[999] < 1.1e-4


def test_hparam_figure_numeric_log_and_categorical():
    pts = pd.DataFrame({"name": ["a", "b", "c"], "lr": [1e-4, 1e-3, 3e-2],
                        "best_val_loss": [2.0, 1.5, 1.8]})
    fig = hparam_figure(pts, "lr", "best_val_loss")
    assert fig.layout.xaxis.type == "log"
    assert list(fig.data[0].text) == ["a", "b", "c"]
    assert fig.layout.xaxis.title.text == "lr"
    narrow = hparam_figure(pts.assign(lr=[1e-3, 2e-3, 5e-3]), "lr", "best_val_loss")
    assert narrow.layout.xaxis.type != "log"
    cat = hparam_figure(pts.assign(opt=["adamw", "sgd", "adamw"]), "opt", "best_val_loss")
    assert cat.layout.xaxis.type == "category"
    flag = hparam_figure(pts.assign(qkv_bias=[True, False, True]), "qkv_bias", "best_val_loss")
    assert flag.layout.xaxis.type == "category" and list(flag.data[0].x) == ["True", "False",
                                                                              "True"]
    assert hparam_figure(pts.iloc[:0], "lr", "best_val_loss").layout.annotations[0].text == (
        "No data yet")


def test_figures_serialise_with_nan():
    df = metrics(runs=(1,), keys=("a",))
    df.loc[3, "value"] = math.nan
    assert metric_figure(df, title="t", smoothing=0.5).to_json()


def test_height_is_part_of_the_one_built_figure():
    assert metric_figure(metrics(), title="t", height=300).layout.height == 300
    assert metric_figure(metrics(), title="t").layout.height is None


def test_a_run_with_one_point_gets_a_marker_and_sensible_axes_not_minus_one_to_one():
    one = pd.DataFrame([{"run_id": 1, "key": "tokens_per_sec", "step": 0, "value": 48134.5,
                         "wall_time": 0.0}])
    fig = metric_figure(one, title="Tokens per second")
    assert fig.data[0].mode == "lines+markers"  # a lone point draws no line
    # Steps from 0 over a few integers; the value with room around it, not value-1..value+1.
    x_low, x_high = fig.layout.xaxis.range
    assert x_low < 0 and x_high > 10  # the marker at step 0 is inside, not on the edge
    assert fig.data[0].cliponaxis is False  # drawn whole where a live window ends at it
    low, high = fig.layout.yaxis.range
    assert 30_000 < low < 48134.5 < high < 60_000
    lr = metric_figure(one.assign(key="lr", value=5e-4), title="Learning rate")
    low, high = lr.layout.yaxis.range
    assert 0 < low < 5e-4 < high < 1e-3


def test_a_run_of_a_few_steps_gets_whole_step_ticks_not_fractions():
    """A one-step run: losses at 0, val loss at 0 and 1; plotly's own range 0..1 ticked
    "0, 200m, 400m, 600m, 800m, 1"."""
    df = pd.DataFrame([{"run_id": 1, "key": k, "step": s, "value": 5.0 - s, "wall_time": 0.0}
                       for k, steps in (("train/loss", [0]), ("val/loss", [0, 1]))
                       for s in steps])
    low, high = metric_figure(df, title="Loss").layout.xaxis.range
    assert low < 0 < 1 < high and high - low >= MIN_X_SPAN
    # A live window of the last 200 steps when the newest step is 1.
    live = metric_figure(df, title="Loss", x_range=(0, 1)).layout.xaxis.range
    assert list(live) == [0, MIN_X_SPAN]
    assert x_axis_range((100, 300)) == [100, 300]  # a wide window is left as it is
    many = metrics()
    assert metric_figure(many, title="t").layout.xaxis.range is None  # autoscale


def test_ticks_read_as_few_digit_si_and_integer_steps_hover_as_integers():
    big = pd.DataFrame([{"run_id": 1, "key": "tokens_per_sec", "step": s, "value": 48134.5 + s,
                         "wall_time": float(s)} for s in range(0, 3000, 10)])
    fig = metric_figure(big, title="Tokens per second")
    assert fig.layout.xaxis.tickformat == fig.layout.yaxis.tickformat == ".3~s"  # 2.39k, 48.1k
    assert fig.layout.xaxis.hoverformat == ",d"  # step 2,394, never 2,394.5
    # Small values (a loss, a learning rate) keep plotly's own ticks: no "800µ" for 8e-4.
    small = metric_figure(metrics(), title="loss")
    assert small.layout.yaxis.tickformat is None
    assert small.layout.yaxis.range is None  # many values: autoscale


def test_hparam_points_and_their_labels_sit_inside_the_plot_not_on_its_edge():
    points = pd.DataFrame({"name": ["slow", "fast"], "lr": [0.001, 0.003],
                           "best val loss": [4.56, 3.59]})
    fig = hparam_figure(points, "lr", "best val loss")
    assert fig.data[0].cliponaxis is False
    x_low, x_high = fig.layout.xaxis.range
    assert x_low < 0.001 and x_high > 0.003
    y_low, y_high = fig.layout.yaxis.range
    assert y_low < 3.59 and y_high > 4.56 + 0.1  # room above the top point for its label


def test_a_whole_numbered_hyperparameter_ticks_at_its_values_not_halfway():
    """Two seeds, 1337 and 1338: plotly's own ticks read "1,337.5" between them."""
    points = pd.DataFrame({"name": ["a", "b"], "seed": [1337, 1338], "loss": [2.0, 2.1]})
    axis = hparam_figure(points, "seed", "loss").layout.xaxis
    assert list(axis.tickvals) == [1337, 1338] and list(axis.ticktext) == ["1337", "1338"]
    lrs = pd.DataFrame({"name": ["a", "b"], "lr": [1e-3, 3e-3], "loss": [2.0, 2.1]})
    assert hparam_figure(lrs, "lr", "loss").layout.xaxis.tickvals is None


def test_the_lr_preview_ticks_read_as_decimals_not_exponents():
    assert lr_schedule_figure(PRESETS["tiny"]).layout.yaxis.tickformat == "~g"  # not 0e+0
