import numpy as np
import pandas as pd
import pytest

from ui.live import (
    LIVE_REFRESH_S,
    LastBuilt,
    LiveCharts,
    LiveSeries,
    refresh_every,
    sidebar_refresh_every,
    trained_by,
    view_range,
)

CHARTS = {"Loss": ["train/loss", "val/loss"], "Learning rate": ["lr"],
          "Gradient norm": ["grad_norm"]}


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


def test_latest_value_per_key_follows_the_newest_step():
    live = LiveSeries()
    assert live.latest("tokens_per_sec") is None
    live.append(chunk(0, 10, key="tokens_per_sec"))
    assert live.latest("tokens_per_sec") == pytest.approx(1.0 + np.sin(9 / 50.0))
    live.append(chunk(5, 10, key="tokens_per_sec"))  # an overlapping read changes nothing
    assert live.latest("tokens_per_sec") == pytest.approx(1.0 + np.sin(9 / 50.0))


def test_last_built_rebuilds_only_for_a_new_key():
    built = LastBuilt()
    assert built.get(1, lambda: ["a"]) == ["a"]
    assert built.get(1, lambda: ["b"]) == ["a"] and built.builds == 1
    assert built.get(2, lambda: ["c"]) == ["c"] and built.builds == 2


def live_charts() -> LiveCharts:
    return LiveCharts(CHARTS, {1: "run"}, uirevision="1", height=300)


def test_no_new_rows_reuses_the_figures_with_no_figure_work():
    live = LiveSeries()
    live.append(pd.concat([chunk(0, 100), chunk(0, 100, key="lr")]))
    charts = live_charts()
    first = charts.show(live.version, live.frame, None)
    assert charts.builds == 3 and charts.updates == 0
    live.append(chunk(50, 100))  # a refresh that finds only rows it already has
    assert charts.show(live.version, live.frame, None) is first
    assert charts.builds == 3 and charts.updates == 0


def test_new_rows_update_the_figures_in_place():
    live = LiveSeries()
    live.append(pd.concat([chunk(0, 100), chunk(0, 100, key="lr")]))
    charts = live_charts()
    loss, lr, grad = charts.show(live.version, live.frame, None)
    live.append(pd.concat([chunk(100, 110), chunk(100, 110, key="lr")]))
    again = charts.show(live.version, live.frame, (10.0, 109.0))
    assert again[0] is loss and again[1] is lr  # same figures, new points
    assert charts.updates == 2 and charts.builds == 3  # grad norm: still no data
    assert loss.data[0].x[-1] == 109 and len(loss.data[0].y) == 110
    assert list(loss.layout.xaxis.range) == [10.0, 109.0]
    charts.show(("follow", live.version), live.frame, None)  # the view changed back
    assert loss.layout.xaxis.range is None


def test_a_new_metric_rebuilds_its_chart():
    live = LiveSeries()
    live.append(chunk(0, 20))
    charts = live_charts()
    [loss, *_] = charts.show(live.version, live.frame, None)
    live.append(chunk(0, 21, key="val/loss"))  # the first evaluation
    [with_val, *_] = charts.show(live.version, live.frame, None)
    assert with_val is not loss
    assert [t.name for t in with_val.data] == ["train/loss", "val/loss"]


def test_live_charts_one_per_chart_with_its_keys_and_height():
    live = LiveSeries()
    live.append(pd.concat([chunk(0, 20), chunk(0, 20, key="val/loss"), chunk(0, 20, key="lr")]))
    figs = live_charts().show(live.version, live.frame, (0.0, 10.0))
    assert [f.layout.title.text for f in figs] == list(CHARTS)
    assert [t.name for t in figs[0].data] == ["train/loss", "val/loss"]
    assert figs[1].data[0].name == "run"
    assert figs[2].layout.annotations[0].text == "No data yet"  # no grad_norm rows
    assert all(f.layout.height == 300 for f in figs[:2])
    assert list(figs[0].layout.xaxis.range) == [0.0, 10.0]
    assert figs[0].layout.uirevision == "1"


def test_live_views_refresh_only_active_runs_in_visible_tabs():
    assert refresh_every("running") == LIVE_REFRESH_S
    assert refresh_every("queued") == LIVE_REFRESH_S
    for ended in ("completed", "stopped", "failed", "interrupted"):
        assert refresh_every(ended) is None
    assert refresh_every("running", visible=False) is None


def test_live_view_of_a_run_due_to_resume_by_itself_keeps_refreshing():
    # Killed worker: the page showed "interrupted ... resumes by itself after 04:27:49" and
    # still did a minute after the run was training again.
    assert refresh_every("interrupted", resume_due=True) == LIVE_REFRESH_S
    assert refresh_every("interrupted", visible=False, resume_due=True) is None


def test_sidebar_refreshes_on_lives_beat_while_a_run_trains_or_waits():
    # "Training now … step 0/3000" stayed at step 0: the sidebar must refresh while training,
    # and as often as Live (it read 150 beside Live's 200), and while runs wait to start.
    assert sidebar_refresh_every(True) == LIVE_REFRESH_S
    assert sidebar_refresh_every(False) is None  # an idle worker costs no refreshes
    assert sidebar_refresh_every(True, visible=False) is None


def marker(xs, text: str, name: str = "spike") -> dict:
    return {"type": "scatter", "mode": "markers", "name": name, "x": np.asarray(xs),
            "y": np.ones(len(xs)), "text": [text] * len(xs)}


def test_overlays_drawn_on_their_chart_and_updated_in_place_with_their_hover_text():
    live = LiveSeries()
    live.append(pd.concat([chunk(0, 100), chunk(0, 100, key="lr")]))
    charts = live_charts()
    loss, lr, _ = charts.show((live.version, 0), live.frame, None,
                              {"Loss": [marker([10], "first")]})
    assert [t.name for t in loss.data] == ["run", "spike"]  # one key: named by its run
    assert loss.data[1].text == ("first",) and [t.name for t in lr.data] == ["run"]
    live.append(chunk(100, 110))
    again, *_ = charts.show((live.version, 1), live.frame, None,
                            {"Loss": [marker([10, 105], "second")]})
    assert again is loss and charts.updates == 2  # same traces: updated, not rebuilt
    assert list(loss.data[1].x) == [10, 105] and loss.data[1].text == ("second", "second")
    # A new kind of marker is a new trace: the chart is built anew.
    third, *_ = charts.show((live.version, 2), live.frame, None,
                            {"Loss": [marker([10], "s"), marker([50], "r", name="roll-back")]})
    assert third is not loss and [t.name for t in third.data][1:] == ["spike", "roll-back"]


def test_overlays_wait_for_curves_and_a_refresh_without_news_reuses_them():
    charts = live_charts()
    empty = charts.show(0, pd.DataFrame(columns=["run_id", "key", "step", "value"]), None,
                        {"Loss": [marker([1], "x")]})
    assert empty[0].data == ()  # "No data yet", no lone markers
    live = LiveSeries()
    live.append(chunk(0, 10))
    first = charts.show(1, live.frame, None, {"Loss": [marker([1], "x")]})
    assert charts.show(1, live.frame, None, {"Loss": []}) is first


def test_latest_step_per_metric():
    live = LiveSeries()
    assert live.latest_step("val/loss") is None
    live.append(pd.concat([chunk(0, 100), chunk(0, 51, key="val/loss")]))
    assert live.latest_step("val/loss") == 50 and live.latest_step("train/loss") == 99
    live.append(chunk(100, 120))  # no new evaluation: the forecast's key stays
    assert live.latest_step("val/loss") == 50


def test_trained_by_names_worker_device_and_a_host_the_worker_does_not():
    assert trained_by("gpu-box:4242", "cuda:0", "gpu-box") == (
        "Trained by worker gpu-box:4242 on cuda:0")
    assert trained_by("w1", "cpu", "lab-2") == "Trained by worker w1 on cpu (host lab-2)"
    assert trained_by(None, "mps", None) == "Trained on mps"
    assert trained_by(None, None, None) is None


def test_a_one_point_chart_is_rebuilt_when_more_points_come_so_it_autoscales_again():
    live = LiveSeries()
    live.append(chunk(0, 1))
    charts = live_charts()
    [loss, _, empty] = charts.show(live.version, live.frame, None)
    assert loss.layout.yaxis.range is not None  # one point: a range around it
    assert empty.layout.height == 300  # "No data yet" as tall as its neighbours
    live.append(chunk(1, 50))
    [loss, _, _] = charts.show(live.version, live.frame, None)
    assert loss.layout.yaxis.range is None and loss.layout.xaxis.range is None
    assert loss.data[0].mode == "lines"
