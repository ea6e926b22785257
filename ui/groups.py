"""Runs that differ only in seed, drawn as one group: a mean line in a ±1 std band.

Repeating a config with other seeds shows how much of a difference between two runs is
noise. Compare groups such runs (``seed_groups``), averages each group's curve on the
steps every member has (``group_band``) and draws it as plotly traces in
``ui.figures`` style: plain dicts, the band a filled area between two edge lines.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.colors
import plotly.graph_objects as go

from gptcore.config import repeat_key
from ui.figures import PALETTE, metric_traces, run_colors
from ui.plain_text import chart_text
from ui.smoothing import ema

BAND_OPACITY = 0.2
BAND_COLUMNS = ["key", "step", "x", "mean", "std", "low", "high", "n"]
_SEED_SUFFIX = re.compile(r"\s*seed=\d+\s*$")


def group_key(config: Mapping[str, Any]) -> str:
    """The config without its seed, as a string (``gptcore.config.repeat_key``)."""
    return repeat_key(dict(config))


def seed_groups(configs: Mapping[int, Mapping[str, Any]]) -> list[list[int]]:
    """Run ids grouped by ``group_key``, in the order their first member appears; a run
    with no repeat is a group of one."""
    groups: dict[str, list[int]] = {}
    for run_id, config in configs.items():
        groups.setdefault(group_key(config), []).append(run_id)
    return list(groups.values())


def group_name(names: Sequence[str]) -> str:
    """The members' shared name without its 'seed=N' ('lr sweep lr=0.001' for 'lr sweep
    lr=0.001 seed=1337', ...), else the first member's name and how many more."""
    bare = {_SEED_SUFFIX.sub("", n) for n in names}
    if len(bare) == 1 and bare != {""}:
        return bare.pop()
    return f"{names[0]} +{len(names) - 1}" if names else ""


def group_band(frame: pd.DataFrame, run_ids: Sequence[int], *, x: str = "x") -> pd.DataFrame:
    """The mean and spread of the runs' curves in a long frame (run_id, key, step, ``x``,
    value), per key and step: columns key, step, x, mean, std, low, high, n.

    Only steps that every member has are kept, so a run that is ahead (or one that
    logged a step the others did not) never pulls the mean to one member's value.
    ``x`` is the members' mean ``x`` at the step (their seconds differ on a time
    axis). std is the sample std (ddof 1); low and high are mean ∓ std.
    """
    members = [int(r) for r in run_ids]
    part = frame[frame["run_id"].isin(members)]
    if part.empty or not members:
        return pd.DataFrame(columns=BAND_COLUMNS)
    # One value per run and step (a resumed run may have logged a step twice: keep its last).
    part = part.drop_duplicates(["run_id", "key", "step"], keep="last")
    stats = part.groupby(["key", "step"], sort=True).agg(
        x=(x, "mean"), mean=("value", "mean"), std=("value", "std"), n=("run_id", "nunique"))
    stats = stats[stats["n"] == len(set(members))].reset_index()
    stats["std"] = stats["std"].fillna(0.0)
    stats["low"] = stats["mean"] - stats["std"]
    stats["high"] = stats["mean"] + stats["std"]
    return stats[BAND_COLUMNS].reset_index(drop=True)


def _rgba(color: str, alpha: float) -> str:
    red, green, blue = plotly.colors.hex_to_rgb(color)
    return f"rgba({red}, {green}, {blue}, {alpha})"


def band_traces(band: pd.DataFrame, *, color: str, name: str, smoothing: float = 0.0,
                max_points: int | None = None) -> list[dict]:
    """A group's traces, per key: the band's upper edge, its lower edge filled up to the
    upper one, then the mean line on top (named ``name``; the edges are hidden from the
    legend and from hover, and toggle with the mean).

    With ``smoothing`` the mean and std are EMA-smoothed as ``metric_traces`` smooths a
    run. ``max_points`` thins a long band evenly, keeping its last step.
    """
    traces: list[dict] = []
    keys = list(dict.fromkeys(band["key"]))
    for key in keys:
        part = band[band["key"] == key].sort_values("step")
        if max_points and len(part) > max_points:
            stride = math.ceil(len(part) / max_points)
            part = pd.concat([part.iloc[::stride], part.iloc[[-1]]]).drop_duplicates("step")
        xs = part["x"].to_numpy()
        mean = part["mean"].to_numpy(dtype=float)
        std = part["std"].to_numpy(dtype=float)
        if smoothing > 0:
            mean, std = ema(mean, smoothing), ema(std, smoothing)
        label = name if len(keys) == 1 else f"{name} · {key}"
        n = int(part["n"].max()) if len(part) else 0
        edge = {"type": "scatter", "x": xs, "mode": "lines", "line": {"width": 0, "color": color},
                "showlegend": False, "legendgroup": label, "hoverinfo": "skip"}
        traces.append({**edge, "y": mean + std})
        traces.append({**edge, "y": mean - std, "fill": "tonexty",
                       "fillcolor": _rgba(color, BAND_OPACITY)})
        traces.append({"type": "scatter", "x": xs, "y": mean,
                       "mode": "lines" if len(xs) > 1 else "lines+markers",
                       "name": f"{label} (mean of {n} seeds ± std)", "legendgroup": label,
                       "line": {"color": color, "width": 2.5}, "customdata": np.round(std, 6),
                       "hovertemplate": "%{y:.4g} ± %{customdata:.3g}"})
    return traces


def grouped_figure(fig: go.Figure, frame: pd.DataFrame, full: pd.DataFrame,
                   groups: Sequence[Sequence[int]], *, names: Mapping[int, str],
                   x: str = "x", smoothing: float = 0.0,
                   max_points: int | None = None) -> go.Figure:
    """``fig`` (a ``metric_figure`` of ``frame``) redrawn with each group of two or more
    runs as one mean line and band, from ``full`` (the members' full-resolution frame:
    a downsampled frame keeps other steps for each run); other runs as before, in their
    colours. The layout (axes, zoom, formats) is ``fig``'s."""
    repeated = [list(g) for g in groups if len(g) > 1]
    members = {int(i) for g in repeated for i in g}
    singles = frame[~frame["run_id"].isin(members)]
    traces = metric_traces(singles, names=dict(names), x=x, smoothing=smoothing)
    colors = run_colors(list(names))  # as metric_traces colours the runs, by position
    for group in repeated:
        traces += band_traces(group_band(full, group, x=x),
                              color=colors.get(int(group[0]), PALETTE[0]),
                              name=chart_text(group_name([names.get(i, f"run {i}")
                                                          for i in group])),
                              smoothing=smoothing, max_points=max_points)
    return go.Figure(data=traces, layout=fig.layout)
