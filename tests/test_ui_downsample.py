import numpy as np
import pandas as pd
import pytest

from ui.downsample import group_columns, group_ids, minmax_downsample


def series(n: int, run_id: int = 1, key: str = "train/loss", seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"run_id": run_id, "key": key, "step": np.arange(n),
                         "value": rng.uniform(1.0, 2.0, n), "wall_time": np.arange(n) * 0.1})


def test_single_spike_and_ends_survive_among_100k_points():
    df = series(100_000)
    df.loc[54_321, "value"] = 50.0
    df.loc[12_345, "value"] = -3.0
    out = minmax_downsample(df, max_points=2000)
    assert len(out) <= 2002
    assert out["value"].max() == 50.0
    assert out["value"].min() == -3.0
    assert out["step"].iloc[0] == 0 and out["step"].iloc[-1] == 99_999
    assert out["step"].is_monotonic_increasing


def test_nan_and_inf_survive():
    df = series(50_000)
    df.loc[777, "value"] = np.nan
    df.loc[888, "value"] = np.inf
    df.loc[999, "value"] = -np.inf
    out = minmax_downsample(df, max_points=1000)
    assert out["value"].isna().sum() == 1
    assert np.isposinf(out["value"]).any() and np.isneginf(out["value"]).any()
    assert len(out) <= 1000 + 2 + 1  # one extra row for the bucket mixing NaN and numbers


def test_all_nan_tail_stays_bounded():
    df = series(20_000)
    df.loc[10_000:, "value"] = np.nan
    out = minmax_downsample(df, max_points=500)
    assert len(out) <= 502 + 1
    assert out["value"].isna().any() and out["step"].iloc[-1] == 19_999


def test_small_frames_untouched():
    df = series(1500)
    assert minmax_downsample(df, max_points=2000) is df
    empty = df.iloc[:0]
    assert minmax_downsample(empty).empty


def test_groups_downsampled_separately_and_small_groups_kept_whole():
    df = pd.concat([series(30_000, run_id=1), series(30_000, run_id=2, seed=1),
                    series(100, run_id=1, key="val/loss")], ignore_index=True)
    out = minmax_downsample(df, max_points=400)
    sizes = out.groupby(["run_id", "key"]).size()
    assert sizes[(1, "val/loss")] == 100
    assert sizes[(1, "train/loss")] <= 402 and sizes[(2, "train/loss")] <= 402
    pd.testing.assert_frame_equal(out[out["key"] == "val/loss"], df[df["key"] == "val/loss"])


def test_by_none_treats_frame_as_one_series_and_respects_x_y_names():
    df = pd.DataFrame({"t": np.linspace(0, 1, 10_000), "v": np.sin(np.arange(10_000))})
    out = minmax_downsample(df, max_points=100, x="t", y="v", by=None)
    assert len(out) <= 102
    assert out["v"].max() == df["v"].max() and out["v"].min() == df["v"].min()


def test_unsorted_input_keeps_input_order_and_constant_x_works():
    df = series(5000).sample(frac=1.0, random_state=0)
    out = minmax_downsample(df, max_points=100)
    assert list(out.index) == [i for i in df.index if i in set(out.index)]
    assert {0, 4999} <= set(out["step"])
    flat = series(5000).assign(step=7)
    assert len(minmax_downsample(flat, max_points=100)) <= 4


def test_rejects_tiny_budget():
    with pytest.raises(ValueError):
        minmax_downsample(series(10), max_points=2)


def test_group_helpers():
    assert group_columns(None) == [] and group_columns("key") == ["key"]
    assert group_columns(("run_id", "key")) == ["run_id", "key"]
    df = pd.DataFrame({"run_id": [2, 1, 2], "key": ["a", "a", "a"]})
    assert group_ids(df, ("run_id", "key")).tolist() == [0, 1, 0]
    assert group_ids(df, None).tolist() == [0, 0, 0]
