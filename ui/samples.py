"""Samples recorded during training, lined up across runs by step, so a page can show
what each run wrote at the same point of training side by side."""

from __future__ import annotations

import pandas as pd


def sample_steps(frames: dict[int, pd.DataFrame]) -> tuple[list[int], bool]:
    """The steps to choose from: those every run has samples at, when there are any
    (True), else every step any run has (False), each run then shown at its nearest."""
    per_run = [set(int(s) for s in f["step"]) for f in frames.values() if not f.empty]
    if not per_run:
        return [], False
    common = set.intersection(*per_run) if len(per_run) == len(frames) else set()
    if common:
        return sorted(common), True
    return sorted(set.union(*per_run)), False


def samples_at(frame: pd.DataFrame, step: int) -> pd.DataFrame:
    """The run's samples at its step nearest ``step`` (the earlier one on a tie), empty if
    it has none."""
    if frame.empty:
        return frame
    steps = frame["step"].astype(int)
    distance = (steps - step).abs()
    nearest = steps[distance == distance.min()].min()
    return frame[steps == nearest]
