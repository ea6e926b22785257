"""The compute view's logic: finished runs as (training FLOPs, final val loss) points, and
the figure of those points under the fitted frontier ``loss = a * C ** -b + c``."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from analysis.frontier import FrontierFit, fit_frontier
from gptcore.config import TrainConfig
from gptcore.errors import GptdashError
from gptcore.estimate import param_count, training_flops
from storage.status import RunStatus
from storage.store import RunRecord
from ui.format import human_count
from ui.plain_text import chart_text

COMPUTE_COLUMNS = ("run_id", "name", "status", "params", "tokens", "compute", "val_loss")
FRONTIER_COLOR = "#d62728"
OTHER_COLOR = "#7f7f7f"
# Shared with the Sweeps figures: the legend on the title's line at the right (at the left
# it ran into the title).
FIGURE_MARGIN = {"l": 10, "r": 10, "t": 60, "b": 10}
LEGEND_RIGHT = {"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "right", "x": 1}


def last_values(metrics: pd.DataFrame) -> dict[int, float]:
    """Run id -> the value at its highest step, from a long metric frame of one key."""
    if metrics.empty:
        return {}
    last = metrics.sort_values(["run_id", "step"], kind="stable").groupby("run_id").tail(1)
    return {int(r): float(v) for r, v in zip(last["run_id"], last["value"], strict=True)}


def is_finished(run: RunRecord, final_loss: float | None) -> bool:
    """A run whose loss says what its compute bought: completed, or stopped with a val loss."""
    return final_loss is not None and run.last_step > 0 and run.status in (RunStatus.COMPLETED,
                                                                           RunStatus.STOPPED)


def compute_frame(runs: Sequence[RunRecord], final_loss: dict[int, float]) -> pd.DataFrame:
    """One row per finished run: its parameters, tokens trained, compute and final val loss.

    ``final_loss`` maps run id to its last val loss (see :func:`last_values`). Runs
    without one, not finished, or whose config this version cannot read are left out.
    """
    rows = []
    for run in runs:
        loss = final_loss.get(run.id)
        if not is_finished(run, loss):
            continue
        try:
            cfg = TrainConfig.from_dict(run.config)
        except GptdashError:
            continue  # a config from an older version: its compute is unknown
        rows.append({"run_id": run.id, "name": run.name, "status": run.status,
                     "params": param_count(cfg), "tokens": run.last_step * cfg.tokens_per_step,
                     "compute": training_flops(cfg, run.last_step), "val_loss": loss})
    frame = pd.DataFrame(rows, columns=list(COMPUTE_COLUMNS))
    return frame.astype({"run_id": "int64", "params": "int64", "tokens": "int64",
                         "compute": "float64", "val_loss": "float64"})


def frontier_fit(frame: pd.DataFrame) -> FrontierFit:
    """The frontier law fitted to the frame's runs (indices are the frame's positions)."""
    return fit_frontier(frame["compute"].to_numpy(), frame["val_loss"].to_numpy())


def fit_caption(fit: FrontierFit) -> str:
    """The fitted law in words, or why there is none."""
    if not fit.fitted:
        return f"No frontier fitted: {fit.note}."
    text = (f"Frontier fitted to {len(fit.on_frontier)} run(s): loss = {fit.a:.4g} · "
            f"C^−{fit.b:.3g} + {fit.c:.3f} (C in FLOPs).")
    return f"{text} {fit.note[0].upper()}{fit.note[1:]}." if fit.note else text


def _hover(part: pd.DataFrame) -> dict:
    custom = np.column_stack([part["name"].map(chart_text), part["params"].map(human_count),
                              part["compute"].map(lambda c: f"{c:.3g}")])
    return {"customdata": custom,
            "hovertemplate": "<b>%{customdata[0]}</b><br>%{customdata[1]} parameters<br>"
                             "%{customdata[2]} FLOPs<br>val loss %{y:.4g}<extra></extra>"}


def compute_figure(frame: pd.DataFrame, fit: FrontierFit, *, title: str = "Val loss vs compute"
                   ) -> go.Figure:
    """Final val loss against training FLOPs, log-log: frontier runs highlighted, the
    others grey, and the fitted law drawn across the runs' compute when there is one.

    ``fit.on_frontier`` holds positions in ``frame``, as :func:`frontier_fit` gives them.
    """
    frame = frame.reset_index(drop=True)
    on = frame.iloc[fit.on_frontier]
    off = frame.drop(index=on.index)
    traces: list[dict] = []
    if not off.empty:
        traces.append({"type": "scatter", "x": off["compute"], "y": off["val_loss"],
                       "mode": "markers", "name": "other runs",
                       "marker": {"size": 9, "color": OTHER_COLOR, "opacity": 0.7},
                       **_hover(off)})
    if not on.empty:
        traces.append({"type": "scatter", "x": on["compute"], "y": on["val_loss"],
                       "mode": "markers", "name": "on the frontier",
                       "marker": {"size": 12, "color": FRONTIER_COLOR, "symbol": "star",
                                  "line": {"width": 1, "color": "black"}},
                       **_hover(on)})
    if fit.fitted and not frame.empty:
        # A little past the runs on both sides, so the law's trend reads beyond them.
        xs, ys = fit.curve(frame["compute"].min() / 2, frame["compute"].max() * 2)
        traces.append({"type": "scatter", "x": xs, "y": ys, "mode": "lines",
                       # c in fixed point: a floor fitted at ~0 reads 0.000, not 6.69e-21
                       "name": f"fit: {fit.a:.3g}·C^−{fit.b:.3g} + {fit.c:.3f}",
                       "line": {"color": FRONTIER_COLOR, "dash": "dash"},
                       "hovertemplate": "%{x:.3g} FLOPs<br>law %{y:.4g}<extra></extra>"})
    layout = {
        "title": {"text": title, "x": 0, "xanchor": "left"},
        "margin": FIGURE_MARGIN,
        "legend": LEGEND_RIGHT,
        "xaxis": {"title": {"text": "training compute (FLOPs)"}, "type": "log",
                  "exponentformat": "power"},
        "yaxis": {"title": {"text": "final val loss"}, "type": "log"},
        "height": 480,
    }
    return go.Figure(data=traces, layout=layout)
