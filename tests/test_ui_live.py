import numpy as np
import pandas as pd
import pytest

from ui.live import LiveSeries, view_range


def chunk(start: int, stop: int, key: str = "train/loss", run_id: int = 1) -> pd.DataFrame:
    steps = np.arange(start, stop)
    return pd.DataFrame({"run_id": run_id, "key": key, "step": steps,
                         "value": 1.0 + np.sin(steps / 50.0), "wall_time": 1e9 + steps * 0.1})


def test_appends_only_newer_rows_and_versions_only_on_new_data():
    live = LiveSeries()
    assert live.cursor is None and live.frame.empty and live.version == 0
    assert live.append(chunk(0, 10)) == 10
    assert live.cursor == 9 and live.version == 1
    assert live.append(chunk(5, 15)) == 5  # overlapping read: only steps 10..14 are new
    assert live.cursor == 14 and live.version == 2
    assert live.append(chunk(0, 15)) == 0
    assert live.append(chunk(0, 0)) == 0
    assert live.version == 2
    assert live.frame["step"].tolist() == list(range(15))


def test_each_series_has_its_own_cursor():
    live = LiveSeries()
    live.append(pd.concat([chunk(0, 11), chunk(0, 1, key="val/loss")]))
    # val/loss at step 10 written a moment after train/loss 10 was read
    added = live.append(pd.concat([chunk(10, 12), chunk(10, 11, key="val/loss")]))
    assert added == 2
    assert live.cursor == 11
    assert live.frame.duplicated(["run_id", "key", "step"]).sum() == 0


def test_memory_bounded_over_100k_rows_with_newest_at_full_resolution():
    live = LiveSeries(max_points=4000)
    spike_step = 12_345
    for start in range(0, 100_000, 500):
        part = chunk(start, start + 500)
        part.loc[part["step"] == spike_step, "value"] = 99.0
        live.append(part)
        assert len(live.frame) <= 2 * 4000
    frame = live.frame
    assert live.cursor == 99_999 and live.version == 200
    assert frame["value"].max() == 99.0
    assert frame["step"].min() == 0
    tail = frame.sort_values("step")["step"].to_numpy()[-1000:]
    np.testing.assert_array_equal(tail, np.arange(99_000, 100_000))


def test_bound_applies_per_series():
    live = LiveSeries(max_points=100)
    for start in range(0, 5000, 250):
        live.append(pd.concat([chunk(start, start + 250), chunk(start, start + 250, key="lr")]))
    sizes = live.frame.groupby("key").size()
    assert (sizes <= 200).all() and (sizes >= 50).all()


def test_rejects_tiny_budget():
    with pytest.raises(ValueError):
        LiveSeries(max_points=4)


def test_view_range():
    assert view_range(True, 5000, 1000, (1.0, 2.0)) == (4000.0, 5000.0)
    assert view_range(True, 300, 1000, None) == (0.0, 300.0)
    assert view_range(True, 300, None, (1.0, 2.0)) is None
    assert view_range(True, None, 1000, None) is None
    assert view_range(False, 5000, 1000, (10.0, 20.0)) == (10.0, 20.0)
    assert view_range(False, 5000, 1000, None) is None
