from dataclasses import replace

import numpy as np
import pytest

from analysis.forecast import forecast_final
from ui.forecast_view import (
    BAND_NAME,
    FORECAST_NAME,
    band_text,
    calibration_label,
    eta_text,
    forecast_summary,
    forecast_table,
    forecast_traces,
    try_forecast,
)

MAX_STEPS = 1000


@pytest.fixture(scope="module")
def forecast():
    """A power law in steps (constant lr) seen up to step 400, with a little noise."""
    steps = np.arange(20, 401, 20)
    rng = np.random.default_rng(0)
    loss = 2.0 + 8.0 * (steps * 1e-3) ** -0.5 * 0.1 + rng.normal(0, 0.005, steps.size)
    result = forecast_final(steps, loss, np.full(MAX_STEPS, 1e-3), MAX_STEPS)
    assert result is not None
    return result


def test_summary_names_the_final_value_band_and_what_it_saw(forecast):
    text = forecast_summary(forecast)
    assert text.startswith(f"Forecast final val loss {forecast.predicted_final:.3g} "
                           f"({forecast.low:.3g}–{forecast.high:.3g}, 90% band) at step 1,000")
    assert "from 20 evaluations up to step 400" in text
    assert "uncalibrated: no finished relative yet" in text  # fitted on this run alone


def test_summary_and_table_say_a_forecast_is_calibrated_and_on_how_many(forecast):
    calibrated = replace(forecast, calibrated=True, family_size=3, band_source="relatives")
    assert "calibrated on 3 finished relatives; the band is from their forecasts' misses" in (
        forecast_summary(calibrated))
    assert "uncalibrated" not in forecast_summary(calibrated)
    one = replace(forecast, calibrated=True, family_size=1)
    assert "calibrated on 1 finished relative; the band is the fit's own" in (
        forecast_summary(one))
    assert calibration_label(calibrated) == "calibrated (3)"
    assert calibration_label(forecast) == "uncalibrated" and calibration_label(None) == "—"


def test_summary_says_which_relatives_were_left_out_and_why(forecast):
    why = "#7: diverged: its val loss rose from 3.1 at step 200 to 9.8 at step 1,000"
    calibrated = replace(forecast, calibrated=True, family_size=3, band_source="relatives",
                         left_out=(why,))
    assert forecast_summary(calibrated).endswith(
        "calibrated on 3 finished relatives; the band is from their forecasts' misses; "
        f"left out of the family's fit, off the law: {why}")
    # Its only relative left out: fitted alone, but not for want of a finished relative.
    alone = replace(forecast, left_out=(why,))
    assert forecast_summary(alone).endswith(
        "uncalibrated: the law's shape is fitted on this run alone and the band is the "
        f"fit's own; left out of the family's fit, off the law: {why}")


def test_traces_a_band_between_low_and_high_and_a_dotted_curve_to_max_steps(forecast):
    low, high, mid = forecast_traces(forecast, "#636efa")
    assert [t["name"] for t in (low, high, mid)] == [f"{FORECAST_NAME} low", BAND_NAME,
                                                     FORECAST_NAME]
    assert high["fill"] == "tonexty" and high["fillcolor"] == "rgba(99,110,250,0.15)"
    assert not low["showlegend"] and mid["line"]["dash"] == "dot"
    assert mid["x"][0] == 400 and mid["x"][-1] == MAX_STEPS
    assert mid["y"][-1] == pytest.approx(forecast.predicted_final)
    assert np.all(low["y"] <= mid["y"]) and np.all(mid["y"] <= high["y"])
    assert high["y"][-1] == pytest.approx(forecast.high)


def test_traces_scale_to_tokens_and_clip_the_band(forecast):
    low, high, mid = forecast_traces(forecast, "#636efa", x_per_step=64,
                                     clip=(0.0, forecast.predicted_final))
    assert mid["x"][-1] == MAX_STEPS * 64
    assert high["y"].max() <= forecast.predicted_final
    assert mid["customdata"][-1][1] == pytest.approx(forecast.high)  # the hover keeps it all


def test_eta_gives_the_step_and_time_or_says_it_is_not_reached(forecast):
    target = (forecast.curve([600]).mean[0] + forecast.curve([601]).mean[0]) / 2
    text = eta_text(forecast, round(target, 6), last_step=400, seconds_per_step=0.5)
    assert "at about step 601" in text and "in about 1 min 40 s" in text
    assert "not reached by step 1,000" in eta_text(forecast, 0.5, last_step=400,
                                                    seconds_per_step=0.5)
    assert "already passed" in eta_text(forecast, 10.0, last_step=400, seconds_per_step=None)
    no_pace = eta_text(forecast, round(target, 6), last_step=400, seconds_per_step=None)
    assert no_pace.endswith("step 601.")


def test_a_failing_forecast_becomes_one_line():
    def boom():
        raise ValueError("lr_per_step has 5 values")

    assert try_forecast(boom) == (None, "No forecast: lr_per_step has 5 values")
    assert try_forecast(lambda: None) == (None, None)


def test_forecast_table(forecast):
    table = forecast_table([
        {"run": "#1 a", "status": "running", "last_val": 2.5, "forecast": forecast},
        {"run": "#2 b", "status": "queued", "last_val": None, "forecast": None},
    ])
    assert list(table.columns) == ["run", "status", "last val loss", "forecast final", "band",
                                   "calibration"]
    assert table.values.tolist() == [
        ["#1 a", "running", "2.5000", f"{forecast.predicted_final:.4f}", band_text(forecast),
         "uncalibrated"],
        ["#2 b", "queued", "—", "—", "—", "—"]]


def test_forecast_traces_end_where_asked_but_never_past_max_steps_or_before_the_start(
        forecast):
    start = forecast.upto_step
    assert forecast_traces(forecast, "#636efa", until=start + 10)[2]["x"][-1] == start + 10
    assert forecast_traces(forecast, "#636efa", until=10**9)[2]["x"][-1] == forecast.max_steps
    assert forecast_traces(forecast, "#636efa", until=1)[2]["x"][-1] == start
