"""Plotly figures built from metric and run frames: pure, so tests need no browser."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.colors
import plotly.graph_objects as go

from gptcore.config import TrainConfig
from gptcore.schedule import lr_curve
from ui.plain_text import chart_text
from ui.smoothing import ema

PALETTE: tuple[str, ...] = tuple(plotly.colors.qualitative.Plotly)
DASHES = ("solid", "dash", "dot", "dashdot", "longdash", "longdashdot")
# Above this many points a trace is drawn with WebGL; SVG gets sluggish past a few thousand.
WEBGL_THRESHOLD = 1000
SHADOW_OPACITY = 0.25
X_MODES = ("step", "tokens", "time")
X_TITLES = {"step": "step", "tokens": "tokens seen", "time": "seconds since start"}
_MARGIN = {"l": 10, "r": 10, "t": 60, "b": 10}
_LEGEND_ON_TOP = {"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "left", "x": 0}
# d3 formats: ticks as SI with three significant digits at most ("2.39k", "150", "20k"),
# never "2,394.5" or "48.1345k"; small values (losses, learning rates) keep plotly's own.
SI_TICKS = ".3~s"
SI_FROM = 1e4
# A curve of one point or a few steps: at least this many steps shown, from 0, so ticks
# are whole steps (never plotly's -1..1 or "0, 200m, ... 1").
MIN_X_SPAN = 10
EDGE_PAD = 0.03  # of an axis's span, each side: a marker at the end is drawn whole
MAX_VALUE_TICKS = 8  # a hyperparameter tried at more values gets plotly's own ticks


def run_colors(run_ids: list[int]) -> dict[int, str]:
    """A palette colour per run, by position, so a run keeps its colour across one page's charts."""
    return {int(run_id): PALETTE[i % len(PALETTE)] for i, run_id in enumerate(run_ids)}


def _empty_figure(title: str, height: int | None = None) -> go.Figure:
    fig = go.Figure()
    fig.add_annotation(text="No data yet", x=0.5, y=0.5, xref="paper", yref="paper",
                       showarrow=False, font={"size": 16, "color": "gray"})
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_layout(title={"text": title, "x": 0, "xanchor": "left"}, margin=_MARGIN)
    if height is not None:
        fig.update_layout(height=height)  # as tall as its neighbours in a grid of charts
    return fig


def _axis_range(lo: float, hi: float, log: bool) -> list[float] | None:
    """A plotly axis range; log axes take log10 of their bounds."""
    if not log:
        return [lo, hi]
    if hi <= 0:
        return None
    lo = lo if lo > 0 else min(1.0, hi / 10)  # a window starting at step 0 has no log
    return [math.log10(lo), math.log10(hi)]


def metric_figure(
    df: pd.DataFrame,
    *,
    title: str,
    names: dict[int, str] | None = None,
    x: str = "step",
    log_x: bool = False,
    log_y: bool = False,
    smoothing: float = 0.0,
    x_range: tuple[float, float] | None = None,
    y_title: str | None = None,
    uirevision: str | None = None,
    x_title: str | None = None,
    height: int | None = None,
) -> go.Figure:
    """One line per (run, key) of a long metric frame (run_id, key, ``x``, value).

    A run keeps one colour (runs ordered as ``names``, then by id) and a key one
    dash style, so a run's train and val losses read as a pair. With
    ``smoothing`` > 0 the raw curve stays as a faint shadow under its EMA.
    ``uirevision`` keeps the user's zoom and legend clicks across refreshes.

    Traces and layout are plain dicts validated once by the Figure constructor:
    plotly's ``update_layout``/``update_xaxes`` validate again on every call, and
    cost a live page most of its refresh time.
    """
    if df.empty:
        return _empty_figure(title, height)
    keys = sorted(df["key"].unique())
    if y_title is None and len(keys) == 1:
        y_title = keys[0]
    layout = {
        "title": {"text": title, "x": 0, "xanchor": "left"},
        "hovermode": "x unified",
        "margin": _MARGIN,
        "legend": _LEGEND_ON_TOP,
        "uirevision": uirevision,
        "xaxis": {"title": {"text": x_title if x_title is not None else x},
                  "type": "log" if log_x else "linear",
                  **axis_formats(df[x], log=log_x, x=True),
                  **({"range": x_axis_range(x_range, log_x)} if x_range is not None else {})},
        "yaxis": {"title": {"text": y_title}, "type": "log" if log_y else "linear",
                  **axis_formats(df["value"], log=log_y, x=False)},
    }
    if height is not None:
        layout["height"] = height
    return go.Figure(data=metric_traces(df, names=names, x=x, smoothing=smoothing), layout=layout)


def axis_formats(values: pd.Series, *, log: bool, x: bool) -> dict:
    """Tick and hover formats for an axis of ``values``, and, when they are all one value
    (a run with one point), a range around it instead of plotly's value-1..value+1.

    A live chart with such a fixed range is rebuilt, not updated in place, when more
    points come (``ui.live.LiveCharts``), so they autoscale.
    """
    finite = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return {}
    top = float(np.abs(finite).max())
    whole = bool(np.all(finite == np.round(finite)))
    formats: dict = {}
    if x:
        formats = {"tickformat": SI_TICKS, "hoverformat": ",d" if whole else ",.4~g"}
    else:
        formats = {"hoverformat": ".4~s" if top >= SI_FROM else ".4~g"}
        if top >= SI_FROM:
            formats["tickformat"] = SI_TICKS
    lo, hi = float(finite.min()), float(finite.max())
    if x and not log and (lo == hi or (whole and hi - lo < MIN_X_SPAN)):
        # A few steps: plotly would tick 0, 0.2, ... 1 ("200m"); steps are whole numbers.
        formats["range"] = _few_steps_range(lo, hi)
    elif lo == hi and not log:
        if not x:
            pad = abs(lo) * 0.2 or 1.0
            formats["range"] = [lo - pad, lo + pad] if lo > 0 else [lo - pad, pad]
    return formats


def _few_steps_range(lo: float, hi: float) -> list[float]:
    """An x-range at least MIN_X_SPAN wide from 0 (or ``lo``, when below 0), so its ticks
    fall on whole numbers, padded so a marker at either end is not cut at the edge."""
    low = min(0.0, lo)
    high = max(low + MIN_X_SPAN, 2 * hi if lo == hi else hi)
    pad = EDGE_PAD * (high - low)
    return [low - pad, high + pad]


def metric_traces(df: pd.DataFrame, *, names: dict[int, str] | None = None, x: str = "step",
                  smoothing: float = 0.0) -> list[dict]:
    """The traces of ``metric_figure`` as plain dicts, in drawing order."""
    names = names or {}
    present = {int(r) for r in df["run_id"].unique()}
    # Colours come from all named runs, so a run missing from this chart keeps its slot.
    colors = run_colors([*names, *sorted(present - set(names))])
    runs = [r for r in colors if r in present]
    keys = sorted(df["key"].unique())
    dashes = {key: DASHES[i % len(DASHES)] for i, key in enumerate(keys)}
    traces: list[dict] = []
    groups = dict(iter(df.groupby(["run_id", "key"], sort=False)))
    for run_id in runs:
        run_name = chart_text(names.get(run_id, f"run {run_id}"))  # Plotly reads tags
        for key in keys:
            part = groups.get((run_id, key))
            if part is None:
                continue
            part = part.sort_values(x, kind="stable")
            xs = part[x].to_numpy()
            ys = part["value"].to_numpy(dtype=float)
            name = run_name if len(keys) == 1 else key if len(runs) == 1 else f"{run_name} · {key}"
            kind = "scattergl" if len(part) > WEBGL_THRESHOLD else "scatter"
            line = {"color": colors[run_id], "dash": dashes[key]}
            if smoothing > 0:
                traces.append({"type": kind, "x": xs, "y": ys, "mode": "lines", "name": name,
                               "line": line, "opacity": SHADOW_OPACITY, "showlegend": False,
                               "legendgroup": name, "hoverinfo": "skip"})
                ys = ema(ys, smoothing)
            # A lone point draws no line: give it a marker, or the chart looks empty; drawn
            # whole even where it sits on the plot's edge (a live window ends at it).
            lone = {"mode": "lines+markers", "cliponaxis": False} if len(xs) == 1 else {}
            traces.append({"type": kind, "x": xs, "y": ys, "mode": "lines", "name": name,
                           "line": line, "legendgroup": name, **lone})
    return traces


def x_axis_range(x_range: tuple[float, float] | None, log_x: bool = False) -> list[float] | None:
    """A plotly x-axis range for ``x_range`` (None: plotly autoscales)."""
    if x_range is None:
        return None
    lo, hi = float(x_range[0]), float(x_range[1])
    if not log_x:  # a window of a few steps would tick fractions of a step
        hi = max(hi, lo + MIN_X_SPAN)
    return _axis_range(lo, hi, log_x)


def x_axis_frame(
    df: pd.DataFrame, mode: str, tokens_per_step: dict[int, int] | None = None
) -> pd.DataFrame:
    """A copy of ``df`` with an ``x`` column for the chosen x-axis.

    "step": the step. "tokens": step times the run's tokens per step (NaN for a
    run missing from ``tokens_per_step``). "time": seconds since the run's first
    recorded metric, so runs started at different times line up.
    """
    out = df.copy()
    if mode == "step":
        out["x"] = out["step"]
    elif mode == "tokens":
        if tokens_per_step is None:
            raise ValueError("x mode 'tokens' needs tokens_per_step (run id -> tokens per step)")
        out["x"] = out["step"] * out["run_id"].map(tokens_per_step).astype(float)
    elif mode == "time":
        out["x"] = out["wall_time"] - out.groupby("run_id")["wall_time"].transform("min")
    else:
        raise ValueError(f"unknown x mode {mode!r}: choose one of {', '.join(X_MODES)}")
    return out


def lr_schedule_figure(cfg: TrainConfig) -> go.Figure:
    """The learning rate over the whole run, small enough to sit beside the form."""
    steps, lrs = lr_curve(cfg)
    fig = go.Figure(go.Scatter(x=steps, y=lrs, mode="lines", name="lr",
                               hovertemplate="step %{x}<br>lr %{y:.3g}<extra></extra>"))
    fig.update_layout(
        height=220,
        margin={"l": 10, "r": 10, "t": 30, "b": 10},
        title={"text": f"Learning rate ({cfg.schedule})", "x": 0, "xanchor": "left"},
        showlegend=False,
    )
    fig.update_xaxes(title_text="step")
    # Plain decimals (0.003, 0.0015, 0): "~e" read "3e-3 ... 0e+0".
    fig.update_yaxes(title_text="lr", tickformat="~g", rangemode="tozero")
    return fig


def _is_categorical(values: pd.Series) -> bool:
    if pd.api.types.is_bool_dtype(values):
        return True
    return any(isinstance(v, (str, bool, np.bool_)) for v in values)


def hparam_figure(points: pd.DataFrame, param: str, metric: str) -> go.Figure:
    """``metric`` against hyperparameter ``param``, one labelled point per run.

    ``points`` has columns name, ``param`` and ``metric``. Strings and booleans go
    on a categorical axis; a positive numeric parameter spanning more than two
    decades (learning rates, say) gets a log axis.
    """
    title = f"{metric} vs {param}"
    if points.empty:
        return _empty_figure(title)
    values = points[param]
    categorical = _is_categorical(values)
    xs = values.astype(str) if categorical else pd.to_numeric(values, errors="coerce")
    fig = go.Figure(go.Scatter(
        x=xs, y=points[metric], mode="markers+text", text=points["name"].map(chart_text),
        textposition="top center", marker={"size": 10},
        hovertemplate=f"%{{text}}<br>{param} %{{x}}<br>{metric} %{{y:.4g}}<extra></extra>",
    ))
    # Labels above the points may reach past the plot: draw them there (cliponaxis off)
    # with room made for them, rather than cut at the edge.
    fig.update_traces(cliponaxis=False)
    fig.update_layout(title={"text": title, "x": 0, "xanchor": "left"}, showlegend=False,
                      margin={**_MARGIN, "l": 40, "r": 40})
    if categorical:
        fig.update_xaxes(type="category", categoryorder="category ascending")
    else:
        known = xs.dropna()
        log = bool(len(known) and (known > 0).all() and known.max() / known.min() > 100)
        if len(known):
            fig.update_xaxes(type="log" if log else "linear",
                             range=padded_range(known.min(), known.max(), log=log, pad=0.12),
                             **whole_ticks(known))
    ys = pd.to_numeric(points[metric], errors="coerce").dropna()
    if len(ys):
        low, high = padded_range(ys.min(), ys.max(), log=False, pad=0.1)
        fig.update_yaxes(range=[low, high + 0.1 * (high - low)])  # headroom for the labels
    fig.update_xaxes(title_text=param)
    fig.update_yaxes(title_text=metric)
    return fig


def whole_ticks(values: pd.Series) -> dict:
    """Ticks at the values themselves for a whole-numbered hyperparameter tried at a few
    values (seeds, layers, batch sizes), so none reads "1,337.5"; else plotly's own."""
    distinct = np.unique(values.to_numpy(dtype=float))
    if len(distinct) > MAX_VALUE_TICKS or not np.all(distinct == np.round(distinct)):
        return {}
    return {"tickmode": "array", "tickvals": distinct.tolist(),
            "ticktext": [f"{int(v):d}" for v in distinct]}


def padded_range(low: float, high: float, *, log: bool, pad: float) -> list[float]:
    """A plotly axis range from ``low`` to ``high`` widened by ``pad`` of its span on each
    side (a lone value gets room of its own), in log10 units for a log axis, so markers
    at the extremes sit inside the plot, not on its edge."""
    low, high = float(low), float(high)
    if log:
        low, high = math.log10(low), math.log10(high)
    span = high - low or (abs(high) * 0.5 if not log and high else 0.5)
    return [low - pad * span, high + pad * span] if high != low else [low - span, high + span]
