"""Run events (spikes, roll-backs, early stops, best checkpoints) as chart markers and a table.

Markers sit on a loss curve at the event's step, so they read as "here the curve did
this"; their colour and symbol say the kind, their hover the message. Pure: frames in,
plotly trace dicts and frames out.
"""

from __future__ import annotations

import html
from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import pandas as pd

from gptcore.metric_keys import TRAIN_LOSS, VAL_LOSS


@dataclass(frozen=True)
class EventStyle:
    """How a kind of event is drawn: a plotly marker, and the same mark as a coloured
    character (Streamlit markdown) for the table that serves as the markers' legend."""

    label: str
    symbol: str
    color: str
    mark: str
    size: int = 12
    opacity: float = 1.0


EVENT_STYLES: dict[str, EventStyle] = {
    "spike": EventStyle("spike", "triangle-up", "#EF553B", ":red[▲]"),
    "nan": EventStyle("NaN loss", "x", "#AB63FA", ":violet[✕]"),
    "rollback": EventStyle("roll-back", "diamond", "#FF7F0E", ":orange[◆]"),
    "lr_reduced": EventStyle("lr reduced", "triangle-down", "#1F77B4", ":blue[▼]"),
    "early_stop": EventStyle("early stop", "square", "#444444", ":gray[■]"),
    # One at nearly every evaluation early on: small and faint, so they don't crowd the rest.
    "best_checkpoint": EventStyle("best checkpoint", "star", "#2CA02C", ":green[★]", size=7,
                                  opacity=0.45),
}
_OTHER = EventStyle("event", "circle", "#7F7F7F", ":gray[●]")
# Which curve a marker sits on, by preference: a best checkpoint is a val-loss moment.
_CURVE_FOR = {"best_checkpoint": (VAL_LOSS, TRAIN_LOSS)}
_DEFAULT_CURVES = (TRAIN_LOSS, VAL_LOSS)
# Kinds that crowd a chart of several runs: there they are listed, not drawn.
CROWDING = frozenset({"best_checkpoint"})
TABLE_COLUMNS = ["mark", "run", "step", "kind", "message"]


def style_of(kind: str) -> EventStyle:
    return EVENT_STYLES.get(kind, _OTHER)


def _curve(curves: pd.DataFrame, run_id: int, kind: str, x: str) -> pd.DataFrame | None:
    """The run's curve a marker of ``kind`` sits on (sorted by step), or None."""
    mine = curves[curves["run_id"] == run_id]
    if mine.empty:
        return None
    keys = list(mine["key"].unique())
    preferred = [k for k in _CURVE_FOR.get(kind, _DEFAULT_CURVES) if k in keys]
    part = mine[mine["key"] == (preferred[0] if preferred else sorted(keys)[0])]
    part = part.dropna(subset=["value", x])
    return part.sort_values("step", kind="stable") if not part.empty else None


def event_traces(events: pd.DataFrame, curves: pd.DataFrame, *,
                 names: dict[int, str] | None = None, x: str = "step",
                 leave_out: Collection[str] = ()) -> list[dict]:
    """Marker traces, one per event kind, placed on ``curves`` at each event's step.

    ``curves`` is a long metric frame (run_id, key, step, value and the ``x`` column);
    a marker's x and y are the curve's, interpolated at the event's step, so it lands on
    the line whatever the x-axis (steps, tokens, time). Events of a run with no curve
    here, or outside its curve's steps, are left out, as are kinds in ``leave_out``. The
    hover shows the message. The markers stay out of the legend, which would wrap over
    the chart's title: the events table under the chart is their legend.
    """
    if leave_out:
        events = events[~events["kind"].isin(list(leave_out))]
    if events.empty or curves.empty:
        return []
    names = names or {}
    several = events["run_id"].nunique() > 1
    points: dict[str, dict[str, list]] = {}
    for (run_id, kind), part in events.groupby(["run_id", "kind"], sort=False):
        curve = _curve(curves, int(run_id), str(kind), x)
        if curve is None:
            continue
        steps = curve["step"].to_numpy(dtype=float)
        inside = part[(part["step"] >= steps[0]) & (part["step"] <= steps[-1])]
        if inside.empty:
            continue
        at = inside["step"].to_numpy(dtype=float)
        xs = np.interp(at, steps, curve[x].to_numpy(dtype=float))
        ys = np.interp(at, steps, curve["value"].to_numpy(dtype=float))
        prefix = f"{html.escape(names.get(int(run_id), f'run {run_id}'))}: " if several else ""
        texts = [f"{prefix}step {int(s):,}: {html.escape(str(m))}"
                 for s, m in zip(inside["step"], inside["message"], strict=True)]
        bucket = points.setdefault(str(kind), {"x": [], "y": [], "text": []})
        bucket["x"].extend(xs.tolist())
        bucket["y"].extend(ys.tolist())
        bucket["text"].extend(texts)
    traces = []
    for kind in sorted(points, key=lambda k: (k == "best_checkpoint", k)):
        style = style_of(kind)
        traces.append({
            "type": "scatter", "mode": "markers", "name": style.label,
            "x": np.asarray(points[kind]["x"]), "y": np.asarray(points[kind]["y"]),
            "text": points[kind]["text"], "showlegend": False,
            "marker": {"symbol": style.symbol, "color": style.color, "size": style.size,
                       "opacity": style.opacity, "line": {"width": 1, "color": "white"}},
            "hovertemplate": f"<b>{style.label}</b> %{{text}}<extra></extra>",
        })
    return traces


def events_table(events: pd.DataFrame, names: dict[int, str] | None = None) -> pd.DataFrame:
    """The events to list under a chart: mark, run, step, kind, message, by run then step.

    The mark is the kind's marker as a coloured character (Streamlit markdown). Best
    checkpoints come at nearly every evaluation while a run improves, so only each run's
    latest is listed. The run column is left out when all events are one run's.
    """
    if events.empty:
        return pd.DataFrame(columns=[c for c in TABLE_COLUMNS if c != "run"])
    names = names or {}
    best = events["kind"] == "best_checkpoint"
    latest_best = events[best].groupby("run_id", sort=False).tail(1)
    shown = pd.concat([events[~best], latest_best]).sort_values(["run_id", "step"],
                                                                 kind="stable")
    table = pd.DataFrame({
        "mark": [style_of(k).mark for k in shown["kind"]],
        "run": [names.get(int(r), f"run {r}") for r in shown["run_id"]],
        "step": shown["step"].astype(int).to_numpy(),
        "kind": [style_of(k).label for k in shown["kind"]],
        "message": shown["message"].astype(str).to_numpy(),
    })
    if events["run_id"].nunique() == 1:
        table = table.drop(columns="run")
    return table.reset_index(drop=True)


def is_loss(metric: str) -> bool:
    """Whether ``metric`` is a loss curve, the curves events are drawn on."""
    return metric.rsplit("/", 1)[-1].endswith("loss")
