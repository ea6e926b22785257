"""Forecast a run's final validation loss from its curve so far, aware of the lr schedule.

A plain power law in steps cannot know that a cosine or step schedule still has a loss
drop in store when the learning rate anneals. The scaling law with learning-rate
annealing (``analysis.law``) writes the whole curve from the schedule's areas S1 and S2;
its four constants are fitted to the evaluations seen so far (scipy's least_squares with
bounds), and S1 and S2 of the rest of the run follow from the known schedule, so the fit
extrapolates to ``max_steps`` with the annealing still to come.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from scipy import optimize, stats

from analysis.family import FamilyFit
from analysis.law import ALPHA_BOUNDS, ANNEALING_MOMENTUM, annealing_areas, loss_at

MIN_POINTS = 5  # evaluations (after step 0) a forecast needs: one more than the constants
# With a family's shape constants only the level and scale are fitted: a line's worth.
MIN_POINTS_CALIBRATED = 3
BAND_LEVEL = 0.9
# C is fitted only once the annealing area seen is half the run's total: extrapolated
# further, a C fitted on real CPU runs took the curve's own bends for annealing and
# forecast drops of 20-40% that never came (bench/forecast_accuracy.py).
MIN_ANNEALING_SEEN = 0.5
PARAM_NAMES = ("L0", "A", "alpha", "C")
# A forecast that no finished run has checked (uncalibrated, or calibrated on a single
# other shape) has a band at max_steps at least this share of the forecast times the
# square root of the share of steps still to come. Fitted on the 18 real CPU curves of
# bench/forecast_curves.json: the 90% split-conformal quantile of |error| / sqrt(share
# left) over their forecasts alone from 25% and 40% of the steps (0.16); with it a 90%
# band holds the actual final loss for 17 of 18 from each, and 15-18 of 18 from 60-90%,
# which it was not fitted on (bench/first_run_forecast.py). The fit's own band held 9 of
# 18 from 40%: the law's misfit, not the noise, decides how far such a forecast misses,
# and it grows with the steps still to extrapolate.
UNCALIBRATED_MISS = 0.16
ALPHA_STARTS = (0.3, 0.7, 1.5)  # a few starts: the fit is not convex in alpha


@dataclass(frozen=True, eq=False)  # arrays: compare fields, not instances
class ForecastCurve:
    """The forecast at given steps: the fitted curve and its prediction band."""

    steps: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray


@dataclass(frozen=True, eq=False)
class Forecast:
    """A fitted forecast of one run's validation loss.

    ``low``/``high`` bound a single evaluation of the final val loss with probability
    ``level`` (a prediction interval, so it includes evaluation noise), as far as the law
    holds; see :func:`forecast_final` for how it is computed.
    """

    predicted_final: float
    low: float
    high: float
    upto_step: int
    max_steps: int
    n_points: int
    params: dict[str, float]
    residual_std: float
    level: float
    note: str | None  # why the forecast is less informed than usual, if it is
    # What curve() needs: the constants, their covariance, the areas of every step.
    _theta: np.ndarray = field(repr=False)
    _cov: np.ndarray = field(repr=False)
    _s1: np.ndarray = field(repr=False)
    _s2: np.ndarray = field(repr=False)
    _t_quantile: float = field(repr=False)
    # Whether the law's shape (alpha, C, lambda) came from finished relatives of the run
    # (its family) rather than from its own curve alone, and how many there were.
    calibrated: bool = False
    family_size: int = 0
    # Where the band's width comes from: "fit" (the fit's own uncertainty) or
    # "relatives" (how far forecasts from the same share of steps missed on them).
    band_source: str = "fit"
    # Finished relatives left out of the family's fit, each with why ("#7: diverged ...").
    left_out: tuple[str, ...] = ()
    # How many other shapes the law's shape came from, when the run has no finished
    # relative of its own shape (``analysis.family.fit_shapes``); 0: its own family's.
    other_shapes: int = 0
    _band_scale: float = field(default=1.0, repr=False)  # the band at max_steps, over the fit's

    @property
    def half_width(self) -> float:
        """Above the forecast; below it the band may stop at zero (a loss never goes lower)."""
        return self.high - self.predicted_final

    def curve(self, steps: Sequence[int] | np.ndarray) -> ForecastCurve:
        """The fitted curve and band at ``steps`` (clipped to 1..max_steps)."""
        idx = np.clip(np.asarray(steps, dtype=int), 1, self.max_steps)
        mean, half = _band(self._theta, self._cov, self._s1[idx], self._s2[idx],
                           self.residual_std**2, self._t_quantile)
        half = half * self._band_scale
        return ForecastCurve(steps=idx, mean=mean, low=np.maximum(mean - half, 0.0),
                             high=mean + half)

    def with_band(self, relative_half_width: float, relatives: int,
                  source: str = "relatives") -> Forecast:
        """This forecast with its band at max_steps set from a record of misses (``source``:
        "relatives", or "other shapes" for their misses on each other):
        ``predicted_final * (1 ± relative_half_width)``, never narrower than the fit's own
        band. The band along the curve keeps the fit's shape, scaled to meet that width."""
        half = max(relative_half_width * abs(self.predicted_final), self.half_width)
        # The fit's own half-width at max_steps, computed again rather than taken as
        # high - predicted_final: on a curve the law fits exactly it is so small that the
        # difference keeps none of its digits, and the band along the curve would miss high.
        fit_half = float(_band(self._theta, self._cov, self._s1[[self.max_steps]],
                               self._s2[[self.max_steps]], self.residual_std**2,
                               self._t_quantile)[1][0])
        return replace(self, low=max(self.predicted_final - half, 0.0),
                       high=self.predicted_final + half,
                       band_source=source, family_size=relatives,
                       _band_scale=half / fit_half if fit_half > 0 else 1.0)

    def with_rule_band(self) -> Forecast:
        """This forecast with the band no finished run has measured: at least
        ``uncalibrated_half_width`` of it at max_steps (band source "rule" where that
        is wider than the fit's own band)."""
        rule = uncalibrated_half_width(self.upto_step, self.max_steps)
        if rule * abs(self.predicted_final) <= self.half_width:
            return self
        return self.with_band(rule, self.family_size, source="rule")


def uncalibrated_half_width(upto_step: int, max_steps: int) -> float:
    """The relative half-width of an unchecked forecast's band from ``upto_step`` of
    ``max_steps``: ``UNCALIBRATED_MISS`` times the square root of the share still to come."""
    return UNCALIBRATED_MISS * math.sqrt(max(1.0 - upto_step / max_steps, 0.0))


def _law(theta: np.ndarray, s1: np.ndarray, s2: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The law's values and its Jacobian in (L0, A, alpha, C)."""
    l0, a, alpha, c = theta
    power = s1 ** (-alpha)
    value = l0 + a * power - c * s2
    jac = np.column_stack([np.ones_like(s1), power, -a * power * np.log(s1), -s2])
    return value, jac


@dataclass(frozen=True, eq=False)
class _Fit:
    theta: np.ndarray  # L0, A, alpha, C (C is 0 when not fitted)
    cov: np.ndarray  # 4x4, zero rows/columns for a constant held fixed
    rss: float
    n_free: int

    def aicc(self, n: int) -> float:
        """Small-sample AIC of a least-squares fit (the noise variance counts as a parameter)."""
        k = self.n_free + 1
        return n * np.log(max(self.rss, 1e-300) / n) + 2 * k + 2 * k * (k + 1) / (n - k - 1)


def _fit(s1: np.ndarray, s2: np.ndarray, y: np.ndarray, with_c: bool) -> _Fit | None:
    """Least squares for L0, A, alpha and, when ``with_c``, C (else C is held at 0)."""
    free = np.array([True, True, True, with_c])
    lower = np.array([0.0, 0.0, ALPHA_BOUNDS[0], 0.0])[free]
    upper = np.array([np.inf, np.inf, ALPHA_BOUNDS[1], np.inf])[free]

    def full(x: np.ndarray) -> np.ndarray:
        theta = np.zeros(4)
        theta[free] = x
        return theta

    def residuals(x: np.ndarray) -> np.ndarray:
        return _law(full(x), s1, s2)[0] - y

    def jacobian(x: np.ndarray) -> np.ndarray:
        return _law(full(x), s1, s2)[1][:, free]

    best = None
    for alpha in ALPHA_STARTS:
        # For a fixed alpha the law is linear in L0, A, C: solve that for a starting point.
        basis = np.column_stack([np.ones_like(s1), s1 ** (-alpha), -s2])[:, free[[0, 1, 3]]]
        start = np.insert(np.linalg.lstsq(basis, y, rcond=None)[0], 2, alpha)
        start = np.clip(start, lower + 1e-9, np.minimum(upper, 1e6))
        try:
            res = optimize.least_squares(residuals, start, jac=jacobian, bounds=(lower, upper),
                                         x_scale="jac")
        except (ValueError, np.linalg.LinAlgError):
            continue
        if np.isfinite(res.cost) and (best is None or res.cost < best.cost):
            best = res
    if best is None:
        return None
    rss = 2 * best.cost
    cov = np.zeros((4, 4))
    cov[np.ix_(free, free)] = np.linalg.pinv(best.jac.T @ best.jac) * rss / (y.size - free.sum())
    return _Fit(theta=full(best.x), cov=cov, rss=rss, n_free=int(free.sum()))


def forecast_final(steps: Sequence[int], val_loss: Sequence[float],
                   lr_per_step: Sequence[float], max_steps: int, *,
                   upto_step: int | None = None, annealing_c: float | None = None,
                   level: float = BAND_LEVEL,
                   momentum: float = ANNEALING_MOMENTUM,
                   areas: tuple[np.ndarray, np.ndarray] | None = None,
                   family: FamilyFit | None = None) -> Forecast | None:
    """Fit the evaluations at or before ``upto_step`` and forecast val loss at ``max_steps``.

    ``steps``/``val_loss`` are the evaluations (val loss after ``steps[k]`` optimizer
    steps); ``lr_per_step[i]`` is the lr of optimizer step i for i in 0..max_steps-1
    (``gptcore.schedule.lr_at``). Passing a constant ``lr_per_step`` turns the law into a
    plain power law in steps, the schedule-blind baseline.

    Returns None when fewer than ``MIN_POINTS`` usable evaluations (finite, after step 0,
    which has seen no learning rate at all) are at hand.

    C is fitted only when the evaluations show annealing: the annealing area seen must be
    at least ``MIN_ANNEALING_SEEN`` of the run's total, and the fit with C must beat the
    fit without it on small-sample AIC. Early in a decaying schedule the annealing area is
    tiny and its effect hides in the noise, so C is held at 0 and ``note`` says the
    forecast leaves the coming drop out. ``annealing_c`` supplies C instead, as the paper
    does: fitted on a finished run of the same model and data (its ``params["C"]``) and
    held fixed here, so a run's annealing is forecast before it shows. Its uncertainty is
    not in the band. ``areas`` is ``annealing_areas(lr_per_step, momentum)`` computed
    once by a caller that forecasts the same schedule again and again (a live page on a
    10-million-step run would otherwise spend most of a second on it at each refit).

    ``family`` (``analysis.family.fit_family`` on the run's finished relatives) supplies
    the law's shape: alpha, C and the annealing momentum (which then replaces
    ``momentum``; ``areas`` must be computed with it). Only the run's own level and scale
    (L0 and A) are fitted, a linear fit that needs ``MIN_POINTS_CALIBRATED`` evaluations,
    and the forecast is ``calibrated``. The band is still the fit's; ``Forecast.with_band``
    widens it to the family's record.

    The band is a prediction interval from the fit's parameter covariance (the Jacobian at
    the optimum, scaled by the residual variance) carried to ``max_steps`` by the delta
    method, plus the residual variance itself, with a Student-t quantile. A residual
    bootstrap would cost ~100 refits on every refresh of the Live page and with a few
    dozen correlated points would not capture the law's own misfit any better; the
    covariance is deterministic, so successive refreshes and cut decisions agree.
    """
    if max_steps < 1:
        raise ValueError(f"max_steps must be at least 1, not {max_steps}")
    if len(lr_per_step) < max_steps:
        raise ValueError(f"lr_per_step has {len(lr_per_step)} values but max_steps is "
                         f"{max_steps}: give the lr of every step 0..max_steps-1")
    if annealing_c is not None and not annealing_c >= 0:
        raise ValueError(f"annealing_c must be 0 or more, not {annealing_c}")
    x = np.asarray(steps, dtype=float)
    y = np.asarray(val_loss, dtype=float)
    if x.shape != y.shape:
        raise ValueError(f"steps ({x.size}) and val_loss ({y.size}) differ in length")
    # A step evaluated twice (a run rolled back past a spike and went on) counts once,
    # with its later value: that is the run's history from then on.
    last = x.size - 1 - np.unique(x[::-1], return_index=True)[1]
    x, y = x[last], y[last]
    if upto_step is None:
        upto_step = int(x.max()) if x.size else 0
    keep = np.isfinite(y) & (x >= 1) & (x <= min(upto_step, max_steps))
    x, y = x[keep].astype(int), y[keep]
    if x.size < (MIN_POINTS if family is None else MIN_POINTS_CALIBRATED):
        return None

    if family is not None:
        momentum = family.momentum
    if areas is None:
        areas = annealing_areas(np.asarray(lr_per_step, dtype=float)[:max_steps], momentum)
    s1_all, s2_all = areas
    s1, s2 = s1_all[x], s2_all[x]
    if np.any(s1 <= 0):
        return None  # an lr of zero up to an evaluation: nothing to fit a power of
    if family is not None:
        # The steep first evaluations, left out of the family's fit, are left out here too
        # while enough remain.
        later = x >= family.fit_from * max_steps
        if later.sum() < MIN_POINTS_CALIBRATED:
            later[:] = True
        fit = _fit_level_scale(s1[later], s2[later], y[later], family)
    elif annealing_c is not None:
        # A known C: fit the rest to the curve with its annealing drop added back.
        fit = _fit(s1, s2, y + annealing_c * s2, with_c=False)
        if fit is None:
            return None
        fit = replace(fit, theta=np.append(fit.theta[:3], annealing_c))
    else:
        fit = _fit(s1, s2, y, with_c=False)
        # AICc needs n > k + 1 (k = 5 with C).
        if x.size > 6 and s2.max() >= MIN_ANNEALING_SEEN * s2_all[max_steps] > 0:
            with_c = _fit(s1, s2, y, with_c=True)
            if with_c is not None and (fit is None or with_c.aicc(x.size) < fit.aicc(x.size)):
                fit = with_c
        if fit is None:
            return None
    note = None
    # Only while annealing is still to come: a run evaluated to its end has no "rest of
    # the schedule" whose drop the forecast could leave out.
    if family is None and fit.theta[3] == 0 and s2_all[max_steps] - s2.max() > 1e-9:
        note = ("the evaluations so far do not show the lr decay's effect: the forecast "
                "leaves out any extra drop the rest of the schedule brings")
    dof = x.size - fit.n_free
    resid_var = fit.rss / dof
    t_quantile = float(stats.t.ppf(0.5 + level / 2, dof))
    mean, half = _band(fit.theta, fit.cov, s1_all[[max_steps]], s2_all[[max_steps]],
                       resid_var, t_quantile)
    return Forecast(
        predicted_final=float(mean[0]), low=max(float(mean[0] - half[0]), 0.0),
        high=float(mean[0] + half[0]),
        upto_step=int(x.max()), max_steps=max_steps, n_points=int(x.size),
        params=dict(zip(PARAM_NAMES, map(float, fit.theta), strict=True)),
        residual_std=float(np.sqrt(resid_var)), level=level, note=note,
        calibrated=family is not None, family_size=family.n_runs if family else 0,
        _theta=fit.theta, _cov=fit.cov, _s1=s1_all, _s2=s2_all, _t_quantile=t_quantile)


def _fit_level_scale(s1: np.ndarray, s2: np.ndarray, y: np.ndarray,
                     family: FamilyFit) -> _Fit:
    """L0 and A by linear least squares (both at least 0), alpha and C the family's."""
    basis = np.column_stack([np.ones_like(s1), s1 ** (-family.alpha)])
    target = y + family.c * s2
    coef = np.linalg.lstsq(basis, target, rcond=None)[0]
    if np.any(coef < 0):
        with np.errstate(all="ignore"):
            coef = optimize.lsq_linear(basis, target, bounds=(0.0, np.inf), method="bvls").x
    resid = basis @ coef - target
    rss = float(resid @ resid)
    cov = np.zeros((4, 4))
    dof = max(y.size - 2, 1)
    cov[:2, :2] = np.linalg.pinv(basis.T @ basis) * rss / dof
    theta = np.array([coef[0], coef[1], family.alpha, family.c])
    return _Fit(theta=theta, cov=cov, rss=rss, n_free=2)


def _band(theta: np.ndarray, cov: np.ndarray, s1: np.ndarray, s2: np.ndarray,
          resid_var: float, t_quantile: float) -> tuple[np.ndarray, np.ndarray]:
    """Mean and half-width of the prediction band at the given areas.

    Delta method: the fit's parameter uncertainty carried to each step, plus the scatter
    of one evaluation around the curve. The mean stops at zero.
    """
    mean, jac = _law(theta, s1, s2)
    var = np.einsum("ij,jk,ik->i", jac, cov, jac) + resid_var
    half = t_quantile * np.sqrt(np.maximum(var, 0.0))
    # A loss is never below zero, however far the fitted annealing term runs on.
    return np.maximum(mean, 0.0), half


def eta_to_loss(forecast: Forecast, target: float) -> int | None:
    """The first step at which the forecast curve is at or below ``target``, else None.

    A step at or before ``forecast.upto_step`` means the fitted curve is already there.
    """
    # The mean alone, straight from the law: the band's Jacobian at every step of a long
    # run would cost far more and is not needed here.
    s1 = forecast._s1[1:forecast.max_steps + 1]
    s2 = forecast._s2[1:forecast.max_steps + 1]
    reached = np.flatnonzero(loss_at(*forecast._theta, s1, s2) <= target)
    return int(reached[0]) + 1 if reached.size else None
