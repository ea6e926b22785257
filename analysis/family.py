"""Forecast families: the law's shape fitted on finished relatives, bands from their misses.

Runs of one model shape, tokenizer, corpus, context, batch and optimizer share the shape
of the annealing law (``analysis.forecast``): the exponent ``alpha``, the annealing
constant ``C`` and the annealing momentum ``lambda``. Fitted jointly on the family's
finished curves (each run keeps its own level ``L0`` and scale ``A``), they let a new
member's forecast refit only its level and scale, a linear fit that a few evaluations
pin down, and see a coming lr decay before it shows, as Tissue et al. (2024) forecast
whole schedules from one fitted law.

A run whose curve does not follow the law (it diverged, or fits far worse than the others
under their shape) is left out of the fit, with a reason (:func:`screen`): one diverged
relative would otherwise bend the shape for all and widen every band.

How far such forecasts missed on the family's own finished runs, each forecast from the
same share of its steps with constants fitted on the others (leave one out), gives the
band its width (:func:`band_half_width`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize, stats

from analysis.law import ALPHA_BOUNDS, annealing_areas, loss_at

# The momenta tried for lambda: the paper's 0.999 suits runs of tens of thousands of
# steps; a run of a few hundred steps anneals on a shorter time scale.
MOMENTA = (0.9, 0.95, 0.98, 0.99, 0.995, 0.999)
ALPHA_GRID = np.geomspace(0.02, 3.0, 24)
# Evaluations before this share of a relative's steps are left out of the joint fit: the
# first few, at the steep start of training, follow the law least and would dominate it.
FIT_FROM = 0.05
# A curve that ends this share of its way down above its lowest evaluation diverged.
DIVERGED_RISE = 0.25
# A run whose curve misses the others' law by this many times their median miss, and by
# at least MIN_MISFIT of its loss, fits far worse than the others. Less than MIN_MISFIT is
# evaluation noise, for a miss and for a rise alike.
FAR_WORSE = 5.0
MIN_MISFIT = 0.02
# No band is wider than this many times the largest miss the family showed: beyond it a
# Student-t on a handful of misses says more about their number than about the runs.
MAX_BAND_OVER_MISSES = 2.0


@dataclass(frozen=True, eq=False)
class Curve:
    """One run's val curve and its lr schedule (``lr_per_step[i]``: the lr of step i)."""

    steps: np.ndarray
    val_loss: np.ndarray
    lr_per_step: np.ndarray
    max_steps: int
    non_finite_step: int | None = None  # the first evaluation that was nan or inf
    # The annealing areas by momentum, computed once (``areas_of``).
    areas: dict[float, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict,
                                                               repr=False)

    @staticmethod
    def of(steps: Sequence[int], val_loss: Sequence[float], lr_per_step: Sequence[float],
           max_steps: int) -> Curve:
        x = np.asarray(steps, dtype=int)
        y = np.asarray(val_loss, dtype=float)
        # A step evaluated twice (a roll-back) counts once, with its later value.
        last = x.size - 1 - np.unique(x[::-1], return_index=True)[1]
        x, y = x[last], y[last]
        bad = x[~np.isfinite(y)]
        keep = np.isfinite(y) & (x >= 1) & (x <= max_steps)
        return Curve(steps=x[keep], val_loss=y[keep],
                     lr_per_step=np.asarray(lr_per_step, dtype=float)[:max_steps],
                     max_steps=int(max_steps),
                     non_finite_step=int(bad.min()) if bad.size else None)

    @property
    def final(self) -> float | None:
        """The val loss at max_steps, when the run was evaluated there."""
        at = np.flatnonzero(self.steps == self.max_steps)
        return float(self.val_loss[at[0]]) if at.size else None

    def upto(self, fraction: float) -> int:
        return max(1, int(fraction * self.max_steps))


@dataclass(frozen=True)
class FamilyFit:
    """The shape constants fitted jointly on a family's finished runs."""

    alpha: float
    c: float
    momentum: float
    n_runs: int
    residual_std: float
    # Evaluations before this share of a run's steps are not fitted (``FIT_FROM``).
    fit_from: float = 0.0


def areas_of(curve: Curve, momentum: float) -> tuple[np.ndarray, np.ndarray]:
    """``annealing_areas`` of a curve's schedule, kept on the curve (a family is fitted
    again and again, with one run left out each time)."""
    if momentum not in curve.areas:
        curve.areas[momentum] = annealing_areas(curve.lr_per_step, momentum)
    return curve.areas[momentum]


def _solve(columns: np.ndarray, y: np.ndarray, lower: np.ndarray) -> tuple[np.ndarray, float]:
    """Least squares with the coefficients at or above ``lower``; (coefficients, rss)."""
    coef = np.linalg.lstsq(columns, y, rcond=None)[0]
    if np.any(coef < lower):
        # A small problem with a few active bounds: the exact active-set method is the
        # fastest of lsq_linear's.
        with np.errstate(all="ignore"):
            coef = optimize.lsq_linear(columns, y, bounds=(lower, np.inf), method="bvls").x
    resid = columns @ coef - y
    return coef, float(resid @ resid)


def _joint_solve(curves: Sequence[Curve], alpha: float, momentum: float
                 ) -> tuple[float, float, int]:
    """C, the residual sum of squares and the number of evaluations of the joint fit for a
    given alpha and lambda, every L0, A and C at least 0.

    Each run's L0 and A are projected out of its own evaluations (a QR of its two
    columns), which leaves C a one-variable regression. Where that breaks a bound, the
    best L0 and A of each run for a given C are a two-variable problem with a closed
    form, and the residual is convex in C: a bounded 1-D search finds it. Solving the
    block design (every evaluation x 2 runs + 1 columns) with lstsq instead took 5-20 s
    per family fit of 18 runs on a busy 2-core box (BLAS threads fighting over the
    cores); this takes a fraction of a second."""
    parts, num, den, n = [], 0.0, 0.0, 0
    for curve in curves:
        s1_all, s2_all = areas_of(curve, momentum)
        keep = curve.steps >= FIT_FROM * curve.max_steps
        x = curve.steps[keep]
        y, z = curve.val_loss[keep], -s2_all[x]
        basis = np.column_stack([np.ones(x.size), s1_all[x] ** (-alpha)])
        q = np.linalg.qr(basis)[0]
        ry, rz = y - q @ (q.T @ y), z - q @ (q.T @ z)
        num, den, n = num + float(rz @ ry), den + float(rz @ rz), n + x.size
        parts.append((basis, y, z, ry, rz))
    c = num / den if den > 1e-300 else 0.0
    if c >= 0 and all(np.all(np.linalg.lstsq(basis, y - c * z, rcond=None)[0] >= 0)
                      for basis, y, z, _, _ in parts):
        return c, float(sum(np.sum((ry - c * rz) ** 2) for _, _, _, ry, rz in parts)), n
    top = max(float(np.abs(z).max()) for _, _, z, _, _ in parts)
    if top == 0:
        return 0.0, sum(_solve(basis, y, np.zeros(2))[1] for basis, y, *_ in parts), n
    # No C worth a look drops the loss by more than twice its largest value.
    high = 2 * max(float(np.abs(y).max()) for _, y, *_ in parts) / top
    sums = _level_scale_sums([(basis, y, z) for basis, y, z, *_ in parts])
    res = optimize.minimize_scalar(lambda c: _bounded_rss(sums, c), bounds=(0.0, high),
                                   method="bounded", options={"xatol": 1e-9 * high})
    c = float(res.x) if res.fun < _bounded_rss(sums, 0.0) else 0.0
    return c, sum(_solve(basis, y - c * z, np.zeros(2))[1]
                  for basis, y, z, *_ in parts), n


def _level_scale_sums(parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> np.ndarray:
    """Per run (rows), the sums that give its best L0 and A for any C in closed form:
    n, sum p, sum p^2, sum y, sum z, sum p y, sum p z, sum y^2, sum y z, sum z^2 (p the
    power column, the target y - C z)."""
    rows = []
    for basis, y, z in parts:
        p = basis[:, 1]
        rows.append([y.size, p.sum(), p @ p, y.sum(), z.sum(), p @ y, p @ z, y @ y, y @ z,
                     z @ z])
    return np.array(rows, dtype=float)


def _bounded_rss(sums: np.ndarray, c: float) -> float:
    """The residual sum of squares of every run with its best L0, A >= 0 for this C
    (the least squares of ``_solve`` in closed form, all runs at once)."""
    n, sp, spp, sy, sz, spy, spz, syy, syz, szz = sums.T
    st, spt, stt = sy - c * sz, spy - c * spz, syy - 2 * c * syz + c * c * szz
    det = n * spp - sp * sp
    with np.errstate(divide="ignore", invalid="ignore"):
        l0 = (spp * st - sp * spt) / det
        a = (n * spt - sp * st) / det
        both = np.where((det > 1e-12 * n * spp) & (l0 >= 0) & (a >= 0),
                        stt - l0 * st - a * spt, np.inf)
        l0_only = np.maximum(st / n, 0)
        a_only = np.where(spp > 0, np.maximum(spt / spp, 0), 0.0)
    candidates = np.vstack([both, stt - 2 * l0_only * st + l0_only**2 * n,
                            stt - 2 * a_only * spt + a_only**2 * spp, stt])
    return float(np.maximum(candidates.min(axis=0), 0.0).sum())


def fit_family(curves: Sequence[Curve]) -> FamilyFit | None:
    """alpha, C and lambda fitted jointly on finished curves, each with its own L0 and A.

    For a given alpha and lambda the law is linear in every L0, A and C, so those are
    solved exactly (variable projection) and only alpha (a grid, then a bounded 1-D
    refinement) and lambda (``MOMENTA``) are searched. None without a usable curve.
    """
    curves = [c for c in curves if c.steps.size >= 3]
    if not curves:
        return None

    def rss(alpha: float, momentum: float) -> float:
        return _joint_solve(curves, alpha, momentum)[1]

    best: tuple[float, float, float] | None = None
    for momentum in MOMENTA:
        if any(areas_of(c, momentum)[0][c.steps].min() <= 0 for c in curves):
            return None  # an lr of zero up to an evaluation: nothing to fit a power of
        grid = [rss(a, momentum) for a in ALPHA_GRID]
        i = int(np.argmin(grid))
        lo, hi = ALPHA_GRID[max(i - 1, 0)], ALPHA_GRID[min(i + 1, ALPHA_GRID.size - 1)]
        res = optimize.minimize_scalar(lambda a, m=momentum: rss(a, m), bounds=(lo, hi),
                                       method="bounded", options={"xatol": 1e-4})
        alpha, value = (float(res.x), float(res.fun)) if res.fun < grid[i] else (
            float(ALPHA_GRID[i]), grid[i])
        if best is None or value < best[0]:
            best = (value, alpha, momentum)
    value, alpha, momentum = best
    c, value, n = _joint_solve(curves, alpha, momentum)
    dof = max(n - (2 * len(curves) + 1) - 2, 1)
    alpha = float(np.clip(alpha, *ALPHA_BOUNDS))
    return FamilyFit(alpha=alpha, c=c, momentum=momentum, n_runs=len(curves),
                     residual_std=math.sqrt(value / dof), fit_from=FIT_FROM)


def _level_scale(family: FamilyFit, curve: Curve, keep: np.ndarray
                 ) -> tuple[np.ndarray, float] | None:
    """L0 and A of the evaluations ``keep`` selects, with the family's alpha and C, and the
    residual sum of squares; None with under 2 of them."""
    s1_all, s2_all = areas_of(curve, family.momentum)
    x, y = curve.steps[keep], curve.val_loss[keep]
    if x.size < 2 or np.any(s1_all[x] <= 0):
        return None
    cols = np.column_stack([np.ones(x.size), s1_all[x] ** (-family.alpha)])
    return _solve(cols, y + family.c * s2_all[x], np.zeros(2))


def forecast_with(family: FamilyFit, curve: Curve, upto_step: int) -> float | None:
    """The final val loss of ``curve`` forecast from its evaluations up to ``upto_step``,
    with the family's shape constants (only L0 and A fitted); None with under 2 points."""
    keep = curve.steps <= upto_step
    later = keep & (curve.steps >= family.fit_from * curve.max_steps)
    if later.sum() >= 3:  # as forecast_final does: the steep start left out while it can be
        keep = later
    fitted = _level_scale(family, curve, keep)
    if fitted is None:
        return None
    (l0, a), _ = fitted
    s1_all, s2_all = areas_of(curve, family.momentum)
    end = curve.max_steps
    return float(loss_at(l0, a, family.alpha, family.c, s1_all[end], s2_all[end]))


def divergence(curve: Curve) -> str | None:
    """Why ``curve`` diverged (a non-finite evaluation, or a rise well above its lowest
    point), or None: the law only ever falls, so such a curve is not one of it."""
    if curve.non_finite_step is not None:
        return f"diverged: its val loss was not finite at step {curve.non_finite_step:,}"
    if curve.steps.size < 2:
        return None
    y = curve.val_loss
    low = int(np.argmin(y))
    rise = y[-1] - y[low]
    if rise > DIVERGED_RISE * (y[0] - y[low]) and rise > MIN_MISFIT * y[low]:
        return (f"diverged: its val loss rose from {y[low]:.3g} at step "
                f"{curve.steps[low]:,} to {y[-1]:.3g} at step {curve.steps[-1]:,}")
    return None


def misfit(family: FamilyFit, curve: Curve) -> float:
    """How far ``curve`` strays from the family's law with its own L0 and A fitted: the
    root mean square of its residuals over the mean loss (a share of its loss)."""
    keep = curve.steps >= family.fit_from * curve.max_steps
    fitted = _level_scale(family, curve, keep) if keep.sum() >= 3 else None
    if fitted is None:
        return 0.0  # too little to judge by
    y = curve.val_loss[keep]
    return math.sqrt(fitted[1] / y.size) / float(np.mean(np.abs(y)))


def far_worse(miss: float, others: Sequence[float]) -> bool:
    """Whether a curve that misses its law by ``miss`` fits far worse than curves that
    miss theirs by ``others``."""
    return bool(others) and miss >= MIN_MISFIT and miss > FAR_WORSE * float(np.median(others))


def leave_one_out_fits(curves: Sequence[Curve]) -> list[FamilyFit | None]:
    """For each curve, the family fitted on all the others (None where they have no fit)."""
    return [fit_family(list(curves[:i]) + list(curves[i + 1:])) for i in range(len(curves))]


@dataclass(frozen=True)
class Screening:
    """Which of a family's curves follow the law: ``kept`` (their indices), ``left_out``
    (index: why not), and each kept curve's miss of its law fitted on the other kept
    curves (``misfits``, by index; a lone curve has none)."""

    kept: list[int]
    left_out: dict[int, str]
    misfits: dict[int, float]


def screen(curves: Sequence[Curve], known: dict[int, str] | None = None) -> Screening:
    """Leave out the curves that do not follow the law: those in ``known`` (index: why, as
    the caller knows it: a run the divergence guard rolled back), those that diverged,
    then, one at a time and worst first, each that fits the law of the others far worse
    than the others fit theirs (worst first, for one bad curve bends the others' laws
    too and would make a good one look astray)."""
    left_out = dict(known or {})
    for i, curve in enumerate(curves):
        if i not in left_out and (why := divergence(curve)) is not None:
            left_out[i] = why
    kept = [i for i in range(len(curves)) if i not in left_out]
    misses: dict[int, float] = {}
    while len(kept) >= 2:
        fits = leave_one_out_fits([curves[i] for i in kept])
        misses = {i: misfit(fit, curves[i]) for i, fit in zip(kept, fits, strict=True)
                  if fit is not None}
        if not misses:
            break
        worst = max(misses, key=misses.get)
        others = [m for i, m in misses.items() if i != worst]
        if not far_worse(misses[worst], others):
            break
        left_out[worst] = (f"fits the law of its relatives far worse than they do (off by "
                           f"{misses[worst]:.1%} of its loss, they by "
                           f"{float(np.median(others)):.1%})")
        kept.remove(worst)
        misses = {}  # measured on a law the left-out curve helped to fit
    return Screening(kept=kept, left_out=dict(sorted(left_out.items())),
                     misfits={i: m for i, m in misses.items() if i in kept})


def band_share(fraction: float) -> float:
    """The share of steps a band is calibrated at: ``fraction`` to a twentieth (a live
    run's band moves in visible steps, and each new share costs a refit per relative)."""
    return min(max(round(fraction * 20) / 20, 0.05), 1.0)


def leave_one_out_errors(curves: Sequence[Curve], fraction: float,
                         fits: Sequence[FamilyFit | None] | None = None) -> list[float]:
    """Relative errors (forecast / actual - 1) of each finished curve's final val loss,
    forecast from ``fraction`` of its steps with the constants fitted on the others
    (``fits``: ``leave_one_out_fits(curves)``, when the caller kept them)."""
    if fits is None:
        fits = leave_one_out_fits(curves)
    errors = []
    for curve, family in zip(curves, fits, strict=True):
        if family is None or curve.final is None:
            continue
        predicted = forecast_with(family, curve, curve.upto(fraction))
        if predicted is not None and math.isfinite(predicted):
            errors.append(predicted / curve.final - 1)
    return errors


def fit_shapes(shapes: Sequence[Sequence[Curve]]) -> FamilyFit | None:
    """The law's shape constants for a run of a shape none of whose runs has finished,
    from the finished runs of other shapes (each inner sequence one shape's family).

    Assumed, not fitted: alpha, C and lambda are the same for every model shape with one
    corpus, tokenizer, batch and optimizer, so they are fitted jointly on all those runs,
    each with its own L0 and A (which carry the model's size). The lr needs no scaling:
    the areas S1 and S2 are in the lr's own units, so C already carries across peak lrs.
    A trend of alpha with size is not fitted: on the bench's three CPU shapes alpha
    followed depth (0.29, 0.31, 0.44 for 1, 2 and 4 layers), not the parameter count, and
    three points cannot tell such trends apart (bench/first_run_forecast.py)."""
    return fit_family([curve for shape in shapes for curve in shape])


def leave_one_shape_out_errors(shapes: Sequence[Sequence[Curve]], fraction: float
                               ) -> list[float]:
    """Relative errors (forecast / actual - 1) of each finished curve's final val loss,
    forecast from ``fraction`` of its steps with ``fit_shapes`` of the other shapes: how
    far a shape's first run misses when it borrows the others' law. Empty with fewer than
    two shapes (misses within one shape say nothing of another's)."""
    if len(shapes) < 2:
        return []
    errors = []
    for i, shape in enumerate(shapes):
        family = fit_shapes(list(shapes[:i]) + list(shapes[i + 1:]))
        if family is None:
            continue
        for curve in shape:
            if curve.final is None:
                continue
            predicted = forecast_with(family, curve, curve.upto(fraction))
            if predicted is not None and math.isfinite(predicted):
                errors.append(predicted / curve.final - 1)
    return errors


def band_half_width(errors: Sequence[float], level: float) -> float | None:
    """The relative half-width of a ``level`` band from past relative errors; None without
    any.

    Split conformal where there are enough errors for the level (the ceil((n+1) level)-th
    smallest absolute error covers a new run with probability at least ``level`` when the
    runs are exchangeable); with fewer, a Student-t interval on their root mean square
    (n degrees of freedom: the errors are taken to centre on zero), wide when n is small,
    but never wider than ``MAX_BAND_OVER_MISSES`` times the largest error.
    """
    e = np.abs(np.asarray(errors, dtype=float))
    n = e.size
    if n == 0:
        return None
    rank = math.ceil((n + 1) * level)
    if rank <= n:
        return float(np.sort(e)[rank - 1])
    t_based = stats.t.ppf(0.5 + level / 2, n) * math.sqrt(np.mean(e**2))
    return float(min(t_based, MAX_BAND_OVER_MISSES * e.max()))
