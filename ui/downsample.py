"""Min/max downsampling of long metric series before they are plotted.

A browser chart of 100k points per curve is slow and shows no more than the
screen's width of pixels. Keeping each x-bucket's lowest and highest point
(rather than every n-th point) makes the thinned curve look like the full one:
a single loss spike survives, where striding would usually drop it.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

DEFAULT_BY = ("run_id", "key")


def group_columns(by: str | Sequence[str] | None) -> list[str]:
    """``by`` as a list of column names: None -> [], "key" -> ["key"]."""
    if by is None:
        return []
    return [by] if isinstance(by, str) else list(by)


def group_ids(df: pd.DataFrame, by: str | Sequence[str] | None) -> np.ndarray:
    """A dense group number per row, numbered in order of first appearance."""
    cols = group_columns(by)
    if not cols:
        return np.zeros(len(df), dtype=np.int64)
    return df.groupby(cols, sort=False, dropna=False).ngroup().to_numpy(dtype=np.int64)


def _first_of_runs(sorted_keys: np.ndarray) -> np.ndarray:
    """Positions in a sorted array where a new value starts."""
    return np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])


def minmax_downsample(
    df: pd.DataFrame,
    max_points: int = 2000,
    x: str = "step",
    y: str = "value",
    by: str | Sequence[str] | None = DEFAULT_BY,
) -> pd.DataFrame:
    """Thin every group longer than ``max_points`` rows to its per-bucket extremes.

    Each such group's x-range is split into ``max_points // 2`` equal-width
    buckets; a bucket keeps its min-y and max-y rows, and the group keeps its
    first and last rows (by x). NaN and ±inf values are kept: ±inf are the
    extremes of their bucket, and a bucket that holds a NaN keeps its first NaN
    row as well, so a divergence stays visible. A group is thus thinned to at
    most ``max_points + 2`` rows, plus one per bucket mixing NaN and numbers.

    Groups at or under ``max_points`` rows are returned whole. Kept rows stay in
    their input order and keep their index, so x-sorted input gives x-sorted
    output. ``by=None`` treats the whole frame as one series.
    """
    if max_points < 4:
        raise ValueError(f"max_points must be at least 4, not {max_points}")
    if df.empty:
        return df
    gid = group_ids(df, by)
    sizes = np.bincount(gid)
    if sizes.max() <= max_points:
        return df

    keep = sizes[gid] <= max_points  # small groups pass through untouched
    rows = np.flatnonzero(~keep)
    g = gid[rows]
    xs = np.nan_to_num(df[x].to_numpy(dtype=float)[rows], nan=0.0)
    ys = df[y].to_numpy(dtype=float)[rows]

    n_buckets = max_points // 2
    x_lo = np.full(len(sizes), np.inf)
    x_hi = np.full(len(sizes), -np.inf)
    np.minimum.at(x_lo, g, xs)
    np.maximum.at(x_hi, g, xs)
    span = x_hi[g] - x_lo[g]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(span > 0, (xs - x_lo[g]) / span, 0.0)
    bucket = np.clip((frac * n_buckets).astype(np.int64), 0, n_buckets - 1)
    cell = g * n_buckets + bucket

    # lexsort puts NaN last in both orders, so the first row of each cell is its finite
    # min (resp. max), or a NaN row when the whole bucket is NaN.
    for order in (np.lexsort((ys, cell)), np.lexsort((-ys, cell))):
        keep[rows[order[_first_of_runs(cell[order])]]] = True
    nan_rows = np.flatnonzero(np.isnan(ys))
    _, first_nan = np.unique(cell[nan_rows], return_index=True)
    keep[rows[nan_rows[first_nan]]] = True

    by_x = np.lexsort((xs, g))
    starts = _first_of_runs(g[by_x])
    ends = np.r_[starts[1:], len(by_x)] - 1
    keep[rows[by_x[starts]]] = True
    keep[rows[by_x[ends]]] = True
    return df.iloc[np.flatnonzero(keep)]
