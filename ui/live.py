"""State for a live chart: only new rows are read, and memory stays bounded however long it runs."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ui.downsample import DEFAULT_BY, group_ids, minmax_downsample

METRIC_COLUMNS = ("run_id", "key", "step", "value", "wall_time")


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
                self._cursors[key] = int(part["step"].max())
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
