"""Loss forecasts on synthetic curves drawn from the law with known constants and noise."""

import numpy as np
import pytest

from analysis.forecast import (
    MIN_POINTS,
    UNCALIBRATED_MISS,
    eta_to_loss,
    forecast_final,
    uncalibrated_half_width,
)
from analysis.law import annealing_areas

MAX_STEPS = 300
EVAL_EVERY = 10
TRUE = {"L0": 1.8, "A": 0.2, "alpha": 0.5}  # C varies per test; areas in raw lr units


def schedule(kind: str, warmup: int = 20, peak: float = 3e-3, floor: float = 3e-4) -> np.ndarray:
    """The lr of each step, shaped like gptcore.schedule.lr_at's (kept here so the test
    checks the law, not the schedule code)."""
    s = np.arange(MAX_STEPS)
    progress = np.clip((s - warmup) / (MAX_STEPS - warmup), 0, 1)
    after = {
        "constant": np.full(MAX_STEPS, peak),
        "cosine": floor + 0.5 * (1 + np.cos(np.pi * progress)) * (peak - floor),
        "linear": floor + (1 - progress) * (peak - floor),
        "step": peak * 0.5 ** ((s - warmup).clip(0) // 150),
        # warmup-stable-decay: peak until the last 20% (60 steps), then linear to the floor
        "wsd": floor + (1 - np.clip((s - 240) / 60, 0, 1)) * (peak - floor),
    }[kind]
    return np.where(s < warmup, peak * (s + 1) / warmup, after)


def curve(lrs: np.ndarray, c: float, noise: float, seed: int = 0):
    """Evaluations every EVAL_EVERY steps of the law, plus Gaussian evaluation noise."""
    s1, s2 = annealing_areas(lrs)
    steps = np.arange(0, MAX_STEPS + 1, EVAL_EVERY)
    with np.errstate(divide="ignore"):
        truth = TRUE["L0"] + TRUE["A"] * s1[steps] ** -TRUE["alpha"] - c * s2[steps]
    truth[0] = 5.5  # step 0 has seen no lr: the law does not hold there (and is never fitted)
    rng = np.random.default_rng(seed)
    return steps, truth + rng.normal(0, noise, steps.size), truth[-1]


# ---- the areas ---------------------------------------------------------------------------
def test_constant_schedule_has_forward_area_only():
    s1, s2 = annealing_areas(np.full(50, 2e-3))
    assert s1 == pytest.approx(2e-3 * np.arange(51))
    assert not s2.any()


def test_annealing_area_follows_the_paper_recursion():
    lrs = schedule("cosine")
    s1, s2 = annealing_areas(lrs, momentum=0.99)
    eta = lrs
    m = total = 0.0
    expected = [0.0]
    for i in range(len(eta)):
        drop = eta[i - 1] - eta[i] if i > 20 else 0.0  # warmup increases are not annealing
        m = 0.99 * m + drop
        total += m
        expected.append(total)
    assert s2 == pytest.approx(expected, abs=1e-9)
    assert s1[-1] == pytest.approx(eta.sum())


def test_one_lr_drop_keeps_lowering_the_loss_with_momentum():
    lrs = np.array([1.0] * 10 + [0.5] * 10)
    _, s2 = annealing_areas(lrs, momentum=0.9)
    # m_i = 0.5 * 0.9**(i - 10) from the drop at step 10 on; S2 sums them.
    expected = np.concatenate([np.zeros(11), np.cumsum(0.5 * 0.9 ** np.arange(10))])
    assert s2 == pytest.approx(expected)


# ---- forecasts -----------------------------------------------------------------------------
def test_constant_lr_forecast_from_40_percent_recovers_the_final_loss():
    lrs = schedule("constant")
    steps, loss, truth = curve(lrs, c=0.0, noise=0.01)
    f = forecast_final(steps, loss, lrs, MAX_STEPS, upto_step=int(0.4 * MAX_STEPS))
    assert f is not None and f.note is None
    assert f.upto_step == 120 and f.max_steps == MAX_STEPS and f.n_points == 12
    assert f.predicted_final == pytest.approx(truth, abs=0.02)
    assert f.low <= truth <= f.high
    assert f.params["alpha"] == pytest.approx(TRUE["alpha"], abs=0.15)
    assert f.params["C"] == 0.0


def test_band_holds_one_final_evaluation_about_as_often_as_its_level_says():
    # The band claims a 90% chance of holding one evaluation of the final loss (the truth
    # plus evaluation noise): it should, and no more, or it is wider than it need be.
    lrs = schedule("constant")
    covered, halves, misses = 0, [], []
    for seed in range(40):
        steps, loss, truth = curve(lrs, c=0.0, noise=0.03, seed=seed)
        f = forecast_final(steps, loss, lrs, MAX_STEPS, upto_step=120)
        evaluation = truth + np.random.default_rng(1000 + seed).normal(0, 0.03)
        covered += f.low <= evaluation <= f.high
        halves.append(f.half_width)
        misses.append(abs(f.predicted_final - evaluation))
    assert f.level == 0.9
    assert 31 <= covered <= 39  # 36 expected; 40 of 40 is a band wider than its level
    # As wide as the misses make a 90% band (their 90th percentile), give or take.
    assert 0.7 < np.median(halves) / np.quantile(misses, 0.9) < 1.5


def test_cosine_run_with_known_annealing_beats_a_plain_power_law_from_40_percent():
    c = 0.5
    # The paper's recipe: C from one finished run (here linear decay) of the same setup...
    ref_lrs = schedule("linear")
    ref_steps, ref_loss, _ = curve(ref_lrs, c, noise=0.01, seed=1)
    reference = forecast_final(ref_steps, ref_loss, ref_lrs, MAX_STEPS)
    assert reference.params["C"] == pytest.approx(c, rel=0.25)
    # ...forecasts a cosine run before its annealing shows.
    lrs = schedule("cosine")
    steps, loss, truth = curve(lrs, c, noise=0.01, seed=2)
    aware = forecast_final(steps, loss, lrs, MAX_STEPS, upto_step=120,
                           annealing_c=reference.params["C"])
    plain = forecast_final(steps, loss, np.ones(MAX_STEPS), MAX_STEPS, upto_step=120)
    assert aware.predicted_final == pytest.approx(truth, abs=0.04)
    assert aware.low <= truth <= aware.high
    assert abs(aware.predicted_final - truth) < abs(plain.predicted_final - truth) / 2


def test_cosine_run_fits_its_own_annealing_once_it_shows():
    c = 0.5
    lrs = schedule("cosine")
    steps, loss, truth = curve(lrs, c, noise=0.01, seed=3)
    aware = forecast_final(steps, loss, lrs, MAX_STEPS, upto_step=240)
    plain = forecast_final(steps, loss, np.ones(MAX_STEPS), MAX_STEPS, upto_step=240)
    assert aware.note is None and aware.params["C"] > 0
    assert aware.predicted_final == pytest.approx(truth, abs=0.03)
    assert aware.low <= truth <= aware.high
    assert abs(aware.predicted_final - truth) < abs(plain.predicted_final - truth)


def test_early_in_a_decay_c_is_held_at_zero_and_the_note_says_so():
    lrs = schedule("cosine")
    steps, loss, truth = curve(lrs, 0.5, noise=0.01, seed=4)
    f = forecast_final(steps, loss, lrs, MAX_STEPS, upto_step=120)
    assert f.params["C"] == 0.0
    assert "do not show the lr decay" in f.note
    assert f.predicted_final > truth  # the drop still to come is left out


def test_a_run_evaluated_to_its_end_has_no_note_whatever_its_fit():
    # A cosine run whose decay brought no visible drop: C is not fitted, but no schedule is
    # left whose drop the forecast could leave out.
    lrs = schedule("cosine")
    steps, loss, _ = curve(lrs, 0.0, noise=0.01, seed=4)
    f = forecast_final(steps, loss, lrs, MAX_STEPS)
    assert f.upto_step == MAX_STEPS and f.params["C"] == 0.0
    assert f.note is None


def test_step_schedule_before_its_first_drop_is_flagged():
    lrs = schedule("step")  # first drop at step 170
    steps, loss, _ = curve(lrs, 0.5, noise=0.01, seed=5)
    f = forecast_final(steps, loss, lrs, MAX_STEPS, upto_step=160)
    assert f.params["C"] == 0.0 and f.note is not None


def test_wsd_run_in_its_stable_phase_is_forecast_with_the_decay_to_come():
    c = 0.5
    lrs = schedule("wsd")
    steps, loss, truth = curve(lrs, c, noise=0.01, seed=6)
    # Before the decay: a plain power law, and the note says the drop to come is left out.
    alone = forecast_final(steps, loss, lrs, MAX_STEPS, upto_step=200)
    assert alone.params["C"] == 0.0 and "do not show the lr decay" in alone.note
    assert alone.predicted_final > truth
    # With C from a finished relative (linear decay), the coming drop is forecast.
    ref_lrs = schedule("linear")
    ref_steps, ref_loss, _ = curve(ref_lrs, c, noise=0.01, seed=7)
    reference = forecast_final(ref_steps, ref_loss, ref_lrs, MAX_STEPS)
    aware = forecast_final(steps, loss, lrs, MAX_STEPS, upto_step=200,
                           annealing_c=reference.params["C"])
    assert aware.predicted_final == pytest.approx(truth, abs=0.04)
    assert aware.low <= truth <= aware.high
    assert abs(aware.predicted_final - truth) < abs(alone.predicted_final - truth) / 2


def test_wsd_run_fits_its_own_annealing_once_the_decay_shows():
    lrs = schedule("wsd")
    steps, loss, truth = curve(lrs, 0.5, noise=0.01, seed=8)
    f = forecast_final(steps, loss, lrs, MAX_STEPS, upto_step=290)
    assert f.note is None and f.params["C"] > 0
    assert f.predicted_final == pytest.approx(truth, abs=0.03)
    assert f.low <= truth <= f.high


def test_a_step_evaluated_twice_counts_once_with_its_later_value():
    lrs = schedule("constant")
    steps, loss, _ = curve(lrs, 0.0, noise=0.01)
    f = forecast_final(steps, loss, lrs, MAX_STEPS, upto_step=120)
    # A spike at step 30, rolled back and evaluated again: the first value is superseded.
    steps_rb = np.concatenate([steps[:4], [30], steps[4:]])
    loss_rb = np.concatenate([loss[:3], [9.0], [loss[3]], loss[4:]])
    g = forecast_final(steps_rb, loss_rb, lrs, MAX_STEPS, upto_step=120)
    assert g.n_points == f.n_points
    assert g.predicted_final == pytest.approx(f.predicted_final)


def test_too_few_evaluations_give_no_forecast():
    lrs = schedule("cosine")
    steps, loss, _ = curve(lrs, 0.0, noise=0.01)
    # Step 0 never counts (no lr seen yet), nor do non-finite values.
    assert forecast_final(steps, loss, lrs, MAX_STEPS, upto_step=10 * (MIN_POINTS - 1)) is None
    assert forecast_final(steps, loss, lrs, MAX_STEPS, upto_step=10 * MIN_POINTS) is not None
    nan_loss = loss.copy()
    nan_loss[3] = np.nan
    assert forecast_final(steps, nan_loss, lrs, MAX_STEPS, upto_step=10 * MIN_POINTS) is None
    assert forecast_final([], [], lrs, MAX_STEPS) is None


def test_bad_inputs_are_refused_with_a_reason():
    with pytest.raises(ValueError, match="give the lr of every step"):
        forecast_final([10, 20], [2.0, 1.9], [1e-3] * 10, MAX_STEPS)
    with pytest.raises(ValueError, match="differ in length"):
        forecast_final([10, 20], [2.0], [1e-3] * MAX_STEPS, MAX_STEPS)
    with pytest.raises(ValueError, match="annealing_c must be 0 or more"):
        forecast_final([10, 20], [2.0, 1.9], [1e-3] * MAX_STEPS, MAX_STEPS, annealing_c=-1.0)


def test_curve_continues_the_fit_with_a_band_that_widens():
    lrs = schedule("constant")
    steps, loss, _ = curve(lrs, 0.0, noise=0.02)
    f = forecast_final(steps, loss, lrs, MAX_STEPS, upto_step=120)
    ahead = f.curve([120, 200, 300, 400])
    assert list(ahead.steps) == [120, 200, 300, 300]  # clipped to max_steps
    assert np.all(np.diff(ahead.mean[:3]) < 0)
    width = ahead.high - ahead.low
    assert width[0] < width[1] < width[2]
    assert ahead.mean[2] == pytest.approx(f.predicted_final)


def test_a_band_wider_than_the_forecast_stops_at_zero_loss():
    # Relatives far shorter than the run can miss by more than the forecast itself; the band
    # says so above it, but a loss never goes below zero (it read "-0.05–2.48" on Live).
    lrs = schedule("constant")
    steps, loss, _ = curve(lrs, 0.0, noise=0.02)
    f = forecast_final(steps, loss, lrs, MAX_STEPS, upto_step=120).with_band(1.5, 2)
    assert f.low == 0.0
    assert f.high == pytest.approx(2.5 * f.predicted_final)
    assert f.half_width == pytest.approx(1.5 * f.predicted_final)
    ahead = f.curve([120, 200, 300])
    assert np.all(ahead.low >= 0.0) and ahead.low[-1] == 0.0
    assert ahead.high[-1] == pytest.approx(f.high)


def test_eta_to_loss_finds_the_first_step_at_the_target():
    lrs = schedule("constant")
    steps, loss, truth = curve(lrs, 0.0, noise=0.005)
    f = forecast_final(steps, loss, lrs, MAX_STEPS, upto_step=120)
    mean = f.curve(np.arange(1, MAX_STEPS + 1)).mean
    target = float(mean[199])  # the fitted curve at step 200
    assert eta_to_loss(f, target) == 200
    assert eta_to_loss(f, truth - 0.5) is None  # never within this run
    assert eta_to_loss(f, 1e3) == 1  # already below it after the first step


def test_precomputed_areas_give_the_same_forecast():
    lrs = [1e-3 * (0.5 + 0.5 * np.cos(np.pi * s / 400)) for s in range(400)]
    steps = list(range(20, 401, 20))
    loss = [2.0 + 0.3 * (1e-3 * s) ** -0.5 + 0.01 * np.sin(s) for s in steps]
    plain = forecast_final(steps, loss, lrs, 400, upto_step=240)
    given = forecast_final(steps, loss, lrs, 400, upto_step=240,
                           areas=annealing_areas(np.asarray(lrs)))
    assert (given.predicted_final, given.low, given.high) == (
        plain.predicted_final, plain.low, plain.high)


def test_the_rule_band_is_at_least_the_miss_rule_and_keeps_a_wider_fit_band():
    # Noise-free points: the fit's own band is near zero, yet a forecast alone missed real
    # runs by up to 13% from 40% of their steps (bench/first_run_forecast.py).
    lrs = schedule("constant")
    steps, loss, _ = curve(lrs, 0.0, noise=0.0)
    f = forecast_final(steps, loss, lrs, MAX_STEPS, upto_step=120)
    assert f.half_width < 0.01 * f.predicted_final and f.band_source == "fit"
    wide = f.with_rule_band()
    rule = UNCALIBRATED_MISS * np.sqrt(1 - 120 / MAX_STEPS)
    assert uncalibrated_half_width(120, MAX_STEPS) == pytest.approx(rule)
    assert wide.half_width == pytest.approx(rule * f.predicted_final)
    assert wide.band_source == "rule" and wide.predicted_final == f.predicted_final
    assert wide.curve([MAX_STEPS]).high[0] == pytest.approx(wide.high)
    # Evaluated to its end, nothing is left to extrapolate: the rule adds nothing.
    end = forecast_final(steps, loss, lrs, MAX_STEPS)
    assert uncalibrated_half_width(MAX_STEPS, MAX_STEPS) == 0.0
    assert end.with_rule_band() is end
    # A fit band already wider than the rule is kept as it is.
    noisy_steps, noisy, _ = curve(lrs, 0.0, noise=0.3)
    noisy_fit = forecast_final(noisy_steps, noisy, lrs, MAX_STEPS, upto_step=280)
    rule = uncalibrated_half_width(280, MAX_STEPS) * noisy_fit.predicted_final
    assert noisy_fit.half_width > rule
    assert noisy_fit.with_rule_band() is noisy_fit
