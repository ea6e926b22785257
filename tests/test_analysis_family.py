"""analysis.family: the law's shape fitted on a family, and bands from its own misses."""

import numpy as np
import pytest

from analysis.family import (
    Curve,
    band_half_width,
    fit_family,
    forecast_with,
    leave_one_out_errors,
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
    covered = []
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
    coverage = np.mean(covered)
    assert 0.8 <= coverage <= 1.0, coverage
    # ... and the band is not covering by being useless: narrower than 15% of the loss.
    assert band_half_width(errors, 0.9) < 0.15


def test_the_band_is_split_conformal_with_enough_errors_and_t_based_with_few():
    errors = [0.01 * k for k in range(1, 20)]  # 19 errors: rank ceil(20 * 0.9) = 18
    assert band_half_width(errors, 0.9) == pytest.approx(0.18)
    assert band_half_width([-0.02, 0.01, 0.02], 0.9) > 0.02  # widened for having three
    assert band_half_width([], 0.9) is None


def test_a_family_without_a_usable_curve_has_no_fit():
    assert fit_family([]) is None
    short = Curve.of([10, 20], [3.0, 2.9], lrs("constant", 1e-3), STEPS)
    assert fit_family([short]) is None
