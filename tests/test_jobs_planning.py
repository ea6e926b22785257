"""jobs.planning: the planner on runs recorded in a real SQLite store, with final losses
drawn from a known law, and ``gptdash plan``."""

import json
from dataclasses import replace

import numpy as np
import pytest

from analysis.planner import MIN_FIT_TOKENS, PlanMode
from analysis.scaling import LossLaw
from gptcore.config import TrainConfig, apply_overrides, preset
from gptcore.errors import GptdashError
from gptcore.estimate import param_count
from gptcore.metric_keys import TOKENS_PER_SEC, VAL_LOSS
from jobs.cli import main
from jobs.plan_report import lines, report
from jobs.planning import (
    LADDER_EVALS,
    PlanRun,
    _loss_sd,
    gather,
    make_plan,
    parse_amount,
    parse_duration,
    queue_ladder,
)
from storage.status import RunStatus

# A law in the range a byte-level model on a small corpus follows (losses of 1.5 to 3).
LAW = LossLaw(E=1.2, A=60.0, B=400.0, alpha=0.35, beta=0.4)
# (n_layers, emb_dim) of the seeded sizes, smallest first; all at context 64, byte vocab.
SIZES = [(1, 32), (2, 64), (2, 96), (3, 128), (4, 192)]
FLOPS_PER_S = 2e10  # the CPU the runs measured


def seed_run(store, layers: int, emb: int, steps: int, *, status: str = RunStatus.COMPLETED,
             lr: float = 3e-3, noise: float = 0.0, rng=None, off: float = 0.0,
             batch_size: int | None = None) -> int:
    """A finished run of this shape whose last val loss is LAW's at its N and D (times
    1 + ``off``)."""
    cfg = apply_overrides(preset("tiny"), {"n_layers": layers, "emb_dim": emb, "n_heads": 2,
                                           "max_steps": steps, "lr": lr,
                                           "batch_size": batch_size or preset("tiny").batch_size})
    n, d = param_count(cfg), steps * cfg.tokens_per_step
    loss = float(LAW.loss(n, d)) * (1 + off + (noise * rng.normal() if noise else 0.0))
    run_id = store.create_run(f"r{layers}x{emb}x{steps}", cfg.to_dict(), status="running",
                              max_steps=steps, n_params=n)
    store.update_run(run_id, last_step=steps, device="cpu")
    tps = FLOPS_PER_S / (6 * n)
    store.log_metrics(run_id, [(VAL_LOSS, steps, loss, 0.0), (TOKENS_PER_SEC, steps, tps, 0.0)])
    if status != RunStatus.RUNNING:
        store.set_status(run_id, status)
    return run_id


# 1.0 M to 9.2 M tokens at the tiny preset's 2,048 tokens a step: all at least the
# planner's MIN_FIT_TOKENS, so every run enters the law's fit.
def seed_many(store, sizes=SIZES, steps=(500, 1500, 4500), noise=0.0) -> None:
    rng = np.random.default_rng(0)
    for layers, emb in sizes:
        for s in steps:
            seed_run(store, layers, emb, s, noise=noise, rng=rng)


def seed_isoflop(store, budgets=(1e13, 3e13, 1e14)) -> tuple[float, ...]:
    """Runs on IsoFLOP curves, queued by hand (no ladder sweep): each budget at the sizes
    SIZES[1:] (120 k to 1.8 M parameters; LAW's optimum lies inside at each)."""
    from gptcore.estimate import flops_per_token

    for budget in budgets:
        for layers, emb in SIZES[1:]:
            cfg = apply_overrides(preset("tiny"), {"n_layers": layers, "emb_dim": emb,
                                                   "n_heads": 2})
            seed_run(store, layers, emb,
                     round(budget / (flops_per_token(cfg) * cfg.tokens_per_step)))
    return budgets


def test_durations_and_amounts_parse_and_bad_ones_say_how_to_write_them():
    assert parse_duration("2h") == 7200
    assert parse_duration("1h30m") == 5400
    assert parse_duration("30min") == 1800 and parse_duration("90s") == 90
    for bad in ("", "2 hours", "0m", "h"):
        with pytest.raises(GptdashError, match="duration"):
            parse_duration(bad)
    assert parse_amount("3e15", "FLOPs") == 3e15
    for bad in ("-1", "x", "nan", "inf"):
        with pytest.raises(GptdashError, match="not a number of FLOPs"):
            parse_amount(bad, "FLOPs")


def test_no_runs_plans_from_the_prior_and_proposes_a_ladder(store):
    bp = make_plan(store, flops=1e14, n_boot=20)
    assert bp.plan.mode == PlanMode.PRIOR and bp.plan.n_runs == 0
    assert bp.main.point.loss is None  # a published law's loss says nothing of this corpus
    assert bp.throughput is None  # nothing measured: no times shown
    assert bp.plan.ladder is not None and len(bp.ladder_configs) == len(bp.plan.ladder.runs)
    # A ladder run is there for its final loss: a few evaluations, no samples (they cost a
    # short run of a small model a fifth of its time); the recommended run keeps its own.
    for c in bp.ladder_configs:
        assert c.sample_tokens == 0 and c.max_steps // c.eval_interval <= LADDER_EVALS + 1
    assert bp.main.config.sample_tokens == bp.gathered.base.sample_tokens > 0
    assert any("nominal" in n for n in bp.plan.notes)
    cfg = bp.main.config
    assert cfg.model.emb_dim % cfg.model.n_heads == 0
    assert cfg.max_steps * cfg.tokens_per_step == pytest.approx(bp.main.point.tokens, rel=0.01)


def test_a_time_budget_without_a_measured_run_is_refused(store):
    with pytest.raises(GptdashError, match="recorded its tokens/s"):
        make_plan(store, seconds=3600, device="cpu", n_boot=20)


def test_one_size_plans_from_the_prior_with_times_from_its_speed(store):
    for steps in (100, 300):
        seed_run(store, 2, 96, steps)
    bp = make_plan(store, seconds=600, device="cpu", n_boot=20)
    assert bp.plan.mode == PlanMode.PRIOR and bp.plan.n_runs == 2
    assert bp.throughput_runs == 2
    # The time budget is spent: the recommended run trains in about 10 minutes.
    assert bp.main.point.seconds == pytest.approx(600, rel=0.1)
    assert bp.plan.ladder.total_s <= 30 * 60 * 1.001
    assert "the best lr seen" in bp.lr_how


def test_two_sizes_fit_with_epochs_exponents(store):
    for layers, emb in SIZES[1:3]:
        for steps in (100, 300):
            seed_run(store, layers, emb, steps)
    bp = make_plan(store, flops=3e13, n_boot=30)
    assert bp.plan.mode == PlanMode.FIXED_EXPONENTS
    assert bp.plan.ladder is not None  # a ladder to fit the exponents
    assert bp.main.point.loss is not None


def test_many_sizes_fit_the_law_and_predict_its_loss(store):
    seed_many(store, noise=0.005)
    bp = make_plan(store, flops=2e14, n_boot=60)
    assert bp.plan.mode == PlanMode.FITTED and bp.plan.n_sizes == len(SIZES)
    assert bp.plan.ladder is None
    main = bp.main
    truth = float(LAW.loss(main.point.params, main.point.tokens))
    assert float(main.point.loss.value) == pytest.approx(truth, rel=0.03)
    assert float(main.point.loss.low) < truth < float(main.point.loss.high)
    # Half and twice the budget: the model grows with it.
    params = [r.point.params for r in bp.recommended]
    assert params == sorted(params) and [r.point.multiple for r in bp.recommended] == [0.5, 1, 2]
    out = report(bp)
    assert json.loads(json.dumps(out))["mode"] == "fitted"
    assert out["law"]["alpha"]["interval"][0] < out["law"]["alpha"]["interval"][1]
    assert "halve" in out["narrowing"]


def test_runs_of_too_few_tokens_are_left_out_of_the_law_but_not_of_the_isoflop_curves(store):
    # As on our CPU runs: runs of under a million tokens sit 10-40% below the law that the
    # longer runs follow. Fitted with them, the law bends and misses the budget's loss.
    seed_many(store, noise=0.005)
    short = [seed_run(store, layers, emb, 150, off=-0.25) for layers, emb in SIZES]
    assert 150 * preset("tiny").tokens_per_step < MIN_FIT_TOKENS <= 500 * 2048
    bp = make_plan(store, flops=2e14, n_boot=60)
    assert bp.plan.mode == PlanMode.FITTED and bp.plan.n_runs == 3 * len(SIZES) + len(short)
    truth = float(LAW.loss(bp.main.point.params, bp.main.point.tokens))
    assert float(bp.main.point.loss.value) == pytest.approx(truth, rel=0.03)
    left = {bp.gathered.runs[i].run_id: why for i, why in bp.plan.fit_left_out.items()}
    assert set(left) == set(short)
    assert all("fewer than 1,000,000" in why for why in left.values())
    assert any("left out of the law's fit" in n for n in bp.plan.notes)
    out = report(bp)
    assert {r["run_id"] for r in out["left_out_of_law"]} == set(short)
    [line] = [x for x in lines(bp) if x.startswith("left out of the law's fit")]
    assert line.endswith("runs " + ", ".join(str(i) for i in sorted(short)))


def test_short_runs_stay_in_the_law_when_the_others_are_too_few_to_fit_it(store):
    seed_many(store, sizes=SIZES[:2], steps=(500, 1500))  # 4 long runs of 2 sizes
    for layers, emb in SIZES[2:]:
        seed_run(store, layers, emb, 100)  # a third size only in short runs
    bp = make_plan(store, flops=2e14, n_boot=20)
    assert bp.plan.mode == PlanMode.FITTED and bp.plan.fit_left_out == {}
    assert any("too few to fit it" in n for n in bp.plan.notes)


def test_runs_of_another_batch_are_left_out_and_the_plan_takes_the_batch_most_runs_used(store):
    seed_many(store)  # 15 runs at the tiny preset's 2,048 tokens a step
    odd = seed_run(store, 3, 128, 500, batch_size=128, off=0.15)  # the newest, 4x the batch
    gathered = gather(store)
    assert gathered.base.tokens_per_step == preset("tiny").tokens_per_step
    assert odd not in {r.run_id for r in gathered.runs}
    [(run_id, why)] = gathered.left_out
    assert run_id == odd and "8,192 tokens a step" in why and "2,048" in why
    bp = make_plan(store, flops=2e14, n_boot=20)
    assert bp.main.config.tokens_per_step == 2048


def test_running_runs_count_only_with_a_calibrated_forecast(store):
    run_id = seed_run(store, 2, 96, 300, status=RunStatus.RUNNING)
    store.update_run(run_id, last_step=30)
    gathered = gather(store)
    assert gathered.runs == []
    assert gathered.left_out[0][0] == run_id and "forecast" in gathered.left_out[0][1]


def test_a_forecasts_band_enters_the_fit_as_its_spread_a_final_loss_as_exact():
    final = PlanRun(1, "a", 100_000, 10**6, 2.0, "final", None, None, 3e-3, "cpu", 1e4, None)
    assert _loss_sd(final) == 0.0
    forecast = replace(final, source="forecast", low=1.9, high=2.1)  # a 90% band
    assert _loss_sd(forecast) == pytest.approx(np.log(2.1 / 1.9) / (2 * 1.6449), rel=1e-3)
    assert _loss_sd(replace(forecast, low=None, high=None)) == 0.0


def test_runs_of_another_corpus_are_not_gathered(store):
    seed_run(store, 2, 96, 100)
    other = apply_overrides(preset("tiny"), {"tokenizer": "gpt2"})
    store.create_run("other", other.to_dict(), status="completed")
    assert gather(store).tokenizer == "gpt2" and gather(store).runs == []  # the newest's
    assert [r.name for r in gather(store, tokenizer="byte").runs] == ["r2x96x100"]


def test_epochs_come_from_the_token_cache_and_warn_past_four(store):
    from gptcore.tokens import prepare
    from storage.home import cache_dir

    cfg = preset("tiny")
    prepare(cfg.corpus, cfg.tokenizer, cache_dir(), cfg.val_fraction, cfg.text_field)
    bp = make_plan(store, tokens=5e7, n_boot=20)
    assert bp.train_tokens is not None and bp.main.epochs > 4
    assert any(w.startswith("1x the budget trains on") for w in bp.warnings)
    # The ladder's own runs: 30 minutes of a laptop's CPU repeat the built-in corpus many
    # times over, and its law would be one of repeated tokens.
    longest = max(c.tokens_per_step * c.max_steps for c in bp.ladder_configs)
    assert longest > 4 * bp.train_tokens
    assert any(w.startswith("the ladder's longest runs train on") for w in bp.warnings)
    short = make_plan(store, tokens=5e7, n_boot=20, ladder_time_s=5)
    assert max(c.tokens_per_step * c.max_steps for c in short.ladder_configs) \
        < 4 * bp.train_tokens
    assert not any(w.startswith("the ladder's") for w in short.warnings)


def test_cli_plan_json_prints_one_object(store, capsys):
    seed_many(store)
    assert main(["plan", "--flops", "2e14", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mode"] == "fitted" and len(out["points"]) == 3
    point = out["points"][1]
    assert point["multiple"] == 1 and point["loss"]["low"] < point["loss"]["value"]
    assert point["seconds"] > 0 and out["device"] == "cpu"


def test_cli_plan_in_words_and_time_budget(store, capsys):
    seed_many(store)
    assert main(["plan", "--budget", "20m", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "plan for 20 min on cpu" in out and "learning rate:" in out


def test_cli_plan_queue_writes_the_recommended_run(store, capsys):
    seed_many(store)
    assert main(["plan", "--flops", "2e14", "--queue", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    queued = store.list_runs(status=RunStatus.QUEUED)
    assert len(queued) == 1 and out["queued_run"] == queued[0].id
    model = queued[0].config["model"]
    point = out["points"][1]
    assert (model["n_layers"], model["emb_dim"], model["n_heads"]) == (
        point["n_layers"], point["emb_dim"], point["n_heads"])
    assert queued[0].config["max_steps"] == point["steps"]


def test_cli_plan_queue_without_a_fit_queues_the_ladder_as_a_sweep(store, capsys):
    assert main(["plan", "--flops", "1e14", "--ladder-time", "10m", "--queue"]) == 0
    sweeps = store.list_sweeps()
    assert len(sweeps) == 1 and sweeps[0].spec["isoflop_budgets"]
    runs = store.list_runs(sweep_id=sweeps[0].id)
    assert len(runs) == len(sweeps[0].spec["runs"]) >= 5
    assert f"sweep {sweeps[0].id}" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["plan"], "give the budget one way"),
    (["plan", "--flops", "1e15", "--tokens", "5e8"], "give the budget one way"),
    (["plan", "--budget", "2 hours"], "not a duration"),
    (["plan", "--flops", "lots"], "not a number of FLOPs"),
    (["plan", "--budget", "1h", "--device", "cuda"], "recorded its tokens/s"),
])
def test_cli_plan_bad_input_is_one_line_exit_2(store, capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_a_budget_with_device_but_not_time_is_refused(store, capsys):
    assert main(["plan", "--flops", "1e15", "--device", "cpu"]) == 2
    assert "--device" in capsys.readouterr().err


def test_seeded_runs_count_as_the_project_counts_them(store):
    seed_run(store, 2, 96, 100)
    run = gather(store).runs[0]
    cfg = replace(preset("tiny"), max_steps=100)
    assert run.tokens == 100 * cfg.tokens_per_step and run.source == "final"


def test_a_trained_ladder_is_fitted_by_approach_2_too(store):
    bp = make_plan(store, flops=1e14, n_boot=20)  # nothing trained: the prior's ladder
    _, run_ids = queue_ladder(store, bp)
    for run_id in run_ids:  # as if each had trained to its end on LAW
        cfg = TrainConfig.from_dict(store.get_run(run_id).config)
        n, steps = param_count(cfg), cfg.max_steps
        store.update_run(run_id, last_step=steps, device="cpu")
        store.log_metrics(run_id, [
            (VAL_LOSS, steps, float(LAW.loss(n, steps * cfg.tokens_per_step)), 0.0),
            (TOKENS_PER_SEC, steps, FLOPS_PER_S / (6 * n), 0.0)])
        store.set_status(run_id, RunStatus.COMPLETED)
    after = make_plan(store, flops=1e14, n_boot=20)
    assert after.plan.n_runs == len(run_ids) and after.plan.n_sizes >= 3
    # The ladder's budgets came back from its sweep: approach 2 was tried on its runs.
    assert after.plan.isoflop is not None or any("approach 2" in n for n in after.plan.notes)


def test_isoflop_curves_trained_by_hand_are_found_and_steer_the_allocation(store):
    """Runs of one budget at several sizes, queued by hand rather than as a ladder: the
    planner finds their budgets, fits approach 2 on them and takes the size from it."""
    budgets = seed_isoflop(store)
    bp = make_plan(store, flops=3e14, n_boot=20)
    iso = bp.plan.isoflop
    # (the budgets as the planner counts the runs' FLOPs: attention by its fitted line)
    assert iso is not None and [m.compute for m in iso.minima] == pytest.approx(budgets,
                                                                               rel=0.05)
    assert all(m.interior for m in iso.minima)
    main_n = float(bp.plan.main.n_opt.value)
    assert main_n == pytest.approx(float(iso.optimal(3e14).n.value))
    assert any("IsoFLOP minima" in note for note in bp.plan.notes)


def test_a_fine_tune_is_left_out_and_new_runs_start_from_scratch(store):
    seed_run(store, 2, 96, 100)
    tuned = seed_run(store, 2, 96, 100)
    cfg = dict(store.get_run(tuned).config, init_from="1")
    store.update_run(tuned, config=cfg)
    gathered = gather(store)
    assert [r.run_id for r in gathered.runs] == [1]
    assert gathered.left_out[0][0] == tuned and "fine-tuned" in gathered.left_out[0][1]
    assert gathered.base.init_from == ""


def test_a_budget_below_the_smallest_shape_says_the_run_is_off_the_optimum(store):
    # GPT-2's vocabulary: the smallest shape already has 1.6 M parameters, in its embedding.
    cfg = apply_overrides(preset("tiny"), {"tokenizer": "gpt2"})
    store.create_run("gpt2", cfg.to_dict())
    bp = make_plan(store, flops=1e14, n_boot=20)
    main = bp.main.point
    assert main.params > 1.5 * float(main.n_opt.value)
    assert any("the smallest shape the planner has" in n for n in bp.plan.notes)
    assert not any("shape the planner has" in n for n in make_plan(
        store, flops=1e17, n_boot=20).plan.notes)
