"""The Sweeps page's logic: the form's specs and base config, the sweep's runs as a table
(best first), and val loss against each swept setting as a figure."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from analysis.forecast import Forecast
from gptcore.config import TrainConfig, apply_overrides, parse_set_args, preset
from gptcore.errors import GptdashError
from storage.status import ACTIVE, RunStatus
from storage.store import RunRecord
from ui.compute import FIGURE_MARGIN, LEGEND_RIGHT
from ui.config_diff import differing_params
from ui.figures import padded_range
from ui.forecast_view import calibration_label
from ui.format import human_duration
from ui.live import LIVE_REFRESH_S
from ui.plain_text import chart_text

# Settings whose good values spread over decades: a log axis whatever values were tried.
LOG_PARAMS = ("lr", "min_lr", "weight_decay")
# How each run's val loss on the chart was obtained, drawn each its own way.
KINDS = {
    "final": {"symbol": "circle", "size": 10, "color": "#1f77b4"},
    "forecast": {"symbol": "circle-open", "size": 11, "color": "#ff7f0e"},
    "at stop": {"symbol": "x", "size": 9, "color": "#7f7f7f"},
}
# Kinds of val loss in the order they rank: measured before forecast.
RANKED = ("final", "at stop", "forecast")
BEST_MARKER = {"symbol": "star", "size": 18, "color": "#d62728",
               "line": {"width": 1, "color": "black"}}
MEAN_MARKER = {"symbol": "diamond", "size": 12, "color": "#2ca02c",
               "line": {"width": 1, "color": "black"}}
# A sweep with seeds draws its runs faintly behind their points' means.
SEED_RUN_OPACITY = 0.45


def specs(rows: Iterable[tuple[str, str]]) -> list[str]:
    """Form rows of (setting, text) as ``KEY=TEXT`` specs; rows left blank are skipped."""
    return [f"{key}={text.strip()}" for key, text in rows if text.strip()]


def base_config(preset_name: str, overrides: str) -> TrainConfig:
    """The preset with ``key=value`` overrides (one per line; blank lines and lines starting
    with # ignored), as ``--preset``/``--set`` do; GptdashError says what to change."""
    pairs = [line.strip() for line in overrides.splitlines()
             if line.strip() and not line.strip().startswith("#")]
    return apply_overrides(preset(preset_name), parse_set_args(pairs))


def plan_summary(n_runs: int, estimated_seconds: float | None) -> tuple[str, str]:
    """("3 runs", "about 2 min 10 s") for the form's summary tiles."""
    runs = f"{n_runs} run" if n_runs == 1 else f"{n_runs} runs"
    when = human_duration(estimated_seconds)
    return runs, when if estimated_seconds is None else f"about {when}"


def swept_params(spec: dict[str, Any], configs: Sequence[dict[str, Any]]) -> list[str]:
    """The settings a sweep varies: as its spec names them, else those its runs differ in.
    The seed of a sweep with seeds is not one: its runs are repeats of each point."""
    if spec.get("params") or spec.get("seeds"):
        return [str(p) for p in spec["params"]]
    flats = {str(i): TrainConfig.from_dict(c).flat() for i, c in enumerate(configs)}
    return list(differing_params(flats).index) if len(flats) > 1 else []


def sweep_refresh_every(statuses: Iterable[str], visible: bool = True) -> float | None:
    """How often the sweep's results rerun: while any of its runs is queued or training and
    the tab is visible; never once they have all ended."""
    return LIVE_REFRESH_S if visible and any(s in ACTIVE for s in statuses) else None


def _config_values(run: RunRecord, params: Sequence[str]) -> dict[str, Any]:
    try:
        flat = TrainConfig.from_dict(run.config).flat()
    except GptdashError:
        flat = run.config  # an older config: show what it names at its top level
    return {p: flat.get(p) for p in params}


def sweep_table(runs: Sequence[RunRecord], params: Sequence[str], last_loss: dict[int, float],
                forecasts: dict[int, Forecast]) -> pd.DataFrame:
    """One row per run of a sweep, best first: id, name, status, the swept settings, step,
    of (max_steps), last and best val loss, forecast (its low/high, and whether it is
    calibrated: "forecast is"), val loss, kind, best.

    "val loss" is what the chart plots for the run and "kind" how it was obtained:
    a completed run's last evaluation ("final"), a training run's forecast of its
    final loss ("forecast"), or the last evaluation of a run that ended early ("at
    stop": stopped, cut, failed). Measured losses rank first (final, then at stop),
    forecasts after them, and runs with none of these (queued, cancelled, or not
    evaluated yet) last: a forecast is a guess, never ranked above a finished run.
    "best" marks the lowest final loss; with nothing completed, the lowest loss at
    stop; only with neither, the lowest forecast.
    """
    rows = []
    for run in runs:
        forecast = forecasts.get(run.id)
        last = last_loss.get(run.id)
        if run.status == RunStatus.COMPLETED and last is not None:
            value, kind = last, "final"
        elif forecast is not None and run.status in ACTIVE:
            value, kind = forecast.predicted_final, "forecast"
        elif last is not None and run.status not in ACTIVE:
            value, kind = last, "at stop"
        else:
            value, kind = np.nan, ""
        rows.append({"id": run.id, "name": run.name, "status": run.status,
                     **_config_values(run, params),
                     "step": run.last_step, "of": run.max_steps,
                     "last val loss": last if last is not None else np.nan,
                     "best val loss": run.best_val_loss if run.best_val_loss is not None
                     else np.nan,
                     "forecast": forecast.predicted_final if forecast else np.nan,
                     "forecast low": forecast.low if forecast else np.nan,
                     "forecast high": forecast.high if forecast else np.nan,
                     "forecast is": calibration_label(forecast) if forecast else "",
                     "val loss": value, "kind": kind})
    columns = ["id", "name", "status", *params, "step", "of", "last val loss",
               "best val loss", "forecast", "forecast low", "forecast high", "forecast is",
               "val loss", "kind"]
    table = pd.DataFrame(rows, columns=columns).astype({"val loss": "float64"})
    rank = table["kind"].map({kind: i for i, kind in enumerate(RANKED)}).fillna(len(RANKED))
    table = table.assign(_rank=rank).sort_values(["_rank", "val loss", "id"],
                                                 na_position="last", kind="stable")
    table = table.drop(columns="_rank").reset_index(drop=True)
    table["best"] = False
    for kind in RANKED:
        candidates = table.index[table["kind"] == kind]
        if len(candidates):
            table.loc[table.loc[candidates, "val loss"].idxmin(), "best"] = True
            break
    return table


def seed_means(table: pd.DataFrame, params: Sequence[str]) -> pd.DataFrame:
    """Per point of a sweep with seeds (one combination of the swept values), the mean and
    sample std of its completed runs' final val losses: columns ``*params``, mean, std
    (0 for a point with one run done), n, names. Runs not completed are left out: a
    forecast or a loss at stop is not a final loss to average."""
    columns = [*params, "mean", "std", "n", "names"]
    done = table[table["kind"] == "final"]
    if done.empty:
        return pd.DataFrame(columns=columns)
    if not params:  # seeds alone: every run is one point
        done = done.assign(_point=0)
    by = list(params) or ["_point"]
    means = done.groupby(by, dropna=False, sort=False).agg(
        mean=("val loss", "mean"), std=("val loss", "std"), n=("val loss", "size"),
        names=("name", lambda names: ", ".join(names)))
    means["std"] = means["std"].fillna(0.0)
    return means.reset_index()[columns]


def _categorical(values: pd.Series) -> bool:
    return any(isinstance(v, (str, bool, np.bool_)) for v in values.dropna())


def log_axis(param: str, values: pd.Series) -> bool:
    """A log x-axis for learning-rate-like settings and for positive values spanning more
    than two decades."""
    if _categorical(values):
        return False
    known = pd.to_numeric(values, errors="coerce").dropna()
    if known.empty or not (known > 0).all():
        return False
    return param in LOG_PARAMS or known.max() / known.min() > 100


def sweep_figure(table: pd.DataFrame, param: str,
                 means: pd.DataFrame | None = None) -> go.Figure:
    """Val loss against ``param``, one point per run of a :func:`sweep_table`: final
    losses filled, forecasts open (with their band as an error bar), early stops as
    crosses, the best run starred. With ``means`` (:func:`seed_means` of a sweep with
    seeds) each point's mean final loss is a diamond with a ±1 std error bar, its runs
    faint behind it."""
    title = f"val loss vs {param}"
    points = table[table["kind"] != ""]
    categorical = _categorical(table[param])
    seeded = means is not None and not means.empty
    traces: list[dict] = []
    for kind, marker in KINDS.items():
        part = points[points["kind"] == kind]
        if part.empty:
            continue
        xs = part[param].astype(str) if categorical else part[param]
        trace = {"type": "scatter", "x": xs, "y": part["val loss"], "mode": "markers",
                 "name": kind, "marker": marker, "text": part["name"].map(chart_text),
                 "opacity": SEED_RUN_OPACITY if seeded else 1.0,
                 "hovertemplate": f"%{{text}}<br>{param} %{{x}}<br>{kind} val loss "
                                  "%{y:.4g}<extra></extra>"}
        if kind == "forecast":
            trace["error_y"] = {"type": "data", "symmetric": False,
                                "array": part["forecast high"] - part["val loss"],
                                "arrayminus": part["val loss"] - part["forecast low"],
                                "color": marker["color"], "thickness": 1}
        traces.append(trace)
    best = points[points["best"]]
    if not best.empty:
        traces.append({"type": "scatter", "mode": "markers", "name": "best",
                       "x": best[param].astype(str) if categorical else best[param],
                       "y": best["val loss"], "marker": BEST_MARKER,
                       "text": best["name"].map(chart_text),
                       "hovertemplate": f"best: %{{text}}<br>{param} %{{x}}<br>val loss "
                                        "%{y:.4g}<extra></extra>"})
    if seeded:
        traces.append({"type": "scatter", "mode": "markers", "name": "mean of seeds ± std",
                       "x": means[param].astype(str) if categorical else means[param],
                       "y": means["mean"], "marker": MEAN_MARKER,
                       "error_y": {"type": "data", "array": means["std"], "thickness": 1.5,
                                   "color": MEAN_MARKER["color"]},
                       "customdata": np.stack([means["std"], means["n"]], axis=-1),
                       "hovertemplate": f"{param} %{{x}}<br>mean final val loss %{{y:.4g}} ± "
                                        "%{customdata[0]:.2g}<br>%{customdata[1]} seeds"
                                        "<extra></extra>"})
    xaxis: dict[str, Any] = {"title": {"text": param}}
    yaxis: dict[str, Any] = {"title": {"text": "val loss"}}
    if categorical:
        xaxis.update(type="category", categoryorder="category ascending")
    else:
        log = log_axis(param, table[param])
        xaxis["type"] = "log" if log else "linear"
        xs = pd.to_numeric(points[param], errors="coerce").dropna()
        if len(xs):  # markers (a star is 18 px) inside the plot, not cut at its edges
            xaxis["range"] = padded_range(xs.min(), xs.max(), log=log, pad=0.08)
    ys = pd.concat([points["val loss"], points["forecast low"], points["forecast high"],
                    *([means["mean"] - means["std"], means["mean"] + means["std"]]
                      if seeded else [])])
    ys = pd.to_numeric(ys, errors="coerce").dropna()
    if len(ys):
        yaxis["range"] = padded_range(ys.min(), ys.max(), log=False, pad=0.08)
    layout = {"title": {"text": title, "x": 0, "xanchor": "left"}, "margin": FIGURE_MARGIN,
              "legend": LEGEND_RIGHT, "xaxis": xaxis, "yaxis": yaxis, "height": 380}
    if not traces:
        layout["annotations"] = [{"text": "No val loss yet", "x": 0.5, "y": 0.5,
                                  "xref": "paper", "yref": "paper", "showarrow": False,
                                  "font": {"size": 16, "color": "gray"}}]
    return go.Figure(data=traces, layout=layout)
