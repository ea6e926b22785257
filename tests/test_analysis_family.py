"""analysis.family: the law's shape fitted on a family, and bands from its own misses."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from analysis.family import (
    FIT_FROM,
    Curve,
    band_half_width,
    divergence,
    fit_family,
    fit_shapes,
    forecast_with,
    leave_one_out_errors,
    leave_one_shape_out_errors,
    screen,
)
from analysis.forecast import forecast_final
from analysis.law import annealing_areas
from gptcore.config import TrainConfig
from gptcore.schedule import lr_array

ALPHA, C, MOMENTUM = 0.4, 0.3, 0.99
STEPS, EVERY = 400, 10
# (schedule, peak lr, L0, A): one family, lr over 10x, every schedule.
MEMBERS = [("constant", 3e-3, 2.0, 0.40), ("cosine", 1e-3, 2.1, 0.35),
           ("cosine", 1e-2, 1.9, 0.50), ("linear", 3e-3, 2.05, 0.45),
           ("wsd", 5e-3, 1.95, 0.40), ("step", 2e-3, 2.0, 0.42)]


def lrs(schedule: str, lr: float) -> np.ndarray:
    return lr_array(TrainConfig(max_steps=STEPS, lr=lr, min_lr=lr / 10, schedule=schedule,
                                warmup_steps=20, step_size=150))


def law_curve(schedule, lr, l0, a, *, alpha=ALPHA, noise=0.0, rng=None) -> Curve:
    eta = lrs(schedule, lr)
    s1, s2 = annealing_areas(eta, MOMENTUM)
    steps = np.arange(EVERY, STEPS + 1, EVERY)
    values = l0 + a * s1[steps] ** (-alpha) - C * s2[steps]
    if noise:
        values = values + noise * rng.normal(size=steps.size)
    return Curve.of(steps, values, eta, STEPS)


def test_the_joint_fit_recovers_the_family_constants():
    fit = fit_family([law_curve(*m) for m in MEMBERS])
    assert fit.n_runs == len(MEMBERS) and fit.momentum == MOMENTUM
    assert fit.alpha == pytest.approx(ALPHA, rel=0.02)
    assert fit.c == pytest.approx(C, rel=0.05)


def test_a_new_members_decay_is_forecast_from_a_quarter_of_its_steps():
    family = fit_family([law_curve(*m) for m in MEMBERS])
    new = law_curve("cosine", 4e-3, 2.02, 0.38)  # an lr and level no relative has
    actual = new.final
    upto = STEPS // 4
    calibrated = forecast_final(new.steps, new.val_loss, new.lr_per_step, STEPS,
                                upto_step=upto, family=family,
                                areas=annealing_areas(new.lr_per_step, family.momentum))
    assert calibrated.calibrated and calibrated.family_size == len(MEMBERS)
    assert calibrated.predicted_final == pytest.approx(actual, rel=0.003)
    assert forecast_with(family, new, upto) == pytest.approx(calibrated.predicted_final)
    # Alone, from the same quarter, the run has not shown its decay: it is forecast high.
    alone = forecast_final(new.steps, new.val_loss, new.lr_per_step, STEPS, upto_step=upto)
    assert not alone.calibrated and alone.predicted_final > actual * 1.01


def test_the_band_from_relatives_covers_held_out_runs_near_its_level():
    rng = np.random.default_rng(7)
    covered, halves, misses = [], [], []
    for _ in range(4):
        # Each run strays from the family's law a little (its own exponent) and is noisy, so
        # forecasts miss by amounts the band must learn from the relatives.
        members = [law_curve(s, lr * rng.uniform(0.7, 1.4), l0 + rng.normal(0, 0.05), a,
                             alpha=ALPHA * rng.uniform(0.85, 1.15), noise=0.004, rng=rng)
                   for s, lr, l0, a in MEMBERS + MEMBERS[:2]]
        errors = leave_one_out_errors(members, 0.4)
        assert len(errors) == len(members)
        for held_out, error in enumerate(errors):
            half = band_half_width(errors[:held_out] + errors[held_out + 1:], 0.9)
            covered.append(abs(error) <= half)
            halves.append(half)
            misses.append(abs(error))
    # About 90% of 32, from both sides: all 32 would be a band wider than its level.
    assert 0.75 <= np.mean(covered) <= 0.97, np.mean(covered)
    # ... as wide as the misses make a 90% band (their 90th percentile), give or take.
    assert 0.6 < np.median(halves) / np.quantile(misses, 0.9) < 1.6


def test_the_band_is_split_conformal_with_enough_errors_and_t_based_with_few():
    errors = [0.01 * k for k in range(1, 20)]  # 19 errors: rank ceil(20 * 0.9) = 18
    assert band_half_width(errors, 0.9) == pytest.approx(0.18)
    assert band_half_width([-0.02, 0.01, 0.02], 0.9) > 0.02  # widened for having three
    assert band_half_width([], 0.9) is None


def test_a_family_without_a_usable_curve_has_no_fit():
    assert fit_family([]) is None
    short = Curve.of([10, 20], [3.0, 2.9], lrs("constant", 1e-3), STEPS)
    assert fit_family([short]) is None


def astray(kind: str) -> Curve:
    """A run of the family at lr 1.0: ``stuck`` falls a little and stays high (it learns
    nothing more), ``rising`` falls, then climbs (it diverged), ``nan`` ends in nan."""
    steps = np.arange(EVERY, STEPS + 1, EVERY)
    values = {"stuck": 6.0 + 1.5 * np.exp(-steps / 30.0),
              "rising": 5.0 + 2.0 * np.exp(-steps / 20.0) + 0.004 * steps,
              "nan": np.where(steps < 200, 5.0 + 2.0 * np.exp(-steps / 20.0), np.nan)}[kind]
    return Curve.of(steps, values, lrs("cosine", 1.0), STEPS)


@pytest.mark.parametrize(("kind", "why"), [
    ("stuck", "fits the law of its relatives far worse than they do (off by 117.5% of its loss"),
    ("rising", "diverged: its val loss rose from 5.34 at step 60 to 6.6 at step 400"),
    ("nan", "diverged: its val loss was not finite at step 200"),
])
def test_a_relative_off_the_law_is_left_out_of_the_family_with_why(kind, why):
    healthy = [law_curve(*m) for m in MEMBERS[:3]]
    family = [healthy[0], astray(kind), *healthy[1:]]
    screening = screen(family)
    assert screening.kept == [0, 2, 3]
    assert list(screening.left_out) == [1] and screening.left_out[1].startswith(why)
    # Kept, the stuck run forces C to 0 and takes every member's band to about ±100%.
    if kind == "stuck":
        assert fit_family(family).c == 0.0
        assert band_half_width(leave_one_out_errors(family, 0.4), 0.9) > 0.5
    kept = [family[i] for i in screening.kept]
    assert fit_family(kept).c == pytest.approx(C, rel=0.01)
    assert band_half_width(leave_one_out_errors(kept, 0.4), 0.9) < 0.01


def test_what_the_caller_knows_is_left_out_too_and_healthy_curves_are_kept():
    members = [law_curve(*m) for m in MEMBERS]
    screening = screen(members, {4: "rolled back by the divergence guard at step 120"})
    assert screening.kept == [0, 1, 2, 3, 5]
    assert screening.left_out == {4: "rolled back by the divergence guard at step 120"}
    assert all(divergence(m) is None for m in members)


def test_a_forecast_is_never_negative():
    # The stuck lr-1.0 run forecast with its healthy relatives' C: its annealing area is
    # ~300 times theirs, and L0 + A S1^-alpha - C S2 came out at -16 (-23.84 on a real one).
    family = fit_family([law_curve(*m) for m in MEMBERS[:3]])
    stuck = astray("stuck")
    assert forecast_with(family, stuck, STEPS // 2) == 0.0
    forecast = forecast_final(stuck.steps, stuck.val_loss, stuck.lr_per_step, STEPS,
                              upto_step=STEPS // 2, family=family,
                              areas=annealing_areas(stuck.lr_per_step, family.momentum))
    assert forecast.predicted_final == 0.0 and forecast.low == 0.0 and forecast.high > 0
    ahead = forecast.curve(np.arange(STEPS // 2, STEPS + 1))
    assert ahead.mean.min() == 0.0 and ahead.low.min() == 0.0


def test_a_band_from_few_misses_is_never_wider_than_twice_the_largest():
    # One miss of 1%: a Student-t with one degree of freedom made it ±6.3%.
    assert band_half_width([0.01], 0.9) == pytest.approx(0.02)
    assert band_half_width([0.01, -0.03, 0.02], 0.9) <= 0.06


def test_the_family_does_not_import_the_forecast():
    # They imported each other; the law both fit lives in analysis.law.
    code = "import sys, analysis.family; print('analysis.forecast' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], cwd=Path(__file__).parent.parent,
                         capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False"


def test_a_new_shape_borrows_the_law_of_the_other_shapes():
    # Three shapes on one law, each at its own levels and scales (what size changes).
    shapes = [[law_curve(sched, lr, l0 + shift, a * scale) for sched, lr, l0, a in MEMBERS[:3]]
              for shift, scale in ((0.3, 1.3), (0.0, 1.0), (-0.2, 0.8))]
    fit = fit_shapes(shapes[1:])
    assert fit.n_runs == 6 and fit.alpha == pytest.approx(ALPHA, rel=0.02)
    assert fit.c == pytest.approx(C, rel=0.05)
    first = shapes[0][1]  # cosine 1e-3: its decay is still to come at 40%
    assert forecast_with(fit, first, int(0.4 * STEPS)) == pytest.approx(first.final, rel=0.003)
    errors = leave_one_shape_out_errors(shapes, 0.4)
    assert len(errors) == 9 and max(map(abs, errors)) < 0.003
    assert leave_one_shape_out_errors(shapes[:1], 0.4) == []  # no other shape to miss


def test_the_joint_fit_where_a_bound_binds_is_the_block_designs_bounded_fit():
    # Curves whose loss rises as the lr decays want C < 0; held at 0 or more, the fit by
    # projections and a 1-D search in C must match the bounded solve of the whole design.
    from analysis.family import _joint_solve, _solve

    curves = [law_curve(*m, alpha=ALPHA) for m in MEMBERS]
    risen = [Curve.of(c.steps, c.val_loss + 2 * C * areas_of_curve(c), c.lr_per_step, STEPS)
             for c in curves]
    for alpha in (0.1, ALPHA, 1.5):
        c, rss, n = _joint_solve(risen, alpha, MOMENTUM)
        cols, y = block_design(risen, alpha)
        coef, expected = _solve(cols, y, np.zeros(cols.shape[1]))
        assert c == pytest.approx(coef[-1], abs=1e-6) and n == y.size
        assert rss == pytest.approx(expected, rel=1e-6)
    assert _joint_solve(risen, ALPHA, MOMENTUM)[0] == 0.0  # the bound did bind


def areas_of_curve(curve: Curve) -> np.ndarray:
    return annealing_areas(curve.lr_per_step, MOMENTUM)[1][curve.steps]


def block_design(curves: list[Curve], alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """The joint fit as one linear problem. Rows: every evaluation from FIT_FROM on;
    columns: L0 per run, A per run, then C."""
    k = len(curves)
    blocks, ys = [], []
    for i, curve in enumerate(curves):
        s1, s2 = annealing_areas(curve.lr_per_step, MOMENTUM)
        x = curve.steps[curve.steps >= FIT_FROM * STEPS]
        block = np.zeros((x.size, 2 * k + 1))
        block[:, i], block[:, k + i], block[:, 2 * k] = 1.0, s1[x] ** (-alpha), -s2[x]
        blocks.append(block)
        ys.append(curve.val_loss[curve.steps >= FIT_FROM * STEPS])
    return np.vstack(blocks), np.concatenate(ys)
