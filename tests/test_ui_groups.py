"""ui.groups: runs that differ only in seed, grouped, averaged on common steps, drawn as a
mean line in a filled ±1 std band."""

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from gptcore.config import apply_overrides, preset
from ui.figures import metric_figure
from ui.groups import band_traces, group_band, group_key, group_name, grouped_figure, seed_groups


def config(**overrides) -> dict:
    return apply_overrides(preset("tiny"), overrides).to_dict()


def frame(rows: list[tuple[int, int, float]], key: str = "val/loss") -> pd.DataFrame:
    df = pd.DataFrame(rows, columns=["run_id", "step", "value"])
    df.insert(1, "key", key)
    df["x"] = df["step"]
    return df


def test_runs_that_differ_only_in_seed_form_one_group_in_first_seen_order():
    configs = {4: config(seed=1), 5: config(seed=2, lr=2e-2), 6: config(seed=2),
               7: config(seed=3), 8: config(seed=1, lr=2e-2)}
    assert seed_groups(configs) == [[4, 6, 7], [5, 8]]
    assert group_key(config(seed=1)) == group_key(config(seed=99))
    assert group_key(config(seed=1)) != group_key(config(seed=1, n_layers=3))


def test_a_config_that_leaves_out_a_default_groups_with_one_that_names_it():
    full = config(seed=1)
    short = {k: v for k, v in config(seed=2).items() if k != "grad_clip"}
    assert group_key(full) == group_key(short)
    assert seed_groups({1: {"old": 1, "seed": 1}, 2: {"old": 1, "seed": 2}}) == [[1, 2]]


def test_a_group_is_named_without_its_seed():
    assert group_name(["lr sweep lr=0.001 seed=1337", "lr sweep lr=0.001 seed=1338"]) == (
        "lr sweep lr=0.001")
    assert group_name(["alpha", "beta", "gamma"]) == "alpha +2"


def test_band_is_the_mean_and_sample_std_on_steps_every_member_has():
    df = frame([(1, 0, 4.0), (1, 10, 3.0), (1, 20, 2.0),
                (2, 0, 6.0), (2, 10, 5.0), (2, 20, 4.0), (2, 30, 3.5),  # ahead of the others
                (3, 0, 5.0), (3, 10, 4.0), (3, 15, 9.0), (3, 20, 3.0)])  # one extra step
    band = group_band(df, [1, 2, 3])
    assert band["step"].tolist() == [0, 10, 20]
    assert band["mean"].tolist() == pytest.approx([5.0, 4.0, 3.0])
    assert band["std"].tolist() == pytest.approx([1.0, 1.0, 1.0])  # sample std (ddof 1)
    assert band["low"].tolist() == pytest.approx([4.0, 3.0, 2.0])
    assert band["high"].tolist() == pytest.approx([6.0, 5.0, 4.0])
    assert band["n"].tolist() == [3, 3, 3]


def test_band_x_is_the_members_mean_x_and_a_lone_member_has_no_spread():
    df = frame([(1, 0, 4.0), (1, 10, 3.0), (2, 0, 6.0), (2, 10, 5.0)])
    df["x"] = [0.0, 12.0, 0.0, 8.0]  # seconds: the runs' pace differs
    assert group_band(df, [1, 2])["x"].tolist() == [0.0, 10.0]
    alone = group_band(df, [1])
    assert alone["std"].tolist() == [0.0, 0.0] and alone["mean"].tolist() == [4.0, 3.0]
    assert group_band(df, [9]).empty


def test_band_traces_are_a_filled_area_under_one_mean_line():
    band = group_band(frame([(1, 0, 4.0), (1, 10, 3.0), (2, 0, 6.0), (2, 10, 5.0)]), [1, 2])
    upper, lower, mean = band_traces(band, color="#636efa", name="tiny")
    assert lower["fill"] == "tonexty" and lower["fillcolor"] == "rgba(99, 110, 250, 0.2)"
    assert not upper["showlegend"] and not lower["showlegend"]
    assert mean["name"] == "tiny (mean of 2 seeds ± std)" and "fill" not in mean
    assert list(mean["y"]) == [5.0, 4.0]
    assert np.allclose(upper["y"], [5 + 2**0.5, 4 + 2**0.5])
    assert np.allclose(lower["y"], [5 - 2**0.5, 4 - 2**0.5])


def test_a_long_band_is_thinned_and_keeps_its_last_step():
    rows = [(r, s, float(r + s)) for r in (1, 2) for s in range(1000)]
    band = group_band(frame(rows), [1, 2])
    mean = band_traces(band, color="#636efa", name="long", max_points=100)[2]
    assert len(mean["x"]) <= 101 and mean["x"][-1] == 999


def test_grouped_figure_draws_a_group_as_one_band_and_keeps_other_runs_as_lines():
    rows = [(r, s, 5.0 - s / 10 + r / 100) for r in (1, 2, 3, 4) for s in (0, 10, 20)]
    df = frame(rows)
    names = {1: "a seed=1", 2: "a seed=2", 3: "a seed=3", 4: "other"}
    fig = metric_figure(df, title="val/loss", names=names, x="x")
    grouped = grouped_figure(fig, df, df, [[1, 2, 3], [4]], names=names)
    assert isinstance(grouped, go.Figure)
    shown = [t for t in grouped.data if t.showlegend is not False]
    assert [t.name for t in shown] == ["other", "a (mean of 3 seeds ± std)"]
    assert sum(t.fill == "tonexty" for t in grouped.data) == 1
    # The group keeps its first member's colour; the lone run keeps its own.
    assert grouped.data[-1].line.color == fig.data[0].line.color
    assert shown[0].line.color == fig.data[3].line.color
    assert grouped.layout.title.text == "val/loss"
