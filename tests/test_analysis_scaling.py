"""The planner's mathematics on synthetic runs drawn from known laws: Chinchilla's approach 3
(L(N, D) fit and its bootstrap) and approach 2 (IsoFLOP minima), the shape ladder, the
IsoFLOP ladder proposal and the plan with 0, 1, 2 and many model sizes."""

from dataclasses import replace

import numpy as np
import pytest

from analysis.isoflop import assign_budgets, fit_isoflop, infer_budgets, parabola_vertex
from analysis.ladder import (
    ASPECT,
    SPEED_EXPONENT_PRIOR,
    Throughput,
    fit_flops_per_token,
    fit_throughput,
    nearest_shape,
    propose_ladder,
    runs_to_narrow,
    shape_ladder,
    width_after,
)
from analysis.planner import (
    PlanMode,
    compute_for_time,
    compute_for_tokens,
    learning_rate_for,
    plan,
)
from analysis.scaling import (
    CHINCHILLA,
    DEFAULT_DRIFT,
    EPOCH,
    LossLaw,
    count_sizes,
    fit_loss_law,
    log_sd_of_band,
    optimal_n,
)
from gptcore.config import ModelConfig, TrainConfig
from gptcore.estimate import flops_per_token, param_count

SIZES = np.geomspace(2e7, 2e9, 6)
RATIOS = (2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0)  # tokens per parameter


def runs_of(law: LossLaw, sizes=SIZES, ratios=RATIOS, noise=0.003, seed=0):
    """(N, D, loss) of runs on a grid of sizes and tokens per parameter, the loss off the
    law by a relative noise."""
    n = np.repeat(sizes, len(ratios))
    d = n * np.tile(ratios, len(sizes))
    rng = np.random.default_rng(seed)
    return n, d, law.loss(n, d) * np.exp(rng.normal(0, noise, n.size))


def cpu_param_count(n_layers: int, emb_dim: int, n_heads: int) -> int:
    """The project's count (gptcore.estimate) for a byte-level model of context 64."""
    cfg = TrainConfig(model=ModelConfig(context_length=64, emb_dim=emb_dim, n_heads=n_heads,
                                        n_layers=n_layers), tokenizer="byte")
    return param_count(replace(cfg, model=replace(cfg.model, vocab_size=256)))


@pytest.mark.parametrize("law", [CHINCHILLA, EPOCH], ids=["chinchilla", "epoch"])
def test_fit_recovers_known_constants(law):
    fit = fit_loss_law(*runs_of(law), n_boot=0)
    assert fit.law.alpha == pytest.approx(law.alpha, abs=0.02)
    assert fit.law.beta == pytest.approx(law.beta, abs=0.02)
    assert fit.law.E == pytest.approx(law.E, rel=0.02)
    assert fit.law.n_exponent == pytest.approx(law.n_exponent, abs=0.02)
    # A law fitted up to 2e9 parameters predicts a run 10x larger within 1%.
    assert fit.law.loss(2e10, 4e11) == pytest.approx(law.loss(2e10, 4e11), rel=0.01)
    assert fit.n_points == len(SIZES) * len(RATIOS) and fit.n_sizes == len(SIZES)
    assert fit.residual_std == pytest.approx(0.003, rel=0.4)


def test_bootstrap_intervals_hold_the_truth_and_repeat_with_the_seed():
    n, d, loss = runs_of(EPOCH, seed=1)
    fit = fit_loss_law(n, d, loss, n_boot=40, seed=3)
    for name, truth in (("alpha", EPOCH.alpha), ("beta", EPOCH.beta), ("E", EPOCH.E),
                        ("n_exponent", EPOCH.n_exponent)):
        low, high = fit.interval(name)
        assert low < truth < high, name
    band = fit.predict(4e9, 8e10)
    assert band.low < EPOCH.loss(4e9, 8e10) < band.high
    assert band.low < band.value < band.high and band.level == 0.8
    allocation = fit.optimal(1e21)
    true_n = optimal_n(EPOCH.params, 1e21)[0]
    assert allocation.n.low < true_n < allocation.n.high
    assert allocation.tokens_per_param.value == pytest.approx(
        allocation.d.value / allocation.n.value)
    again = fit_loss_law(n, d, loss, n_boot=40, seed=3)
    assert np.array_equal(again.boot, fit.boot)
    with pytest.raises(ValueError, match="no constant"):
        fit.interval("gamma")


def test_band_widens_beyond_the_runs_by_the_drift_they_show():
    n, d, loss = runs_of(EPOCH, noise=0.01, seed=4)
    fit = fit_loss_law(n, d, loss, n_boot=40)
    assert fit.drift_measured and 0 < fit.drift < 0.1
    inside, beyond = fit.predict(2e8, 4e9), fit.predict(2e10, 4e11)  # beyond: 1 decade
    assert beyond.high / beyond.value > inside.high / inside.value
    # Past the runs the band is the bootstrap's widened by exp(drift) per decade.
    plain = replace(fit, drift=0.0).predict(2e10, 4e11)
    assert beyond.high / plain.high == pytest.approx(np.exp(fit.drift), rel=1e-9)
    assert beyond.low / plain.low == pytest.approx(np.exp(-fit.drift), rel=1e-9)
    assert replace(fit, drift=0.0).predict(2e8, 4e9).high == inside.high
    assert beyond.low < EPOCH.loss(2e10, 4e11) < beyond.high


def test_a_forecasts_band_widens_the_fit_instead_of_counting_as_exact():
    n, d, loss = runs_of(EPOCH, seed=2)
    exact = fit_loss_law(n, d, loss, n_boot=40, seed=5)
    # No spread is the fit as it was: the same resamples, the same bands.
    assert np.array_equal(fit_loss_law(n, d, loss, n_boot=40, seed=5,
                                       loss_sd=np.zeros(n.size)).boot, exact.boot)
    # The largest runs known only as forecasts with a 90% band of +-8%: the constants that
    # the largest runs pin down get wider intervals, and the prediction past them too.
    sd = np.where(n * d >= np.quantile(n * d, 0.7), log_sd_of_band(0.92, 1.08, 0.9), 0.0)
    loose = fit_loss_law(n, d, loss, n_boot=40, seed=5, loss_sd=sd)
    assert loose.law.params == pytest.approx(exact.law.params)  # the point fit is the same

    def width(fit, name):
        low, high = fit.interval(name)
        return high - low
    assert width(loose, "E") > 1.5 * width(exact, "E")
    far_loose, far_exact = loose.predict(4e10, 8e11), exact.predict(4e10, 8e11)
    assert far_loose.high - far_loose.low > far_exact.high - far_exact.low
    with pytest.raises(ValueError, match="loss_sd"):
        fit_loss_law(n, d, loss, loss_sd=np.full(n.size - 1, 0.01))
    with pytest.raises(ValueError, match="loss_sd"):
        fit_loss_law(n, d, loss, loss_sd=np.full(n.size, -0.01))


def test_log_sd_of_band_is_the_normal_spread_of_a_symmetric_band():
    # A 90% band is +-1.645 standard deviations: log(1.1 / 0.9) / (2 * 1.645).
    assert log_sd_of_band(0.9, 1.1, 0.9) == pytest.approx(np.log(1.1 / 0.9) / 3.2897, rel=1e-4)
    assert log_sd_of_band(2.0, 2.0, 0.8) == 0.0
    with pytest.raises(ValueError, match="band"):
        log_sd_of_band(1.1, 0.9, 0.9)


def test_compute_optimal_split_spends_the_budget_and_beats_its_neighbours():
    c = 1e21
    n_opt, d_opt = EPOCH.optimal(c)
    assert 6 * n_opt * d_opt == pytest.approx(c)
    for factor in (0.8, 1.25):  # moving along the IsoFLOP curve costs loss either way
        assert EPOCH.loss(n_opt * factor, d_opt / factor) > EPOCH.loss(n_opt, d_opt)
    # The numeric optimum under a caller's FLOPs per token matches the closed form for 6N,
    # and spends the budget its own way when attention is counted.
    n_num, _ = EPOCH.optimal(c, flops_per_token=lambda n: 6 * n)
    assert n_num == pytest.approx(n_opt, rel=1e-4)
    n_att, d_att = EPOCH.optimal(c, flops_per_token=lambda n: 6 * n + 1e9)
    assert (6 * n_att + 1e9) * d_att == pytest.approx(c) and n_att != pytest.approx(n_opt)


def test_fixed_exponents_fit_only_the_scales():
    n, d, loss = runs_of(EPOCH, sizes=(1e8, 4e8), ratios=(5.0, 20.0, 80.0))
    fit = fit_loss_law(n, d, loss, fixed_exponents=EPOCH, n_boot=20)
    assert (fit.law.alpha, fit.law.beta) == (EPOCH.alpha, EPOCH.beta) and fit.fixed_exponents
    assert np.all(fit.boot[:, 3] == EPOCH.alpha)
    assert fit.law.loss(1e9, 2e10) == pytest.approx(EPOCH.loss(1e9, 2e10), rel=0.01)
    # Too few runs past a tenth of the largest compute to measure the drift: the default.
    assert not fit.drift_measured and fit.drift == DEFAULT_DRIFT


def test_fit_refuses_unusable_runs():
    with pytest.raises(ValueError, match="at least 5 runs"):
        fit_loss_law([1e8, 2e8], [1e9, 1e9], [3.0, 2.9])
    with pytest.raises(ValueError, match="finite, positive"):
        fit_loss_law([1e8] * 5, [1e9] * 5, [3.0, 2.9, np.nan, 2.8, 2.7])


def isoflop_runs(law, budgets, seed=0, noise=0.002):
    """Five sizes a factor 2 apart around each budget's optimum, D = C / 6N."""
    n, c = [], []
    for budget in budgets:
        centre = optimal_n(law.params, budget)[0]
        n += list(centre * 2.0 ** np.arange(-2, 3) * 1.1)  # off-centre, as a real ladder
        c += [budget] * 5
    n, c = np.array(n), np.array(c)
    rng = np.random.default_rng(seed)
    return n, c, law.loss(n, c / (6 * n)) * np.exp(rng.normal(0, noise, n.size))


def test_approach_two_recovers_the_exponents():
    budgets = np.geomspace(1e18, 1e21, 4)
    n, c, loss = isoflop_runs(EPOCH, budgets)
    nominal = assign_budgets(c * 1.05, budgets)  # runs a little off their budget
    assert np.array_equal(nominal, np.repeat(budgets, 5))
    fit = fit_isoflop(n, loss, nominal, n_boot=100)
    assert fit.n_exponent == pytest.approx(EPOCH.n_exponent, abs=0.03)
    assert fit.n_exponent + fit.d_exponent == pytest.approx(1.0)  # C = 6ND on every curve
    assert all(m.interior for m in fit.minima)
    # The 80% interval holds the true exponent about 80% of the time over fresh noise.
    held = 0
    for seed in range(10):
        n, c, loss = isoflop_runs(EPOCH, budgets, seed=seed)
        low, high = fit_isoflop(n, loss, c, n_boot=100, seed=seed).interval("n_exponent")
        held += low < EPOCH.n_exponent < high
    assert held >= 6
    allocation = fit.optimal(1e22)
    assert allocation.n.value == pytest.approx(optimal_n(EPOCH.params, 1e22)[0], rel=0.2)
    assert allocation.n.low < allocation.n.value < allocation.n.high


def test_plan_fits_approach_two_on_its_ladders_budgets():
    budgets = np.geomspace(1e18, 1e21, 4)
    n, c, loss = isoflop_runs(EPOCH, budgets)
    p = plan(n, c / (6 * n), loss, 1e22, isoflop_budgets=budgets, n_boot=20)
    assert p.isoflop is not None and len(p.isoflop.minima) == 4
    assert p.isoflop.n_exponent == pytest.approx(EPOCH.n_exponent, abs=0.03)
    one = plan(n[:5], c[:5] / (6 * n[:5]), loss[:5], 1e22, isoflop_budgets=budgets, n_boot=20)
    assert one.isoflop is None and any("two or more budgets" in note for note in one.notes)


def test_where_runs_hold_isoflop_minima_the_allocation_follows_them():
    """Runs whose valleys sit at twice the size the law's constants alone would put them
    (as our CPU ladders' did): the plan's size and tokens are approach 2's, its loss the
    law's, and a note gives both optima."""
    budgets = np.geomspace(1e18, 1e21, 4)
    n, c, loss = isoflop_runs(EPOCH, budgets)
    valley = 2 * np.reshape(optimal_n(EPOCH.params, c), -1)
    loss = loss * (1 + 0.03 * np.log(n / valley) ** 2)
    p = plan(n, c / (6 * n), loss, 1e22, isoflop_budgets=budgets, n_boot=20)
    follows = p.isoflop.optimal(np.array([5e21, 1e22, 2e22]))
    assert [float(x.n_opt.value) for x in p.points] == pytest.approx(list(follows.n.value))
    assert [float(x.d_opt.value) for x in p.points] == pytest.approx(list(follows.d.value))
    main = p.main
    assert float(main.n_opt.value) == pytest.approx(2 * optimal_n(EPOCH.params, 1e22)[0],
                                                    rel=0.25)
    by_law = float(p.fit.optimal(1e22).n.value)
    assert abs(np.log(float(main.n_opt.value) / by_law)) > np.log(1.2)  # they disagree here
    assert float(main.loss.value) == pytest.approx(float(p.fit.predict(main.params,
                                                                         main.tokens).value))
    assert any("IsoFLOP minima" in note and f"{by_law:,.0f}" in note for note in p.notes)


def test_isoflop_budgets_are_found_in_runs_without_a_ladder():
    # Three curves of four sizes each, their FLOPs a few percent apart (steps round), one
    # lone run between them, and two runs of one size at a fourth budget.
    compute = [1e12 * f for f in (1.0, 1.03, 0.98, 1.05)] + [3e12 * f for f in (1, 1.1, 0.97,
                                                                                 1.02)]
    compute += [1e13] * 4 + [5e12, 3e13, 3.1e13]
    n = [1e4, 2e4, 4e4, 8e4] * 3 + [1e5, 1e5, 1.01e5]
    found = infer_budgets(compute, n)
    assert found == pytest.approx([1.014e12, 3.06e12, 1e13], rel=0.01)
    assert np.all(np.isfinite(assign_budgets(compute[:12], found)))


def test_approach_two_needs_two_budgets_with_an_inner_minimum():
    n, c, loss = isoflop_runs(EPOCH, [1e19])
    with pytest.raises(ValueError, match="two or more budgets"):
        fit_isoflop(n, loss, c, n_boot=0)
    assert parabola_vertex(np.array([1e8, 2e8]), np.array([3.0, 2.9])) is None
    assert np.isnan(assign_budgets([5e18], [1e19, 3e19])).all()


def test_shape_ladder_counts_parameters_the_project_way():
    shapes = shape_ladder(cpu_param_count, max_layers=12, max_emb_dim=768)
    assert [s.params for s in shapes] == sorted(s.params for s in shapes)
    for s in shapes:
        assert s.emb_dim % s.n_heads == 0 and ASPECT[0] <= s.emb_dim / s.n_layers <= ASPECT[1]
        assert s.n_layers >= 2  # one layer learns on another curve
    assert (shapes[0].n_layers, shapes[0].emb_dim) == (2, 32)
    tiny = next(s for s in shapes if (s.n_layers, s.emb_dim) == (2, 96))
    assert tiny.params == param_count(TrainConfig(model=ModelConfig(
        context_length=64, emb_dim=96, n_heads=tiny.n_heads, n_layers=2, vocab_size=256)))
    for target in (3e5, 2e6, 2e7):
        assert nearest_shape(shapes, target).params == pytest.approx(target, rel=0.2)


def test_throughput_fit_recovers_the_speed_law():
    n = np.array([1e5, 1e6, 1e7])
    flops = 1e9 * (n / 1e6) ** 0.2
    speed = fit_throughput(n, flops / (6 * n))
    assert speed.exponent == pytest.approx(0.2)
    assert speed.tokens_per_s(3e6) == pytest.approx(1e9 * 3 ** 0.2 / 1.8e7)
    # One size: its own speed there, smaller models slower per FLOP as measured on our CPU
    # runs (a constant FLOP/s made a first ladder's smallest runs take twice as long).
    one = fit_throughput([1e6], [100.0])
    assert one.exponent == SPEED_EXPONENT_PRIOR > 0
    assert one.tokens_per_s(1e6) == pytest.approx(100.0)


def test_ladder_fits_its_time_budget():
    shapes = shape_ladder(cpu_param_count, max_layers=12, max_emb_dim=768)
    speed = Throughput(flops_per_s=2e9, exponent=0.1, n_ref=1e6)
    ladder = propose_ladder(1800.0, speed, shapes)
    assert 0.8 * 1800 < ladder.total_s <= 1800
    assert len(ladder.budgets) == 3 and ladder.budgets[1] == pytest.approx(3 * ladder.budgets[0])
    for budget in ladder.budgets:
        on = [r for r in ladder.runs if r.compute == budget]
        # Five distinct sizes even where the best size is below the smallest shape (as here:
        # 2 GFLOP/s for 30 minutes), the extra ones the next nearest, 1.4x apart or more.
        assert len(on) == 5 and len({r.shape for r in on}) == 5
        sizes = sorted(r.shape.params for r in on)
        assert min(b / a for a, b in zip(sizes, sizes[1:], strict=False)) >= 1.4
        for r in on:
            assert 6 * r.shape.params * r.tokens == pytest.approx(budget)
            assert r.seconds == pytest.approx(speed.seconds(r.shape.params, r.tokens))
    bigger = propose_ladder(7200.0, speed, shapes)
    assert bigger.budgets[0] > ladder.budgets[0] and bigger.total_s <= 7200


def test_band_narrows_as_one_over_root_runs():
    assert width_after(0.1, 20, 60) == pytest.approx(0.05)
    assert runs_to_narrow(0.1, 20, 0.05) == 60
    assert runs_to_narrow(0.1, 20, 0.2) == 0
    # The rule holds for the bootstrap itself: four times the runs, about half the band.
    widths = []
    for ratios in (RATIOS[::3], np.repeat(RATIOS[::3], 4)):
        n, d, loss = runs_of(EPOCH, ratios=ratios, noise=0.01, seed=2)
        low, high = fit_loss_law(n, d, loss, n_boot=40, refine=4).interval("alpha")
        widths.append(high - low)
    assert 0.3 < widths[1] / widths[0] < 0.75


def test_plan_without_runs_proposes_a_ladder():
    shapes = shape_ladder(cpu_param_count, max_layers=12, max_emb_dim=768)
    speed = Throughput(flops_per_s=2e9)
    for n, d, loss in (([], [], []), ([1e6, 1e6], [1e7, 2e7], [2.0, 1.9])):
        p = plan(n, d, loss, 1e15, shapes=shapes, throughput=speed, ladder_time_s=1800)
        assert p.mode == PlanMode.PRIOR and p.fit is None and p.n_sizes == len(set(n))
        assert [q.multiple for q in p.points] == [0.5, 1.0, 2.0]
        assert p.main.loss is None and np.isnan(p.main.n_opt.low)
        assert p.main.n_opt.value == pytest.approx(EPOCH.optimal(1e15)[0])
        assert p.main.shape == nearest_shape(shapes, p.main.n_opt.value)
        assert p.main.seconds == pytest.approx(1e15 / 2e9)
        assert p.ladder is not None and p.ladder.total_s <= 1800
        assert "IsoFLOP ladder" in p.notes[0]


def test_plan_with_two_sizes_holds_the_exponents():
    n, d, loss = runs_of(EPOCH, sizes=(1e8, 4e8), ratios=(5.0, 20.0, 80.0))
    shapes = shape_ladder(cpu_param_count)
    p = plan(n, d, loss, 1e20, shapes=shapes, throughput=Throughput(1e15), ladder_time_s=3600,
             n_boot=20)
    assert p.mode == PlanMode.FIXED_EXPONENTS and p.fit.fixed_exponents
    assert "held at Epoch" in p.notes[0] and p.ladder is not None
    band = p.main.loss
    assert band.low < band.value < band.high


def test_plan_with_many_sizes_fits_the_law():
    n, d, loss = runs_of(CHINCHILLA)
    p = plan(n, d, loss, 1e21, n_boot=40)
    assert p.mode == PlanMode.FITTED and p.ladder is None and not p.notes
    true_n = optimal_n(CHINCHILLA.params, 1e21)[0]
    assert p.main.params == pytest.approx(true_n, rel=0.5)
    assert p.main.loss.low < CHINCHILLA.loss(p.main.params, p.main.tokens) < p.main.loss.high
    assert p.points[0].n_opt.value < p.main.n_opt.value < p.points[2].n_opt.value
    assert p.main.shape is None and p.main.seconds is None


def test_budget_in_tokens_is_the_compute_whose_optimum_trains_on_them():
    c = compute_for_tokens(EPOCH, 2e10)
    assert EPOCH.optimal(c)[1] == pytest.approx(2e10, rel=1e-6)


def test_sizes_within_two_percent_are_one():
    assert count_sizes([1e6, 1.01e6, 2e6, 4e6]) == 3
    assert count_sizes([]) == 0


def test_learning_rate_follows_the_best_of_each_size():
    n = [1e6, 1e6, 1e6, 4e6, 4e6, 4e6]
    lr = [1e-3, 3e-3, 1e-2, 1e-3, 3e-3, 1e-2]
    loss = [2.1, 2.0, 2.2, 1.8, 1.9, 2.3]  # best: 3e-3 at 1e6, 1e-3 at 4e6
    advice = learning_rate_for(n, lr, loss, 1.6e7)
    assert advice.lr == pytest.approx(1e-3 / 3)  # a third per 4x in N, one step further
    assert "2 sizes" in advice.how
    # A best lr that rises with size is noise: the nearest size's best is kept.
    rising = learning_rate_for(n, lr, [2.0, 2.1, 2.2, 2.0, 1.9, 2.3], 1.6e7)
    assert rising.lr == 3e-3 and "4,000,000" in rising.how
    assert learning_rate_for([1e6, 1e6], [1e-3, 2e-3], [2.0, 1.9], 1e8).lr == 2e-3
    assert learning_rate_for([], [], [], 1e6) is None
    # One lr at every size: no trend (it used to say "lr ∝ N^-0.00").
    same = learning_rate_for(n, [3e-3] * 6, [2.0] * 6, 1.6e7)
    assert same.lr == 3e-3 and "no trend" in same.how and "N^" not in same.how


def test_flops_per_token_follows_the_projects_count_with_attention():
    shapes = shape_ladder(cpu_param_count, max_layers=12, max_emb_dim=768)

    def shape_flops(s):
        return flops_per_token(TrainConfig(model=ModelConfig(
            context_length=64, emb_dim=s.emb_dim, n_heads=s.n_heads, n_layers=s.n_layers,
            vocab_size=256)))
    per_token = fit_flops_per_token(shapes, shape_flops)
    misses = [abs(per_token(s.params) / shape_flops(s) - 1) for s in shapes]
    assert np.median(misses) < 0.01 and max(misses) < 0.1
    assert per_token(1e6) > 6e6  # attention counted on top of 6N
    # The plan spends the budget by that count.
    p = plan([], [], [], 1e15, shapes=shapes, flops_per_token=per_token)
    assert per_token(p.main.params) * p.main.tokens == pytest.approx(1e15)


def test_budget_in_time_is_the_compute_its_optimum_trains_in():
    steady = Throughput(flops_per_s=1e9)  # the same FLOP/s at every size
    assert compute_for_time(EPOCH, 3600, steady) == pytest.approx(3.6e12)
    slower_small = Throughput(flops_per_s=1e9, exponent=0.2, n_ref=1e6)
    c = compute_for_time(EPOCH, 3600, slower_small)
    assert slower_small.seconds(*EPOCH.optimal(c)) == pytest.approx(3600)
    with pytest.raises(ValueError, match="positive"):
        compute_for_time(EPOCH, 0, steady)


def test_plan_takes_the_budget_as_flops_time_or_tokens():
    speed = Throughput(flops_per_s=2e9)
    by_time = plan([], [], [], seconds=500, throughput=speed)
    assert by_time.main.compute == pytest.approx(1e12)
    assert by_time.main.seconds == pytest.approx(500)
    by_tokens = plan([], [], [], tokens=2e9)
    assert by_tokens.main.tokens == pytest.approx(2e9, rel=1e-6)
    with pytest.raises(ValueError, match="one way"):
        plan([], [], [], 1e15, tokens=2e9)
    with pytest.raises(ValueError, match="throughput"):
        plan([], [], [], seconds=60)
    with pytest.raises(ValueError, match="positive"):
        plan([], [], [], -1.0)
