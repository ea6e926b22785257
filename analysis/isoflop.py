"""Chinchilla's approach 2: the loss minimum along each IsoFLOP curve, and the power laws
through those minima.

Runs that share a training budget C (FLOPs) but differ in size N trace an IsoFLOP curve.
Hoffmann et al. 2022 fit a parabola of loss against log N to each curve and take its
vertex as the compute-optimal N_opt(C) (D_opt = C / flops per token); then N_opt ∝ C**a
and D_opt ∝ C**b, least squares in log space. Counting follows ``analysis.scaling``. The
intervals come from a bootstrap that redraws the runs of each budget with replacement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from analysis.scaling import (
    BAND_LEVEL,
    N_BOOT,
    Allocation,
    FlopsPerToken,
    percentile_band,
    token_flops,
)

MIN_POINTS_PER_BUDGET = 3  # a parabola's worth
BUDGET_TOLERANCE = 0.25  # a run within 25% of a budget's FLOPs is on its IsoFLOP curve


@dataclass(frozen=True)
class IsoFlopMinimum:
    """The vertex of one budget's parabola. ``interior``: it lies between the smallest and
    largest model trained at that budget (otherwise it is an extrapolation, not fitted)."""

    compute: float
    n_opt: float
    d_opt: float
    loss: float
    n_points: int
    interior: bool


def assign_budgets(compute: Sequence[float] | np.ndarray, budgets: Sequence[float],
                   tolerance: float = BUDGET_TOLERANCE) -> np.ndarray:
    """The nominal budget of each run: the nearest of ``budgets`` (in log FLOPs) within a
    factor 1 + ``tolerance``, NaN for a run on none of them."""
    nominal = np.asarray(budgets, dtype=float)
    gap = np.log(np.asarray(compute, dtype=float))[:, None] - np.log(nominal)[None, :]
    nearest = np.abs(gap).argmin(axis=1)
    close = np.abs(gap[np.arange(gap.shape[0]), nearest]) <= np.log1p(tolerance)
    return np.where(close, nominal[nearest], np.nan)


def infer_budgets(compute: Sequence[float] | np.ndarray, n: Sequence[float] | np.ndarray,
                  tolerance: float = BUDGET_TOLERANCE) -> list[float]:
    """The IsoFLOP budgets that runs trace without a ladder saying so: runs whose FLOPs lie
    within a factor 1 + ``tolerance`` of the smallest of their group, at
    MIN_POINTS_PER_BUDGET model sizes or more; each budget is its group's geometric mean.
    Sizes within 2% count as one."""
    c_arr, n_arr = np.asarray(compute, dtype=float), np.asarray(n, dtype=float)
    order = np.argsort(c_arr)
    budgets, group = [], []

    def close(members: list[int]) -> None:
        sizes = np.unique(np.round(np.log(n_arr[members]) / np.log1p(0.02)))
        if sizes.size >= MIN_POINTS_PER_BUDGET:
            budgets.append(float(np.exp(np.log(c_arr[members]).mean())))

    for i in order:
        if group and c_arr[i] > c_arr[group[0]] * (1 + tolerance):
            close(group)
            group = []
        group.append(int(i))
    if group:
        close(group)
    return budgets


def parabola_vertex(n: np.ndarray, loss: np.ndarray) -> tuple[float, float, bool] | None:
    """(N at the vertex, loss there, whether it lies inside the sampled N) of loss against
    log N; None with under three sizes or a parabola that opens downwards."""
    x = np.log(n)
    if np.unique(x).size < MIN_POINTS_PER_BUDGET:
        return None
    c2, c1, c0 = np.polyfit(x, loss, 2)
    if c2 <= 0:
        return None
    x_opt = -c1 / (2 * c2)
    return float(np.exp(x_opt)), float(c0 - c1 * c1 / (4 * c2)), bool(x.min() < x_opt < x.max())


def isoflop_minima(n: np.ndarray, loss: np.ndarray, budget: np.ndarray,
                   flops_per_token: FlopsPerToken | None = None) -> list[IsoFlopMinimum]:
    """One vertex per budget (NaN budgets are no curve's), by increasing compute."""
    out = []
    for c in np.unique(budget[np.isfinite(budget)]):
        on = budget == c
        vertex = parabola_vertex(n[on], loss[on])
        if vertex is not None:
            n_opt, low, interior = vertex
            with np.errstate(divide="ignore", invalid="ignore"):  # a far-off outer vertex
                d_opt = float(c / token_flops(flops_per_token, np.asarray(n_opt)))
            out.append(IsoFlopMinimum(float(c), n_opt, d_opt, low, int(on.sum()), interior))
    return out


def _power_laws(minima: Sequence[IsoFlopMinimum]) -> np.ndarray:
    """(log n_coef, a, log d_coef, b) of N_opt = n_coef C**a and D_opt = d_coef C**b through
    the interior minima; NaN with fewer than two."""
    inner = [m for m in minima if m.interior]
    if len({m.compute for m in inner}) < 2:
        return np.full(4, np.nan)
    log_c = np.log([m.compute for m in inner])
    a, log_n0 = np.polyfit(log_c, np.log([m.n_opt for m in inner]), 1)
    b, log_d0 = np.polyfit(log_c, np.log([m.d_opt for m in inner]), 1)
    return np.array([log_n0, a, log_d0, b])


@dataclass(frozen=True, eq=False)
class IsoFlopFit:
    """N_opt = exp(log_n_coef) C**n_exponent and D_opt = exp(log_d_coef) C**d_exponent,
    fitted through ``minima`` (only the interior ones count); ``boot`` holds one
    (log_n_coef, n_exponent, log_d_coef, d_exponent) row per resample (NaN where the
    resample left under two budgets with an interior minimum)."""

    minima: list[IsoFlopMinimum]
    log_n_coef: float
    n_exponent: float
    log_d_coef: float
    d_exponent: float
    boot: np.ndarray
    level: float

    def interval(self, name: str) -> tuple[float, float]:
        """The bootstrap interval of ``n_exponent`` (a) or ``d_exponent`` (b)."""
        column = {"n_exponent": 1, "d_exponent": 3}.get(name)
        if column is None:
            raise ValueError(f"no exponent {name!r}: choose n_exponent or d_exponent")
        low, high = np.nanquantile(self.boot[:, column], [(1 - self.level) / 2,
                                                          (1 + self.level) / 2])
        return float(low), float(high)

    def optimal(self, compute: np.ndarray | float) -> Allocation:
        """N_opt, D_opt and tokens per parameter the power laws give for each budget."""
        log_c = np.log(np.asarray(compute, dtype=float))
        def laws(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            p = np.atleast_2d(p)
            shape = (-1,) + (1,) * log_c.ndim
            n = np.exp(p[:, 0].reshape(shape) + p[:, 1].reshape(shape) * log_c)
            d = np.exp(p[:, 2].reshape(shape) + p[:, 3].reshape(shape) * log_c)
            return n, d
        n, d = laws(np.array([self.log_n_coef, self.n_exponent, self.log_d_coef,
                              self.d_exponent]))
        n_boot, d_boot = laws(self.boot)
        return Allocation(compute=np.exp(log_c), n=percentile_band(n[0], n_boot, self.level),
                          d=percentile_band(d[0], d_boot, self.level),
                          tokens_per_param=percentile_band(d[0] / n[0], d_boot / n_boot,
                                                           self.level))


def fit_isoflop(n: Sequence[float] | np.ndarray, loss: Sequence[float] | np.ndarray,
                budget: Sequence[float] | np.ndarray, *,
                flops_per_token: FlopsPerToken | None = None, n_boot: int = N_BOOT,
                seed: int = 0, level: float = BAND_LEVEL) -> IsoFlopFit:
    """Approach 2 on runs of ``n`` parameters that reached ``loss`` at nominal ``budget``
    FLOPs (``assign_budgets``; NaN: on no IsoFLOP curve). ValueError when fewer than two
    budgets have their minimum inside the sizes trained."""
    n_arr, y = np.asarray(n, dtype=float), np.asarray(loss, dtype=float)
    c = np.asarray(budget, dtype=float)
    minima = isoflop_minima(n_arr, y, c, flops_per_token)
    fitted = _power_laws(minima)
    if np.isnan(fitted[0]):
        raise ValueError("approach 2 needs IsoFLOP runs at two or more budgets, each with "
                         "its lowest loss between its smallest and largest model: add sizes "
                         "on both sides of each budget's best")
    rng = np.random.default_rng(seed)
    groups = [np.flatnonzero(c == b) for b in np.unique(c[np.isfinite(c)])]
    boot = np.empty((n_boot, 4))
    for i in range(n_boot):
        pick = np.concatenate([rng.choice(g, g.size) for g in groups])
        boot[i] = _power_laws(isoflop_minima(n_arr[pick], y[pick], c[pick], flops_per_token))
    return IsoFlopFit(minima=minima, log_n_coef=float(fitted[0]), n_exponent=float(fitted[1]),
                      log_d_coef=float(fitted[2]), d_exponent=float(fitted[3]), boot=boot,
                      level=level)
