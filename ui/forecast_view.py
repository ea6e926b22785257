"""A run's val-loss forecast on the pages: the dashed curve with its band, the one-line
summary, the step (and time) at which a target loss is reached, the Compare table.

Pure: a ``Forecast`` (``analysis.forecast``) in, plotly trace dicts and text out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import pandas as pd

from analysis.forecast import Forecast, eta_to_loss
from ui.format import human_duration

log = logging.getLogger(__name__)
CURVE_POINTS = 120  # the forecast is smooth: a hundred-odd points draw it
FORECAST_NAME = "forecast"
BAND_NAME = "forecast band"
TABLE_COLUMNS = ["run", "status", "last val loss", "forecast final", "band", "calibration"]
UNCALIBRATED = "uncalibrated"


def band_text(forecast: Forecast) -> str:
    return f"{forecast.low:.3g}–{forecast.high:.3g}"


def calibration_text(forecast: Forecast) -> str:
    """Whether the forecast learned from finished relatives, where its band comes from,
    and which relatives were left out of the family's fit, and why."""
    left_out = ("; left out of the family's fit, off the law: " + "; ".join(forecast.left_out)
                if forecast.left_out else "")
    if not forecast.calibrated:
        why = ("no finished relative yet (a completed run of the same model, data, batch "
               "and optimizer), so " if forecast.family_size == 0 and not left_out else "")
        return (f"{UNCALIBRATED}: {why}the law's shape is fitted on this run alone and "
                f"{_band_basis(forecast)}{left_out}")
    n = forecast.family_size
    if forecast.other_shapes:
        basis = ("the band is from how far each shape's runs missed with the others' law"
                 if forecast.band_source == "other shapes" else _band_basis(forecast))
        return (f"{_other_shapes(forecast)}, with no finished run of this shape to learn "
                f"from; {basis}{left_out}")
    relatives = f"{n} finished relative{'s' if n != 1 else ''}"
    if forecast.band_source == "relatives":
        return f"calibrated on {relatives}; the band is from their forecasts' misses{left_out}"
    return (f"calibrated on {relatives}; the band is the fit's own (two relatives are "
            f"needed to measure misses){left_out}")


def _other_shapes(forecast: Forecast) -> str:
    n = forecast.family_size
    return f"calibrated on other shapes ({n} run{'s' if n != 1 else ''})"


def _band_basis(forecast: Forecast) -> str:
    """Where an unchecked forecast's band comes from: the fit, or the rule that widens it."""
    if forecast.band_source != "rule":
        return "the band is the fit's own"
    share = forecast.half_width / forecast.predicted_final if forecast.predicted_final else 0
    return (f"the band is ±{share:.0%}, as far as forecasts of a run alone missed on real "
            f"runs (the fit's own was narrower)")


def calibration_label(forecast: Forecast | None) -> str:
    """A few words for a table: "calibrated (3)", "calibrated on other shapes (12 runs)",
    "uncalibrated" or "—"."""
    if forecast is None:
        return "—"
    if not forecast.calibrated:
        return UNCALIBRATED
    if forecast.other_shapes:
        return _other_shapes(forecast)
    return f"calibrated ({forecast.family_size})"


def forecast_summary(forecast: Forecast) -> str:
    """"Forecast final val loss 2.41 (2.36–2.46, 90% band) at step 5,000", with how much it
    saw and whether it is calibrated."""
    return (f"Forecast final val loss {forecast.predicted_final:.3g} ({band_text(forecast)}, "
            f"{forecast.level:.0%} band) at step {forecast.max_steps:,}, from "
            f"{forecast.n_points} evaluations up to step {forecast.upto_step:,} · "
            f"{calibration_text(forecast)}")


def forecast_traces(forecast: Forecast, color: str, *, name: str = FORECAST_NAME,
                    x_per_step: float = 1.0,
                    clip: tuple[float, float] | None = None,
                    until: int | None = None) -> list[dict]:
    """The forecast from its last evaluation to max_steps: a shaded band (low to high) and
    a dotted line through its middle, in the run's ``color``.

    ``x_per_step`` scales steps to the chart's x-axis (tokens per step on a tokens axis).
    ``clip`` bounds the band's edges, so an early, wide band does not squash the curves
    it continues (the hover still gives the whole band). ``until`` ends the curve at that
    step instead of max_steps (never before its start).
    """
    start = max(forecast.upto_step, 1)
    end = forecast.max_steps if until is None else max(start, min(until, forecast.max_steps))
    steps = np.unique(np.linspace(start, end, CURVE_POINTS).round().astype(int))
    curve = forecast.curve(steps)
    xs = curve.steps * x_per_step
    low, high = curve.low, curve.high
    if clip is not None:
        low, high = np.clip(low, *clip), np.clip(high, *clip)
    fill = _translucent(color, 0.15)
    band = {"type": "scatter", "mode": "lines", "x": xs, "legendgroup": name,
            "line": {"width": 0, "color": fill}, "hoverinfo": "skip", "showlegend": False}
    return [
        {**band, "name": f"{name} low", "y": low},
        {**band, "name": f"{name} band", "y": high, "fill": "tonexty", "fillcolor": fill},
        {"type": "scatter", "mode": "lines", "x": xs, "y": curve.mean, "name": name,
         "legendgroup": name, "line": {"color": color, "dash": "dot", "width": 2},
         "customdata": np.column_stack([curve.low, curve.high]),
         "hovertemplate": "%{y:.4g} (%{customdata[0]:.3g}–%{customdata[1]:.3g})"},
    ]


def _translucent(color: str, alpha: float) -> str:
    """``rgba(...)`` of a ``#rrggbb`` colour at ``alpha``; other colours pass unchanged."""
    if color.startswith("#") and len(color) == 7:
        r, g, b = (int(color[i:i + 2], 16) for i in (1, 3, 5))
        return f"rgba({r},{g},{b},{alpha})"
    return color


def eta_text(forecast: Forecast, target: float, *, last_step: int,
             seconds_per_step: float | None, step: int | None | bool = False) -> str:
    """When the forecast reaches val loss ``target``: the step, and from ``last_step`` at
    ``seconds_per_step`` how long until then; or that it does not by max_steps.

    ``step`` is ``eta_to_loss(forecast, target)`` when the caller kept it (on a long run
    it scans every step to max_steps); by default it is computed here."""
    if step is False:
        step = eta_to_loss(forecast, target)
    if step is None:
        return (f"Val loss {target:g} is not reached by step {forecast.max_steps:,} "
                f"(forecast final {forecast.predicted_final:.3g}).")
    if step <= last_step:
        return f"The fitted curve reaches val loss {target:g} at step {step:,}, already passed."
    wait = ""
    if seconds_per_step:
        wait = f", in about {human_duration((step - last_step) * seconds_per_step)}"
    return f"Val loss {target:g} at about step {step:,}{wait}."


def try_forecast(compute: Callable[[], Forecast | None]) -> tuple[Forecast | None, str | None]:
    """``compute()``, or None and one line saying why it failed: a page shows a caption for a
    forecast that cannot be made, never a traceback."""
    try:
        return compute(), None
    except Exception as exc:  # any fault in a fit is worth a caption, not a traceback
        log.warning("forecast failed", exc_info=True)
        return None, f"No forecast: {exc}"


def forecast_table(rows: list[dict]) -> pd.DataFrame:
    """The Compare table, as text, from one dict per run: run, status, last_val (or None),
    forecast (a Forecast or None)."""
    out = []
    for row in rows:
        forecast: Forecast | None = row["forecast"]
        last = row["last_val"]
        out.append({
            "run": row["run"], "status": row["status"],
            "last val loss": f"{last:.4f}" if last is not None else "—",
            "forecast final": f"{forecast.predicted_final:.4f}" if forecast else "—",
            "band": band_text(forecast) if forecast else "—",
            "calibration": calibration_label(forecast),
        })
    return pd.DataFrame(out, columns=TABLE_COLUMNS)
