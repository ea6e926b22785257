"""TensorBoard-style smoothing of noisy metric curves."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd

from ui.downsample import DEFAULT_BY, group_ids


def ema(values: Sequence[float] | np.ndarray, weight: float) -> np.ndarray:
    """Debiased exponential moving average, as TensorBoard's smoothing slider.

    ``weight`` in [0, 1): 0 returns the values unchanged, 0.99 smooths hard.
    Dividing by ``1 - weight**n`` removes the pull towards zero of a plain EMA
    started at 0, so the first smoothed value equals the first input.
    Non-finite points (NaN, ±inf) pass through as they are and are left out of
    the average, so one NaN does not poison everything after it.
    """
    if not 0.0 <= weight < 1.0:
        raise ValueError(f"smoothing weight must be in [0, 1), not {weight}")
    arr = np.asarray(values, dtype=float)
    if weight == 0.0 or arr.size == 0:
        return arr.copy()
    out = arr.copy()
    last, n = 0.0, 0
    # A plain loop over Python floats: the recurrence is sequential, and this is fast
    # enough for the few thousand points a chart holds.
    for i, v in enumerate(arr.tolist()):
        if not math.isfinite(v):
            continue
        last = last * weight + (1.0 - weight) * v
        n += 1
        out[i] = last / (1.0 - weight**n)
    return out


def smooth_frame(
    df: pd.DataFrame,
    weight: float,
    by: str | Sequence[str] | None = DEFAULT_BY,
    x: str = "step",
    y: str = "value",
) -> pd.DataFrame:
    """A copy of ``df`` with a ``smoothed`` column: ``ema`` of ``y`` per group, in x order."""
    out = df.copy()
    if df.empty:
        out["smoothed"] = pd.Series(dtype=float)
        return out
    gid = group_ids(df, by)
    order = np.lexsort((df[x].to_numpy(), gid))
    ys = df[y].to_numpy(dtype=float)[order]
    bounds = np.flatnonzero(np.diff(gid[order])) + 1
    smoothed = np.empty(len(df))
    smoothed[order] = np.concatenate([ema(part, weight) for part in np.split(ys, bounds)])
    out["smoothed"] = smoothed
    return out
