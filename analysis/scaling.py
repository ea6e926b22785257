"""Chinchilla's loss law across model sizes, fitted to runs, and the allocation it implies.

    L(N, D) = E + A / N**alpha + B / D**beta

N is the model's parameter count, D the tokens it trained on (Hoffmann et al. 2022,
"Training Compute-Optimal Large Language Models", approach 3). The law is fitted as the
paper's Appendix D.2 and Besiroglu et al. 2024 ("Chinchilla Scaling: A replication
attempt") fit it: in log space, log L_hat = LSE(a - alpha log N, b - beta log D, e) with
A = exp(a), B = exp(b), E = exp(e), minimising the Huber loss (delta 1e-3) of the
residuals log L_hat - log L with a quasi-Newton method (BFGS: see ``_minimise`` for why
not L-BFGS-B) from the best points of a grid of starts.
Bands come from a bootstrap over the fitted points (runs), each refit warm-started from
the full fit.

Counting, one way for the planner: N is the total parameter count and training compute is
C = flops_per_token(N) * D, by default ``FLOPS_PER_PARAM_TOKEN * N * D`` (6ND: a forward
pass costs 2N FLOPs a token, the backward pass twice that; Kaplan et al. 2020), attention
left out. A caller that counts attention (gptcore's ``flops_per_token`` does) passes its own
``flops_per_token``: a function of N, so it fits a ladder of shapes.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, stats

FLOPS_PER_PARAM_TOKEN = 6.0
# N -> training FLOPs per token; None everywhere means FLOPS_PER_PARAM_TOKEN * N.
FlopsPerToken = Callable[[np.ndarray], np.ndarray]

HUBER_DELTA = 1e-3
BAND_LEVEL = 0.8
N_BOOT = 300
# Hoffmann et al.'s grid of starting points (Appendix D.2), in the order of the parameter
# vector (a, b, e, alpha, beta). Every start is scored and BFGS runs from the best
# REFINED_STARTS of them: on Chinchilla's points the best 8 already found the optimum
# that runs from 100 of them find.
START_GRID = (np.arange(0, 30, 5.0), np.arange(0, 30, 5.0), np.arange(-1, 1.5, 0.5),
              np.arange(0, 2.5, 0.5), np.arange(0, 2.5, 0.5))
REFINED_STARTS = 24
GTOL = 1e-7  # on the objective's gradient, which is of order one (``_objective``)
# Exponents outside these are a fit gone astray.
EXPONENT_BOUNDS = (0.01, 3.0)
# The band's widening beyond the fitted runs (``extrapolation_drift``): measured on runs
# that span DRIFT_SHARE or less of their compute range, else DEFAULT_DRIFT, the value
# measured on Chinchilla's points fitted below 3.4e19 FLOPs and checked up to 3.4e20
# (bench/planner_accuracy.py): 1.7% of the loss per decade of compute.
DRIFT_SHARE = 0.1
DRIFT_FLOOR = 0.1  # decades
DEFAULT_DRIFT = 0.017
SIZE_TOLERANCE = 0.02  # parameter counts within 2% are one model size


@dataclass(frozen=True)
class LossLaw:
    """L(N, D) = E + A / N**alpha + B / D**beta."""

    E: float
    A: float
    B: float
    alpha: float
    beta: float

    @staticmethod
    def of(params: Sequence[float] | np.ndarray) -> LossLaw:
        """From the fitted vector (a, b, e, alpha, beta)."""
        a, b, e, alpha, beta = (float(p) for p in params)
        return LossLaw(E=float(np.exp(e)), A=float(np.exp(a)), B=float(np.exp(b)),
                       alpha=alpha, beta=beta)

    @property
    def params(self) -> np.ndarray:
        """The vector (a, b, e, alpha, beta) the fit works in."""
        return np.array([np.log(self.A), np.log(self.B), np.log(self.E), self.alpha, self.beta])

    @property
    def n_exponent(self) -> float:
        """a in N_opt ∝ C**a under C = 6ND: beta / (alpha + beta)."""
        return self.beta / (self.alpha + self.beta)

    def loss(self, n: np.ndarray | float, d: np.ndarray | float) -> np.ndarray:
        """The law's loss for N parameters trained on D tokens (broadcast)."""
        return law_loss(self.params, n, d)

    def optimal(self, compute: np.ndarray | float,
                flops_per_token: FlopsPerToken | None = None) -> tuple[np.ndarray, np.ndarray]:
        """N_opt and D_opt: the split of ``compute`` FLOPs with the lowest loss."""
        n = optimal_n(self.params[None, :], compute, flops_per_token)[0]
        return n, np.asarray(compute, dtype=float) / token_flops(flops_per_token, n)


# Published constants, for comparison and as the prior when a user's runs cannot fit the
# exponents: Hoffmann et al. 2022 (eq. 10) and Besiroglu et al. 2024's refit of the same
# points (their Table 1), whose tokens per parameter (about 20 at Chinchilla's budget)
# agree with the paper's approaches 1 and 2, where the paper's constants give several
# times more.
CHINCHILLA = LossLaw(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
EPOCH = LossLaw(E=1.82, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658)


def token_flops(flops_per_token: FlopsPerToken | None, n: np.ndarray) -> np.ndarray:
    """Training FLOPs per token of models of N parameters: ``flops_per_token(N)``, or 6N."""
    if flops_per_token is None:
        return FLOPS_PER_PARAM_TOKEN * n
    return np.asarray(flops_per_token(n), dtype=float)


def law_loss(params: np.ndarray, n: np.ndarray | float, d: np.ndarray | float) -> np.ndarray:
    """L(N, D) for parameter vectors (..., 5) of (a, b, e, alpha, beta); params' leading
    axes come first in the result, then N's and D's broadcast shape."""
    p = np.asarray(params, dtype=float)
    shape = p.shape[:-1] + (1,) * np.broadcast(np.asarray(n), np.asarray(d)).ndim
    a, b, e, alpha, beta = (p[..., i].reshape(shape) for i in range(5))
    log_n, log_d = np.log(np.asarray(n, dtype=float)), np.log(np.asarray(d, dtype=float))
    return np.exp(e) + np.exp(a - alpha * log_n) + np.exp(b - beta * log_d)


def optimal_n(params: np.ndarray, compute: np.ndarray | float,
              flops_per_token: FlopsPerToken | None = None) -> np.ndarray:
    """N_opt for each parameter vector (rows of ``params``) and each compute: (rows, *C).

    Under 6ND it is the paper's closed form N_opt = G (C/6)**(beta/(alpha+beta)),
    G = (alpha A / (beta B))**(1/(alpha+beta)). With another ``flops_per_token`` the loss
    along D = C / flops_per_token(N) is minimised over log N numerically (Brent, bounded).
    """
    p = np.atleast_2d(np.asarray(params, dtype=float))
    c = np.asarray(compute, dtype=float)
    a, b, _, alpha, beta = (p[:, i].reshape((-1,) + (1,) * c.ndim) for i in range(5))
    if flops_per_token is None:
        log_g = (np.log(alpha) + a - np.log(beta) - b) / (alpha + beta)
        return np.exp(log_g + beta / (alpha + beta) * np.log(c / FLOPS_PER_PARAM_TOKEN))
    out = np.full((p.shape[0],) + c.shape, np.nan)
    for i, row in enumerate(p):
        if np.isnan(row).any():  # a bootstrap refit that went astray
            continue
        for j, cj in np.ndenumerate(c):
            def loss(log_n: float, row: np.ndarray = row, cj: float = float(cj)) -> float:
                n = np.exp(log_n)
                return float(law_loss(row, n, cj / token_flops(flops_per_token, np.asarray(n))))
            res = optimize.minimize_scalar(loss, bounds=(0.0, float(np.log(cj))),
                                           method="bounded", options={"xatol": 1e-6})
            out[(i,) + j] = np.exp(res.x)
    return out


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    return np.where(np.abs(r) <= delta, 0.5 * r * r, delta * (np.abs(r) - 0.5 * delta))


def _objective(free: np.ndarray, fixed: np.ndarray, log_n: np.ndarray, log_d: np.ndarray,
               log_loss: np.ndarray, delta: float) -> tuple[float, np.ndarray]:
    """Mean Huber loss of the log residuals over delta (same minimum, gradients of order one
    for the optimiser's tolerance) and its gradient in the free parameters: (a, b, e) and,
    unless ``fixed`` holds them, (alpha, beta)."""
    a, b, e, alpha, beta = np.concatenate([free, fixed])
    t = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    top = t.max(axis=0)
    w = np.exp(t - top)
    total = w.sum(axis=0)
    r = top + np.log(total) - log_loss
    value = _huber(r, delta).mean() / delta
    dr = np.clip(r, -delta, delta) / (delta * r.size)  # d value / d r
    share = w / total  # d r / d t
    g1, g2 = dr * share[0], dr * share[1]
    grad = np.array([g1.sum(), g2.sum(), (dr * share[2]).sum(), -(g1 * log_n).sum(),
                     -(g2 * log_d).sum()])
    return float(value), grad[:free.size]


def _huber_values(starts: np.ndarray, log_n: np.ndarray, log_d: np.ndarray,
                  log_loss: np.ndarray, delta: float) -> np.ndarray:
    """The objective at many starts at once (rows of ``starts``), to pick where to refine."""
    r = np.log(law_loss(starts, np.exp(log_n), np.exp(log_d))) - log_loss
    return _huber(r, delta).mean(axis=1)


def _minimise(start: np.ndarray, fixed: np.ndarray, log_n: np.ndarray, log_d: np.ndarray,
              log_loss: np.ndarray, delta: float) -> tuple[np.ndarray, float]:
    """(a, b, e, alpha, beta) and the objective BFGS reaches from ``start``, NaN where the
    exponents leave ``EXPONENT_BOUNDS`` (a start that went astray).

    BFGS, as Besiroglu et al.'s refits, rather than L-BFGS-B: scipy's L-BFGS-B spends its
    time in OpenBLAS calls that, on a machine whose cores are busy (a run training beside
    the dashboard), took 12 ms each where BFGS's numpy steps take microseconds; the fit
    was 60x slower for the same optimum.
    """
    res = optimize.minimize(_objective, start[:5 - fixed.size],
                            args=(fixed, log_n, log_d, log_loss, delta), jac=True,
                            method="BFGS", options={"gtol": GTOL, "maxiter": 2000})
    params = np.concatenate([res.x, fixed])
    low, high = EXPONENT_BOUNDS
    if not (np.all(np.isfinite(params)) and low <= params[3] <= high and low <= params[4] <= high):
        return np.full(5, np.nan), np.inf
    return params, float(res.fun)


def _fit_params(log_n: np.ndarray, log_d: np.ndarray, log_loss: np.ndarray,
                starts: np.ndarray, fixed: np.ndarray, delta: float, refine: int) -> np.ndarray:
    """The best vector BFGS reaches from the ``refine`` best-scoring starts."""
    order = np.argsort(_huber_values(starts, log_n, log_d, log_loss, delta), kind="stable")
    fits = [_minimise(start, fixed, log_n, log_d, log_loss, delta)
            for start in starts[order[:refine]]]
    params, value = min(fits, key=lambda fit: fit[1])
    if not np.isfinite(value):
        raise ValueError("the law did not fit these runs from any start: check that their "
                         "losses fall with parameters and tokens")
    return params


@dataclass(frozen=True, eq=False)  # arrays: compare fields, not instances
class Band:
    """A value and its band: ``low`` and ``high`` hold the middle ``level`` share of the
    bootstrap's values. Arrays in the shape of the query; float() a 0-d one."""

    value: np.ndarray
    low: np.ndarray
    high: np.ndarray
    level: float


def percentile_band(value: np.ndarray, samples: np.ndarray, level: float) -> Band:
    """``value`` with the central ``level`` interval of ``samples`` along its first axis."""
    low, high = np.nanquantile(samples, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return Band(value=np.asarray(value, dtype=float), low=low, high=high, level=level)


@dataclass(frozen=True, eq=False)
class Allocation:
    """The compute-optimal split of each budget in ``compute`` (FLOPs), with bands."""

    compute: np.ndarray
    n: Band
    d: Band
    tokens_per_param: Band


@dataclass(frozen=True, eq=False)
class LawFit:
    """The law fitted to runs, with the bootstrap refits that give its bands.

    ``boot`` holds one (a, b, e, alpha, beta) row per resample. ``residuals`` are the full
    fit's log residuals (log L_hat - log L) of the fitted points. ``fixed_exponents`` says
    alpha and beta were held (not fitted) at the law's values. ``drift`` is how far the
    law's loss strays, relative, per decade of compute beyond the largest fitted run
    (``log_nd_max``: log N*D of that run); ``drift_measured`` says it was measured on these
    runs (:func:`extrapolation_drift`), not taken from ``DEFAULT_DRIFT``.
    """

    law: LossLaw
    n_points: int
    n_sizes: int
    residuals: np.ndarray
    boot: np.ndarray
    level: float
    fixed_exponents: bool
    seed: int
    log_nd_max: float
    drift: float
    drift_measured: bool

    @property
    def residual_std(self) -> float:
        """Spread of the log residuals: about the relative scatter of one run's loss around
        the law. (Not their median absolute deviation: the Huber fit, nearly an L1 fit, sets
        a few residuals to zero, which halved it on synthetic runs.)"""
        return float(np.std(self.residuals))

    def interval(self, name: str) -> tuple[float, float]:
        """The bootstrap interval of one constant: E, A, B, alpha, beta, or n_exponent
        (a = beta/(alpha+beta) in N_opt ∝ C**a) and d_exponent (b = alpha/(alpha+beta))."""
        a, b, e, alpha, beta = self.boot.T
        values = {"E": np.exp(e), "A": np.exp(a), "B": np.exp(b), "alpha": alpha,
                  "beta": beta, "n_exponent": beta / (alpha + beta),
                  "d_exponent": alpha / (alpha + beta)}
        if name not in values:
            raise ValueError(f"no constant {name!r}: choose one of {', '.join(values)}")
        low, high = np.nanquantile(values[name], [(1 - self.level) / 2, (1 + self.level) / 2])
        return float(low), float(high)

    def predict(self, n: np.ndarray | float, d: np.ndarray | float) -> Band:
        """The loss of a run of N parameters on D tokens: the law's value, and a band for
        one run's loss. The band holds the constants' uncertainty (bootstrap refits) and
        the scatter of runs around the law (a fitted point's residual, drawn per refit),
        widened on each side by ``drift`` per decade of compute beyond the fitted runs:
        the bootstrap alone cannot see the bias of extrapolating, and held 41% of
        Chinchilla's larger budgets in its 80% band (bench/planner_accuracy.py)."""
        scatter = np.random.default_rng(self.seed + 1).choice(self.residuals, len(self.boot))
        samples = law_loss(self.boot, n, d)
        samples = samples * np.exp(-scatter.reshape((-1,) + (1,) * (samples.ndim - 1)))
        band = percentile_band(self.law.loss(n, d), samples, self.level)
        beyond = np.log(np.asarray(n, dtype=float) * np.asarray(d, dtype=float))
        widen = np.exp(self.drift * np.maximum(beyond - self.log_nd_max, 0.0) / np.log(10))
        return Band(band.value, band.low / widen, band.high * widen, band.level)

    def optimal(self, compute: np.ndarray | float,
                flops_per_token: FlopsPerToken | None = None) -> Allocation:
        """N_opt, D_opt and tokens per parameter for each budget, with bootstrap bands.
        With a ``flops_per_token`` each refit is optimised numerically: slower (about
        1 ms per refit and budget), so ask for few budgets."""
        c = np.asarray(compute, dtype=float)
        n = optimal_n(self.law.params, c, flops_per_token)[0]
        n_boot = optimal_n(self.boot, c, flops_per_token)
        d, d_boot = c / token_flops(flops_per_token, n), c / token_flops(flops_per_token, n_boot)
        return Allocation(compute=c, n=percentile_band(n, n_boot, self.level),
                          d=percentile_band(d, d_boot, self.level),
                          tokens_per_param=percentile_band(d / n, d_boot / n_boot, self.level))


def size_groups(n: Sequence[float] | np.ndarray,
                rel_tol: float = SIZE_TOLERANCE) -> list[np.ndarray]:
    """Indices of the runs of each model size, by increasing size: parameter counts that
    follow each other within ``rel_tol`` are one size."""
    log_n = np.log(np.asarray(n, dtype=float))
    if log_n.size == 0:
        return []
    order = np.argsort(log_n, kind="stable")
    return np.split(order, np.flatnonzero(np.diff(log_n[order]) > np.log1p(rel_tol)) + 1)


def count_sizes(n: Sequence[float] | np.ndarray, rel_tol: float = SIZE_TOLERANCE) -> int:
    """Distinct model sizes among parameter counts (:func:`size_groups`)."""
    return len(size_groups(n, rel_tol))


def start_grid() -> np.ndarray:
    """``START_GRID`` as rows of (a, b, e, alpha, beta)."""
    return np.array(list(itertools.product(*START_GRID)))


def fit_loss_law(n: Sequence[float] | np.ndarray, d: Sequence[float] | np.ndarray,
                 loss: Sequence[float] | np.ndarray, *, fixed_exponents: LossLaw | None = None,
                 n_boot: int = N_BOOT, seed: int = 0, level: float = BAND_LEVEL,
                 delta: float = HUBER_DELTA, refine: int = REFINED_STARTS,
                 loss_sd: Sequence[float] | np.ndarray | None = None) -> LawFit:
    """Fit L(N, D) to runs of N parameters trained on D tokens that reached ``loss``.

    ``fixed_exponents``: hold alpha and beta at that law's (E, A and B are still fitted);
    for runs of too few sizes to fix how the loss falls with N. The bootstrap draws the
    points with replacement ``n_boot`` times (seeded: the same inputs give the same bands)
    and refits each from the full fit. ``loss_sd``: how uncertain each run's loss is, as a
    standard deviation of its log (0 for a finished run's, ``log_sd_of_band`` of a
    forecast's band): each resample draws those losses afresh, so a band on a forecast
    widens the fit's bands instead of being taken as exact. ValueError for unusable input.
    """
    log_n, log_d = np.log(np.asarray(n, dtype=float)), np.log(np.asarray(d, dtype=float))
    log_loss = np.log(np.asarray(loss, dtype=float))
    sd = np.zeros_like(log_loss) if loss_sd is None else np.asarray(loss_sd, dtype=float)
    if sd.shape != log_loss.shape or not np.all(np.isfinite(sd) & (sd >= 0)):
        raise ValueError("loss_sd needs one finite, non-negative value per run")
    if not log_n.size == log_d.size == log_loss.size:
        raise ValueError(f"n ({log_n.size}), d ({log_d.size}) and loss ({log_loss.size}) "
                         "must have one value per run")
    if not np.all(np.isfinite(np.concatenate([log_n, log_d, log_loss]))):
        raise ValueError("every run needs a finite, positive parameter count, tokens and loss")
    free = 5 if fixed_exponents is None else 3
    if log_n.size < free:
        raise ValueError(f"fitting the law takes at least {free} runs, not {log_n.size}")
    starts = start_grid()
    fixed = np.empty(0)
    if fixed_exponents is not None:
        fixed = np.array([fixed_exponents.alpha, fixed_exponents.beta])
        abe = np.unique(starts[:, :3], axis=0)
        starts = np.column_stack([abe, np.broadcast_to(fixed, (len(abe), 2))])
    best = _fit_params(log_n, log_d, log_loss, starts, fixed, delta, refine)
    rng = np.random.default_rng(seed)
    boot = np.empty((n_boot, 5))
    for i in range(n_boot):
        pick = rng.integers(0, log_n.size, log_n.size)
        drawn = log_loss[pick] + (rng.normal(0.0, sd[pick]) if sd.any() else 0.0)
        boot[i] = _minimise(best, fixed, log_n[pick], log_d[pick], drawn, delta)[0]
    residuals = np.log(law_loss(best, np.exp(log_n), np.exp(log_d))) - log_loss
    drift = extrapolation_drift(best, fixed, log_n, log_d, log_loss, delta, level)
    return LawFit(law=LossLaw.of(best), n_points=int(log_n.size), n_sizes=count_sizes(
        np.exp(log_n)), residuals=residuals, boot=boot, level=level,
        fixed_exponents=fixed_exponents is not None, seed=seed,
        log_nd_max=float((log_n + log_d).max()),
        drift=DEFAULT_DRIFT if drift is None else drift, drift_measured=drift is not None)


def log_sd_of_band(low: float, high: float, level: float) -> float:
    """The standard deviation of log loss that a normal band ``low``-``high`` at ``level``
    (two-sided) implies: a forecast's band as ``fit_loss_law``'s ``loss_sd``."""
    if not 0 < low <= high or not 0 < level < 1:
        raise ValueError(f"a band needs 0 < low <= high and a level in (0, 1), not {low}-{high}"
                         f" at {level}")
    return float(np.log(high / low) / (2 * stats.norm.ppf(0.5 + level / 2)))


def extrapolation_drift(params: np.ndarray, fixed: np.ndarray, log_n: np.ndarray,
                        log_d: np.ndarray, log_loss: np.ndarray, delta: float,
                        level: float) -> float | None:
    """The runs' own measure of how the law strays beyond them: refit (from ``params``) on
    the runs below a tenth (``DRIFT_SHARE``) of the largest compute, and take the ``level``
    quantile of each run above's relative miss per decade past that cut (at least
    ``DRIFT_FLOOR`` decades: a run just past it says little about a slope). None when the
    runs below cannot fit the law (too few, or under three sizes with free exponents) or
    fewer than three lie above. Compute is counted as N*D: the FLOPs per token cancel."""
    log_nd = log_n + log_d
    cut = log_nd.max() + np.log(DRIFT_SHARE)
    below = log_nd <= cut
    enough = 3 if fixed.size else 5
    sizes = 2 if fixed.size else 3
    if below.sum() < enough or count_sizes(np.exp(log_n[below])) < sizes or (~below).sum() < 3:
        return None
    refit, _ = _minimise(params, fixed, log_n[below], log_d[below], log_loss[below], delta)
    if np.isnan(refit).any():
        return None
    miss = np.abs(np.log(law_loss(refit, np.exp(log_n[~below]), np.exp(log_d[~below])))
                  - log_loss[~below])
    decades = np.maximum((log_nd[~below] - cut) / np.log(10), DRIFT_FLOOR)
    return float(np.quantile(miss / decades, level))
