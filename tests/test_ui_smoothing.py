import numpy as np
import pandas as pd
import pytest

from ui.smoothing import ema, smooth_frame


def test_constant_stays_constant():
    np.testing.assert_allclose(ema([2.5] * 50, 0.9), 2.5)


def test_weight_zero_is_identity_and_returns_a_copy():
    values = np.array([1.0, 5.0, 3.0])
    out = ema(values, 0.0)
    np.testing.assert_array_equal(out, values)
    assert out is not values


def test_debiased_first_value_and_known_second_value():
    out = ema([4.0, 0.0], 0.5)
    assert out[0] == pytest.approx(4.0)
    # plain EMA: 0.5*2 + 0 = 1.0 after 2.0; debias by 1 - 0.25
    assert out[1] == pytest.approx(1.0 / 0.75)


def test_nan_passes_through_without_poisoning_later_values():
    out = ema([1.0, np.nan, 1.0, np.inf, 1.0], 0.8)
    assert np.isnan(out[1]) and np.isposinf(out[3])
    np.testing.assert_allclose(out[[0, 2, 4]], 1.0)


def test_smoothing_reduces_noise():
    noisy = 1.0 + np.random.default_rng(0).normal(0, 0.5, 2000)
    assert np.std(ema(noisy, 0.95)[200:]) < np.std(noisy) / 3


def test_empty_and_bad_weight():
    assert ema([], 0.9).size == 0
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError):
            ema([1.0], bad)


def test_smooth_frame_per_group_in_step_order():
    df = pd.DataFrame({
        "run_id": [1, 2, 1, 2, 1],
        "key": ["loss"] * 5,
        "step": [2, 0, 0, 1, 1],
        "value": [30.0, 5.0, 10.0, 5.0, 20.0],
    })
    out = smooth_frame(df, 0.5)
    assert "smoothed" not in df.columns
    run1 = out[out["run_id"] == 1].sort_values("step")["smoothed"].to_numpy()
    np.testing.assert_allclose(run1, ema([10.0, 20.0, 30.0], 0.5))
    np.testing.assert_allclose(out[out["run_id"] == 2]["smoothed"], 5.0)


def test_smooth_frame_empty():
    df = pd.DataFrame(columns=["run_id", "key", "step", "value"])
    assert "smoothed" in smooth_frame(df, 0.6).columns
