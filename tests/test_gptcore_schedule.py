"""Learning-rate schedules at known steps."""

import math

import pytest

from gptcore.config import TrainConfig
from gptcore.schedule import lr_array, lr_at, lr_curve, wsd_decay_start


def cfg(**kw):
    base = dict(lr=1.0, min_lr=0.1, max_steps=110, warmup_steps=10)
    base.update(kw)
    return TrainConfig(**base)


def test_warmup_is_linear_up_to_lr():
    c = cfg(schedule="constant")
    assert lr_at(0, c) == pytest.approx(0.1)
    assert lr_at(4, c) == pytest.approx(0.5)
    assert lr_at(9, c) == pytest.approx(1.0)


def test_constant_stays_at_lr():
    c = cfg(schedule="constant")
    assert [lr_at(s, c) for s in (10, 50, 109)] == [1.0, 1.0, 1.0]


def test_step_decay_multiplies_by_gamma_every_step_size():
    c = cfg(schedule="step", step_size=20, gamma=0.5)
    assert lr_at(10, c) == 1.0
    assert lr_at(29, c) == 1.0
    assert lr_at(30, c) == 0.5
    assert lr_at(50, c) == 0.25


def test_cosine_goes_from_lr_through_midpoint_to_min_lr():
    c = cfg(schedule="cosine")
    assert lr_at(10, c) == pytest.approx(1.0)
    assert lr_at(60, c) == pytest.approx(0.55)  # halfway: min + (lr - min) / 2
    assert lr_at(110, c) == pytest.approx(0.1)
    assert lr_at(35, c) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 4)))


def test_linear_decays_in_a_straight_line():
    c = cfg(schedule="linear")
    assert lr_at(10, c) == pytest.approx(1.0)
    assert lr_at(60, c) == pytest.approx(0.55)
    assert lr_at(85, c) == pytest.approx(0.325)


def test_wsd_holds_lr_then_decays_linearly_over_the_last_fraction():
    c = cfg(schedule="wsd", max_steps=110, decay_fraction=0.2)  # decays over steps 88..110
    assert wsd_decay_start(c) == 88
    assert [lr_at(s, c) for s in (10, 50, 87, 88)] == pytest.approx([1.0] * 4)
    assert lr_at(99, c) == pytest.approx(0.55)  # halfway through the decay
    assert lr_at(110, c) == pytest.approx(0.1)
    assert lr_at(109, c) == pytest.approx(0.1 + 0.9 / 22)


def test_wsd_decay_never_starts_inside_the_warmup():
    c = cfg(schedule="wsd", max_steps=110, warmup_steps=10, decay_fraction=1.0)
    assert wsd_decay_start(c) == 10
    assert lr_at(9, c) == pytest.approx(1.0)
    assert lr_at(60, c) == pytest.approx(0.55)  # then the same line as "linear"


def test_no_warmup_starts_at_lr():
    assert lr_at(0, cfg(schedule="cosine", warmup_steps=0)) == pytest.approx(1.0)


def test_lr_curve_covers_the_whole_run():
    steps, lrs = lr_curve(cfg(schedule="cosine", max_steps=10_000), points=100)
    assert steps[0] == 0 and steps[-1] == 9_999
    assert len(steps) <= 102
    assert lrs[-1] == pytest.approx(0.1, abs=1e-3)


@pytest.mark.parametrize("schedule, decay_fraction", [
    ("constant", 0.2), ("step", 0.2), ("cosine", 0.2), ("linear", 0.2),
    ("wsd", 0.2), ("wsd", 1.0), ("wsd", 0.001)])
@pytest.mark.parametrize("warmup", [0, 1, 7, 300])
def test_lr_array_is_lr_at_at_every_step(schedule, decay_fraction, warmup):
    cfg = TrainConfig(max_steps=250, warmup_steps=warmup, schedule=schedule, lr=3e-3,
                      min_lr=3e-4, step_size=40, gamma=0.5, decay_fraction=decay_fraction)
    expected = [lr_at(s, cfg) for s in range(cfg.max_steps)]
    got = lr_array(cfg)
    assert got.shape == (cfg.max_steps,)
    assert got.tolist() == pytest.approx(expected, rel=1e-12, abs=0)
