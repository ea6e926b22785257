"""The compute frontier: the best loss finished runs reached for their training compute.

Fits ``loss = a * C ** (-b) + c`` (C in FLOPs, b > 0, c >= 0: a power law down to an
irreducible loss) to the runs on the Pareto frontier, those that no run with no more
compute beats on loss. Runs above the frontier are mis-tuned for their budget; fitting
them would drag the law up. The fit works in log compute (C spans many decades and
C ** -b under- or overflows for raw FLOP counts) with scipy's least_squares.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize

B_BOUNDS = (1e-3, 3.0)  # a compute exponent outside this is a fit gone astray


@dataclass(frozen=True)
class FrontierFit:
    """The fitted law (None when too few runs to fit it) and which runs are on the frontier.

    ``on_frontier`` holds indices into the compute/loss sequences given to
    :func:`fit_frontier`, in order of increasing compute.
    """

    a: float | None
    b: float | None
    c: float | None
    on_frontier: list[int]
    note: str | None = None

    @property
    def fitted(self) -> bool:
        return self.a is not None

    def predict(self, compute: Sequence[float] | np.ndarray) -> np.ndarray:
        """Loss the law expects at each compute (FLOPs); NaN when nothing was fitted."""
        c_arr = np.asarray(compute, dtype=float)
        if not self.fitted:
            return np.full(c_arr.shape, np.nan)
        return self.a * np.exp(-self.b * np.log(c_arr)) + self.c

    def curve(self, low: float, high: float, points: int = 100) -> tuple[np.ndarray, np.ndarray]:
        """Compute (log-spaced from ``low`` to ``high``) and the law's loss, for plotting."""
        compute = np.logspace(np.log10(low), np.log10(high), points)
        return compute, self.predict(compute)


def pareto_front(compute: Sequence[float], loss: Sequence[float]) -> list[int]:
    """Indices of runs no other run dominates (no more compute and lower loss, or less
    compute and no higher loss), by increasing compute. Non-finite or non-positive
    compute and non-finite loss are never on it."""
    c = np.asarray(compute, dtype=float)
    y = np.asarray(loss, dtype=float)
    valid = np.isfinite(c) & (c > 0) & np.isfinite(y)
    idx = np.flatnonzero(valid)
    cc, yy = c[idx][:, None], y[idx][:, None]
    # dominated[i, j]: run j dominates run i
    dominated = (cc.T <= cc) & (yy.T <= yy) & ((cc.T < cc) | (yy.T < yy))
    front = idx[~dominated.any(axis=1)]
    return [int(i) for i in front[np.argsort(c[front], kind="stable")]]


def fit_frontier(compute: Sequence[float], loss: Sequence[float]) -> FrontierFit:
    """Fit the law to the frontier runs. Three or more frontier runs fit a, b and c; two
    fit a pure power law (c held at 0, as two points cannot fix a floor); fewer fit
    nothing, with a note saying why."""
    front = pareto_front(compute, loss)
    if len({float(compute[i]) for i in front}) < 2:
        return FrontierFit(None, None, None, front,
                           note="need at least two runs with different compute to fit a law")
    x = np.log(np.asarray(compute, dtype=float)[front])
    y = np.asarray(loss, dtype=float)[front]
    ref = x.mean()  # centre log compute so a's start and scale stay near the losses
    free_c = len(set(x.tolist())) >= 3
    note = None if free_c else "two frontier runs: c held at 0 (a pure power law)"

    def model(p: np.ndarray) -> np.ndarray:
        return p[0] * np.exp(-p[1] * (x - ref)) + (p[2] if free_c else 0.0)

    lower = [0.0, B_BOUNDS[0]] + ([0.0] if free_c else [])
    # c sits below every frontier loss: the power-law term is positive.
    upper = [np.inf, B_BOUNDS[1]] + ([max(float(y.min()), 1e-12)] if free_c else [])
    best = None
    for b0 in (0.05, 0.3, 1.0):
        c0 = 0.5 * float(y.min()) if free_c else 0.0
        start = [max(float(y.mean()) - c0, 1e-6), b0] + ([c0] if free_c else [])
        res = optimize.least_squares(lambda p: model(p) - y, start, bounds=(lower, upper),
                                     x_scale="jac")
        if best is None or res.cost < best.cost:
            best = res
    a_ref, b = float(best.x[0]), float(best.x[1])
    c = float(best.x[2]) if free_c else 0.0
    # Undo the centring: a * C**-b = a_ref * exp(-b (log C - ref)).
    return FrontierFit(a=a_ref * float(np.exp(b * ref)), b=b, c=c, on_frontier=front, note=note)
