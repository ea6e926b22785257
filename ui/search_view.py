"""A search sweep's figures for the Sweeps page: the best value against trials, the trials
in parallel coordinates, each setting's importance, two objectives' Pareto front, and the
trials asked that have not ended.

Each takes the trials frame of ``jobs.search.search_view`` (number, state, run_id, one column
per objective, one per setting) and returns a Plotly figure or a table; none reads the
database.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from storage.status import ACTIVE
from storage.store import RunRecord
from ui.compute import FIGURE_MARGIN, LEGEND_RIGHT
from ui.plain_text import chart_text
from ui.sweeps import LOG_PARAMS

COMPLETE = "complete"
# Optuna's state for a trial asked and not yet told: its runs queued, training or paused.
ASKED = "running"
UNITS = {"loss": "final val loss", "flops": "training FLOPs", "time": "training seconds"}


def _complete(trials: pd.DataFrame, objectives: Sequence[str]) -> pd.DataFrame:
    done = trials[trials["state"] == COMPLETE]
    return done.dropna(subset=list(objectives)).sort_values("number")


def state_counts(trials: pd.DataFrame) -> str:
    """'3 complete, 1 pruned, 2 running': the trials by state, most first."""
    counts = trials["state"].value_counts()
    return ", ".join(f"{n} {state}" for state, n in counts.items())


def next_trials(trials: pd.DataFrame, params: Sequence[str],
                runs: Sequence[RunRecord]) -> pd.DataFrame:
    """The trials the study proposed that are still to train: trial, state (its run queued
    or running), run (id), each proposed setting and the run's name, by trial number. A
    trial of several seeds shows its first run; a trial whose run ended and waits to be
    told (or resumed) is not listed."""
    by_id = {r.id: r for r in runs}
    rows = []
    for trial in trials[trials["state"] == ASKED].sort_values("number").to_dict("records"):
        run = by_id.get(trial["run_id"])
        if run is not None and run.status in ACTIVE:
            rows.append({"trial": trial["number"], "state": str(run.status), "run": run.id,
                         **{p: trial[p] for p in params}, "name": run.name})
    return pd.DataFrame(rows, columns=["trial", "state", "run", *params, "name"])


def trials_left(trials: pd.DataFrame, budget: int) -> int:
    """How many more trials a search of ``budget`` trials will ask: those the study asked
    and queued runs for count; refused proposals (told FAIL, no run) do not."""
    return max(budget - int(trials["run_id"].notna().sum()), 0)


def best_so_far_figure(trials: pd.DataFrame, objective: str = "loss") -> go.Figure:
    """Each complete trial's value by trial number, and the best so far as a step line."""
    done = _complete(trials, [objective])
    fig = go.Figure()
    fig.add_scatter(x=done["number"], y=done[objective], mode="markers", name="trial",
                    customdata=done["run_id"],
                    hovertemplate="trial %{x} (run %{customdata}): %{y:.4g}<extra></extra>")
    fig.add_scatter(x=done["number"], y=done[objective].cummin(), mode="lines",
                    line={"shape": "hv"}, name="best so far")
    fig.update_layout(title=f"Best {UNITS.get(objective, objective)} against trials",
                      xaxis_title="trial", yaxis_title=UNITS.get(objective, objective),
                      margin=FIGURE_MARGIN, legend=LEGEND_RIGHT, height=360)
    return fig


def _dimension(values: pd.Series, param: str) -> dict:
    """One parallel-coordinates axis: categories as evenly spaced ticks, log settings on a
    log10 scale labelled with their values, numbers as they are."""
    if values.map(lambda v: isinstance(v, str | bool)).any():
        labels = sorted({str(v) for v in values})
        codes = [labels.index(str(v)) for v in values]
        return {"label": param, "values": codes, "tickvals": list(range(len(labels))),
                "ticktext": [chart_text(t) for t in labels]}
    numbers = values.astype(float)
    if param in LOG_PARAMS and (numbers > 0).all():
        logs = np.log10(numbers)
        ticks = list(range(math.floor(logs.min()), math.ceil(logs.max()) + 1))
        return {"label": param, "values": logs, "tickvals": ticks,
                "ticktext": [f"{10.0 ** t:g}" for t in ticks]}
    return {"label": param, "values": numbers}


def parallel_figure(trials: pd.DataFrame, params: Sequence[str],
                    objective: str = "loss") -> go.Figure:
    """The complete trials as lines through one axis per setting and the objective, coloured
    by the objective (dark is better)."""
    done = _complete(trials, [objective])
    dims = [_dimension(done[p], p) for p in params]
    dims.append({"label": UNITS.get(objective, objective), "values": done[objective]})
    fig = go.Figure(go.Parcoords(
        line={"color": done[objective], "colorscale": "Viridis", "showscale": True,
              "reversescale": True},
        dimensions=dims))
    fig.update_layout(title="Trials across the settings", margin={**FIGURE_MARGIN, "l": 40},
                      height=380)
    return fig


def importance_figure(importances: dict[str, float]) -> go.Figure:
    """Each setting's importance to the objective (Optuna's default evaluator), the most
    important on top."""
    items = sorted(importances.items(), key=lambda kv: kv[1])
    fig = go.Figure(go.Bar(x=[v for _, v in items], y=[k for k, _ in items], orientation="h",
                           hovertemplate="%{y}: %{x:.2f}<extra></extra>"))
    fig.update_layout(title="Which settings mattered", xaxis_title="importance",
                      margin=FIGURE_MARGIN, height=80 + 40 * max(len(items), 1))
    return fig


def pareto_figure(trials: pd.DataFrame, objectives: Sequence[str],
                  front: Sequence[int]) -> go.Figure:
    """The complete trials on the first two objectives, the Pareto front's (no trial better
    on both) marked and joined."""
    x, y = objectives[0], objectives[1]
    done = _complete(trials, [x, y])
    on = done[done["number"].isin(front)].sort_values(x)
    off = done[~done["number"].isin(front)]
    fig = go.Figure()
    hover = "trial %{customdata}: %{x:.4g}, %{y:.4g}<extra></extra>"
    fig.add_scatter(x=off[x], y=off[y], mode="markers", name="trial", customdata=off["number"],
                    marker={"color": "#9aa5b1", "size": 9}, hovertemplate=hover)
    fig.add_scatter(x=on[x], y=on[y], mode="markers+lines", name="Pareto front",
                    customdata=on["number"], line={"shape": "hv", "color": "#d62728"},
                    marker={"color": "#d62728", "size": 12, "symbol": "star"},
                    hovertemplate=hover)
    fig.update_layout(title=f"Pareto front: {UNITS.get(x, x)} against {UNITS.get(y, y)}",
                      xaxis_title=UNITS.get(x, x), yaxis_title=UNITS.get(y, y),
                      margin=FIGURE_MARGIN, legend=LEGEND_RIGHT, height=380)
    if y in ("flops", "time"):
        fig.update_yaxes(type="log")
    return fig
