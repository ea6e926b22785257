"""The Plan page's tables and figures, on plans of runs recorded in a real store."""

import numpy as np
import pytest
from test_jobs_planning import seed_isoflop, seed_many, seed_run

from analysis.scaling import CHINCHILLA, EPOCH
from jobs.planning import make_plan
from ui.plan_view import (
    exponents_table,
    isoflop_figure,
    ladder_table,
    optimum_figure,
    recommendation_table,
    summary_text,
    tokens_per_param_figure,
)


@pytest.fixture
def fitted(store):
    seed_many(store, noise=0.005)
    return make_plan(store, flops=2e14, n_boot=40)


@pytest.fixture
def empty(store):
    return make_plan(store, flops=1e14, n_boot=20)


def test_recommendation_table_has_the_three_budgets_with_their_runs(fitted):
    table = recommendation_table(fitted)
    assert list(table["budget"]) == ["0.5×", "1×", "2×"]
    assert list(table["steps"]) == [r.config.max_steps for r in fitted.recommended]
    low, high = (float(x) for x in table["80% band"][1].split(" – "))
    assert low < table["val loss"][1] < high
    assert table["time"].notna().all()  # the runs measured their speed


def test_without_a_fit_the_table_has_no_loss_and_no_time(empty):
    table = recommendation_table(empty)
    assert table["val loss"].isna().all() and table["time"].isna().all()
    assert len(ladder_table(empty)) == len(empty.plan.ladder.runs)
    assert exponents_table(empty).empty


def test_exponents_sit_beside_the_published_ones(fitted):
    table = exponents_table(fitted).set_index("constant")
    row = table.loc["alpha (N)"]
    assert row["Chinchilla"] == CHINCHILLA.alpha and row["Epoch AI"] == EPOCH.alpha
    low, high = (float(x) for x in row["80% interval"].split(" – "))
    assert low <= row["yours"] <= high


def test_isoflop_curves_have_their_minimum_at_the_laws_optimum(fitted):
    fig = isoflop_figure(fitted)
    curves = [t for t in fig.data if t.mode == "lines"]
    assert len(curves) == 3  # half, the whole and twice the budget
    optima = [t for t in fig.data if t.marker.symbol == "diamond"]
    for curve in curves:
        assert np.argmin(curve.y) not in (0, len(curve.y) - 1)  # a minimum inside
    runs = [t for t in fig.data if t.name == "your runs"]
    assert len(runs[0].x) == len(fitted.gathered.runs)
    assert len(optima) == 3


def test_without_a_fit_the_isoflop_figure_draws_no_law(empty):
    assert not [t for t in isoflop_figure(empty).data if t.mode == "lines"]


def test_optimum_and_ratio_figures_have_bands_that_hold_their_line(fitted):
    fig = optimum_figure(fitted)
    [n_line] = [t for t in fig.data if t.name == "N_opt"]
    [n_band] = [t for t in fig.data if t.name == "N_opt 80% band"]
    half = len(n_band.y) // 2
    assert np.all(n_band.y[:half] >= n_line.y * 0.999)
    ratio = tokens_per_param_figure(fitted)
    assert {t.name for t in ratio.data} >= {"yours", "Epoch AI", "your runs"}


def test_with_isoflop_minima_the_figures_draw_the_allocation_the_plan_uses(store):
    seed_isoflop(store)
    bp = make_plan(store, flops=3e14, n_boot=20)
    assert bp.plan.isoflop is not None
    fig = optimum_figure(bp)
    [n_line] = [t for t in fig.data if t.name == "N_opt (IsoFLOP minima)"]
    [law] = [t for t in fig.data if t.name == "N_opt by the law"]
    at = np.asarray(n_line.x)
    assert np.allclose(n_line.y, bp.plan.isoflop.optimal(at).n.value)
    # The recommended size sits on the drawn line, not on the law's.
    main = bp.plan.main
    assert float(main.n_opt.value) == pytest.approx(
        float(np.exp(np.interp(np.log(main.compute), np.log(at), np.log(n_line.y)))), rel=1e-3)
    assert not np.allclose(law.y, n_line.y, rtol=0.02)
    [ratio] = [t for t in tokens_per_param_figure(bp).data if t.name == "yours"]
    assert np.allclose(ratio.y, bp.plan.isoflop.optimal(np.asarray(ratio.x)).tokens_per_param.value)


def test_run_names_in_hover_text_are_escaped(store):
    run_id = seed_run(store, 2, 96, 100)
    store.update_run(run_id, name="<b>bold</b>")
    bp = make_plan(store, flops=1e14, n_boot=20)
    [runs] = [t for t in isoflop_figure(bp).data if t.name == "your runs"]
    assert "&lt;b&gt;bold" in runs.text[0] and "<b>bold" not in runs.text[0]
    assert "1 run(s) of 1 model size(s)" in summary_text(bp)


def test_runs_left_out_of_the_law_are_drawn_open_and_say_why(store):
    seed_many(store, noise=0.005)
    short = seed_run(store, 2, 64, 150)  # 307 k tokens: under the planner's floor
    bp = make_plan(store, flops=2e14, n_boot=20)
    runs = next(t for t in isoflop_figure(bp).data if t.name == "your runs")
    index = [r.run_id for r in bp.gathered.runs].index(short)
    assert runs.marker.symbol[index] == "circle-open"
    assert list(runs.marker.symbol).count("circle-open") == 1
    assert "left out of the law's fit" in runs.text[index]
