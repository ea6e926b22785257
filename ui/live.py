"""State for live views: only new rows are read, memory stays bounded however long a run
trains, figures are rebuilt only when what they show changed, and nothing refreshes that
nobody watches."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from storage.status import ACTIVE
from ui.downsample import DEFAULT_BY, group_ids, minmax_downsample
from ui.figures import axis_formats, metric_figure, metric_traces, x_axis_range

METRIC_COLUMNS = ("run_id", "key", "step", "value", "wall_time")
LIVE_REFRESH_S = 2.0
T = TypeVar("T")
# Trace properties besides x and y that an overlay's new data may change (hover texts).
_CHANGING = ("text", "customdata", "mode")  # mode: a lone point's marker goes with more


class LiveSeries:
    """The metric rows a live page has read so far for one run (or a fixed set of series).

    The page keeps one in session state, asks the store for rows past
    ``cursor`` on each refresh, hands them to ``append`` and redraws only when
    ``version`` changed. Each (run_id, key) series holds at most
    ``2 * max_points`` rows: past that, all but its newest ``max_points // 4``
    rows are min/max-downsampled so the series is back to about ``max_points``,
    keeping the live edge at full resolution and old spikes visible.
    """

    def __init__(self, max_points: int = 4000) -> None:
        if max_points < 8:
            raise ValueError(f"max_points must be at least 8, not {max_points}")
        self.max_points = max_points
        self.version = 0
        self._frame: pd.DataFrame | None = None
        self._cursors: dict[tuple, int] = {}
        self._latest: dict[str, float] = {}
        self._latest_step: dict[str, int] = {}

    @property
    def cursor(self) -> int | None:
        """The largest step seen in any series, or None before the first row."""
        return max(self._cursors.values()) if self._cursors else None

    @property
    def frame(self) -> pd.DataFrame:
        """Every row kept so far (read it, don't modify it)."""
        if self._frame is None:
            return pd.DataFrame(columns=list(METRIC_COLUMNS))
        return self._frame

    def latest(self, key: str) -> float | None:
        """The value at the newest step read for metric ``key`` (any run), or None."""
        return self._latest.get(key)

    def latest_step(self, key: str) -> int | None:
        """The newest step read for metric ``key`` (any run), or None: what a view derived
        from one metric (the val-loss forecast) is keyed on."""
        return self._latest_step.get(key)

    def append(self, df_new: pd.DataFrame) -> int:
        """Add the rows of ``df_new`` newer than what each series already holds.

        A row counts as new when its step is past the largest step seen for its
        own (run_id, key), so a query that overlaps the last read (``step >=
        cursor``, to catch a key written a moment after another) adds no
        duplicates. Returns the number of rows added.
        """
        if df_new.empty:
            return 0
        by = [c for c in DEFAULT_BY if c in df_new.columns]
        fresh = []
        for key, part in (df_new.groupby(by, sort=False) if by else [((), df_new)]):
            seen = self._cursors.get(key)
            if seen is not None:
                part = part[part["step"] > seen]
            if not part.empty:
                fresh.append(part)
                newest = part["step"].to_numpy().argmax()
                self._cursors[key] = int(part["step"].iloc[newest])
                if "key" in part.columns:
                    metric = part["key"].iloc[newest]
                    self._latest[metric] = float(part["value"].iloc[newest])
                    self._latest_step[metric] = self._cursors[key]
        if not fresh:
            return 0
        parts = fresh if self._frame is None else [self._frame, *fresh]
        self._frame = pd.concat(parts, ignore_index=True)
        self._compact(by)
        self.version += 1
        return sum(len(p) for p in fresh)

    def _compact(self, by: list[str]) -> None:
        gid = group_ids(self._frame, by)
        if np.bincount(gid).max() <= 2 * self.max_points:
            return
        n_raw = self.max_points // 4
        parts = []
        for _, part in self._frame.groupby(gid, sort=False):
            if len(part) > 2 * self.max_points:
                part = part.sort_values("step", kind="stable")
                older = minmax_downsample(part.iloc[:-n_raw], self.max_points - n_raw, by=None)
                part = pd.concat([older, part.iloc[-n_raw:]])
            parts.append(part)
        self._frame = pd.concat(parts, ignore_index=True)


def view_range(
    follow: bool,
    cursor: int | None,
    window: int | None,
    manual: tuple[float, float] | None,
) -> tuple[float, float] | None:
    """The x-range a live chart shows; None lets plotly autoscale.

    Following live: the last ``window`` steps up to ``cursor``, or everything
    when no window is set. Not following: the user's ``manual`` range.
    """
    if not follow:
        return manual
    if cursor is None or not window:
        return None
    return (float(max(0, cursor - window)), float(cursor))


class LastBuilt(Generic[T]):
    """The last thing built, kept while the key it was built for stays the same.

    A live page keeps one in session state for what it needs less often than it
    refreshes (the samples, keyed by a coarser clock), so most refreshes reuse it.
    """

    def __init__(self) -> None:
        self._key: Hashable | None = None
        self._value: T | None = None
        self.builds = 0

    def get(self, key: Hashable, build: Callable[[], T]) -> T:
        if self.builds == 0 or key != self._key:
            self._value = build()
            self._key = key
            self.builds += 1
        return self._value  # type: ignore[return-value]


class LiveCharts:
    """The figures of a live page, kept across refreshes and updated in place.

    ``show`` hands back the same figures, untouched, while its ``key`` (the version
    of the rows, of the overlays and of the view) is unchanged: a refresh with no new
    rows does no figure work. New rows replace each trace's x and y in place, some 15
    times cheaper than a new figure (plotly validates every property of a new one); a
    chart whose traces changed (a new metric, the switch to WebGL, a new kind of event
    marker) is built anew. Overlays (event markers, the forecast) are extra trace dicts
    drawn over a chart's curves.
    """

    def __init__(self, charts: dict[str, list[str]], names: dict[int, str], *,
                 uirevision: str, height: int) -> None:
        self.charts = charts
        self.names = names
        self.uirevision = uirevision
        self.height = height
        self.builds = 0  # figures built from scratch
        self.updates = 0  # figures updated in place
        self._key: Hashable | None = None
        self._figures: list[go.Figure] = []

    def show(self, key: Hashable, frame: pd.DataFrame, x_range: tuple[float, float] | None,
             overlays: dict[str, list[dict]] | None = None) -> list[go.Figure]:
        """One figure per chart (title -> metric keys) of ``frame``, shown on ``x_range``,
        with the ``overlays`` traces of its title drawn over it."""
        if self._figures and key == self._key:
            return self._figures
        by_key = dict(iter(frame.groupby("key", sort=False))) if not frame.empty else {}
        figures = []
        for i, (title, keys) in enumerate(self.charts.items()):
            parts = [by_key[k] for k in keys if k in by_key]
            part = pd.concat(parts) if parts else frame.iloc[:0]
            old = self._figures[i] if self._figures else None
            extra = (overlays or {}).get(title, [])
            figures.append(self._chart(old, title, part, x_range, extra))
        self._key, self._figures = key, figures
        return figures

    def _chart(self, old: go.Figure | None, title: str, part: pd.DataFrame,
               x_range: tuple[float, float] | None, extra: list[dict]) -> go.Figure:
        if part.empty and old is not None and not old.data:
            return old  # still "No data yet"
        traces = metric_traces(part, names=self.names) if not part.empty else []
        if traces:
            traces += extra  # overlays only go on a chart with curves
        # A one-point chart has a fixed y-range (ui.figures.axis_formats): rebuild it.
        if traces and old is not None and old.layout.yaxis.range is None and [
                (t.type, t.name) for t in old.data] == [(t["type"], t["name"]) for t in traces]:
            with old.batch_update():
                for trace, new in zip(old.data, traces, strict=True):
                    trace.x, trace.y = new["x"], new["y"]
                    for prop in _CHANGING:
                        if prop in new:
                            trace[prop] = new[prop]
                # A few steps keep a whole-step range of their own (ui.figures.axis_formats).
                old.layout.xaxis.range = (x_axis_range(x_range) or axis_formats(
                    part["step"], log=False, x=True).get("range"))
            self.updates += 1
            return old
        self.builds += 1
        fig = metric_figure(part, title=title, names=self.names, x_range=x_range,
                            uirevision=self.uirevision, height=self.height)
        if extra and not part.empty:
            fig.add_traces(extra)
        return fig


def trained_by(worker: str | None, device: str | None, host: str | None) -> str | None:
    """"Trained by worker w1 on cuda:0 (host gpu-box)": who trains (or trained) a run,
    or None before anyone claimed it."""
    if not (worker or device or host):
        return None
    parts = ["Trained"]
    if worker:
        parts.append(f"by worker {worker}")
    if device:
        parts.append(f"on {device}")
    if host and (not worker or host not in worker):
        parts.append(f"(host {host})")
    return " ".join(parts)


def refresh_every(status: str, visible: bool = True, *,
                  resume_due: bool = False) -> float | None:
    """How often a live view of a run in ``status`` reruns; None: it does not.

    A run that has ended changes no more, unless it is to resume by itself
    (``resume_due``: an interrupted run waiting for its automatic resume), and a hidden tab
    shows nothing: neither costs the server a refresh.
    """
    return LIVE_REFRESH_S if (status in ACTIVE or resume_due) and visible else None


def sidebar_refresh_every(busy: bool, visible: bool = True) -> float | None:
    """How often the sidebar's "Training now" line refreshes: on the Live page's beat (so
    the two show one step) while a run trains or waits in the queue, in a visible tab."""
    return LIVE_REFRESH_S if busy and visible else None
