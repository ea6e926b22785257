"""Which runs and settings a page starts with: the ones a person most likely means.

Pure: run records (newest first, as ``RunStore.list_runs`` gives them) in, ids out.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from storage.status import RunStatus
from storage.store import RunRecord


def _rank(run: RunRecord) -> tuple[bool, bool]:
    # Completed with steps first, then anything that trained, then the rest (a failed or
    # queued run at step 0 has nothing to compare or clone worth starting from).
    return run.status != RunStatus.COMPLETED, run.last_step <= 0


def newest_finished(runs: Sequence[RunRecord], n: int) -> list[int]:
    """The ids of the ``n`` newest completed runs that trained, topped up with the newest
    of the others when there are fewer; in the order given (newest first)."""
    return [r.id for r in sorted(runs, key=_rank)[:n]]  # sorted() is stable


def other_run(runs: Sequence[RunRecord], first: int | None) -> int | None:
    """A default for a second run picker: the best run that is not ``first``."""
    others = [r for r in runs if r.id != first]
    return newest_finished(others, 1)[0] if others else None


def first_differing(diff: pd.DataFrame, plotted: Sequence[str]) -> str | None:
    """The first parameter of a :func:`ui.config_diff.differing_params` table whose values
    differ among the ``plotted`` columns (the runs with a point on the chart); else its
    first parameter; None for an empty table."""
    if diff.empty:
        return None
    columns = [c for c in plotted if c in diff.columns]
    for param, row in diff.iterrows():
        if len(set(row[columns])) > 1:
            return str(param)
    return str(diff.index[0])
