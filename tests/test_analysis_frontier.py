"""Compute frontier: the Pareto set and the law a*C^-b + c, recovered from known runs."""

import numpy as np
import pytest

from analysis.frontier import fit_frontier, pareto_front


def test_pareto_front_keeps_runs_nothing_cheaper_beats():
    compute = [1e15, 2e15, 4e15, 3e15, 8e15, 8e15]
    loss = [3.0, 2.5, 2.2, 2.6, 2.0, 2.1]
    # 3e15 (2.6) loses to 2e15 (2.5); the second 8e15 run loses to the first.
    assert pareto_front(compute, loss) == [0, 1, 2, 4]


def test_pareto_front_ignores_bad_values_and_orders_by_compute():
    assert pareto_front([4e15, 0.0, 1e15, np.nan], [2.0, 1.0, 3.0, 1.0]) == [2, 0]
    assert pareto_front([], []) == []


def test_fit_recovers_known_law_from_frontier_runs():
    a, b, c = 2.0e3, 0.25, 1.6
    rng = np.random.default_rng(0)
    compute = np.logspace(13, 18, 12)
    loss = a * compute ** -b + c + rng.normal(0, 0.002, compute.size)
    # Mis-tuned runs above the frontier must not drag the fit up.
    compute = np.concatenate([compute, [3e14, 3e16]])
    loss = np.concatenate([loss, [a * 3e14 ** -b + c + 1.0, a * 3e16 ** -b + c + 0.8]])
    fit = fit_frontier(compute, loss)
    assert fit.fitted and fit.note is None
    assert 12 not in fit.on_frontier and 13 not in fit.on_frontier
    assert fit.b == pytest.approx(b, rel=0.1)
    assert fit.c == pytest.approx(c, abs=0.05)
    assert fit.predict([1e20])[0] == pytest.approx(a * 1e20 ** -b + c, abs=0.02)
    xs, ys = fit.curve(1e13, 1e18, points=50)
    assert xs.shape == ys.shape == (50,)
    assert xs[0] == pytest.approx(1e13) and xs[-1] == pytest.approx(1e18)
    assert np.all(np.diff(ys) < 0)


def test_two_runs_fit_a_pure_power_law():
    compute, loss = [1e15, 1e17], [3.0, 2.0]
    fit = fit_frontier(compute, loss)
    assert fit.fitted and fit.c == 0.0 and "c held at 0" in fit.note
    assert fit.predict(compute) == pytest.approx(loss, abs=1e-6)


def test_one_run_or_a_dominated_pair_fits_nothing():
    for compute, loss in (([1e15], [3.0]), ([1e15, 1e16], [2.0, 2.5]), ([1e15, 1e15], [2, 2])):
        fit = fit_frontier(compute, loss)
        assert not fit.fitted and "at least two runs" in fit.note
        assert np.isnan(fit.predict([1e16])).all()
    assert fit_frontier([1e15, 1e16], [2.0, 2.5]).on_frontier == [0]
