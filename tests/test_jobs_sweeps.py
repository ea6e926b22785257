"""jobs.sweeps: plan, check and queue a sweep; cut a confident loser while it trains."""

import numpy as np
import pytest
from test_jobs import micro

from analysis.law import annealing_areas
from gptcore.config import TrainConfig, apply_overrides, preset
from gptcore.errors import GptdashError
from gptcore.estimate import duration_estimate
from jobs import halving, runner
from jobs.forecasting import lr_schedule, run_forecast
from jobs.halving import cut_reason
from jobs.manager import claim_here
from jobs.sweeps import (
    NOMINAL_PACE,
    cut_problem,
    measured_pace,
    plan_sweep,
    submit_repeats,
    submit_sweep,
)


def test_plan_crosses_the_grids_into_validated_configs():
    plan = plan_sweep(preset("tiny"), ["lr=1e-3,3e-3,1e-2", "n_layers=2,4"], [])
    assert plan.params == ["lr", "n_layers"]
    assert [(c.lr, c.model.n_layers) for c in plan.configs] == [
        (1e-3, 2), (1e-3, 4), (3e-3, 2), (3e-3, 4), (1e-2, 2), (1e-2, 4)]
    assert all(c.max_steps == 400 for c in plan.configs)  # the rest is the base's
    assert plan.label(3) == "lr=0.003 n_layers=4"
    assert plan.spec["grids"] == ["lr=1e-3,3e-3,1e-2", "n_layers=2,4"]
    assert plan.estimated_seconds == pytest.approx(
        sum(duration_estimate(c, NOMINAL_PACE).total_s for c in plan.configs))


def test_random_draws_join_every_grid_combination():
    plan = plan_sweep(preset("tiny"), ["n_layers=2,4"], ["lr=1e-3:1e-2:log"], random=3, seed=1)
    assert len(plan.configs) == 6 and plan.params == ["n_layers", "lr"]
    lrs = [c.lr for c in plan.configs]
    assert lrs[:3] == lrs[3:] and all(1e-3 <= lr <= 1e-2 for lr in lrs)
    again = plan_sweep(preset("tiny"), ["n_layers=2,4"], ["lr=1e-3:1e-2:log"], random=3, seed=1)
    assert [c.lr for c in again.configs] == lrs


@pytest.mark.parametrize("grids, ranges, random, message", [
    (["lr=1e-3,abc"], [], 0, r"the sweep's second of 2 runs \(lr=abc\): lr must be a number"),
    (["n_heads=4,5"], [], 0,
     r"the sweep's second of 2 runs \(n_heads=5\): emb_dim 96 is not divisible"),
    (["lrr=1,2"], [], 0, "unknown setting 'lrr'"),
    (["lr"], [], 0, "--grid needs KEY=V1,V2"),
    ([], ["lr=1:0.1"], 2, "LOW must be below HIGH"),
    ([], [], 0, "a sweep needs at least one --grid"),
])
def test_a_bad_spec_or_value_is_refused(grids, ranges, random, message):
    with pytest.raises(GptdashError, match=message):
        plan_sweep(preset("tiny"), grids, ranges, random=random)


def test_seeds_repeat_each_point_from_the_base_seed_and_are_not_a_swept_param():
    plan = plan_sweep(apply_overrides(preset("tiny"), {"seed": 5}), ["lr=1e-3,3e-3"], [],
                      seeds=3)
    assert [(c.lr, c.seed) for c in plan.configs] == [
        (1e-3, 5), (1e-3, 6), (1e-3, 7), (3e-3, 5), (3e-3, 6), (3e-3, 7)]
    assert plan.params == ["lr"] and plan.spec["seeds"] == 3
    assert plan.label(1) == "lr=0.001 seed=6"
    with pytest.raises(GptdashError, match="--seeds 2 sets seed itself"):
        plan_sweep(preset("tiny"), ["seed=1,2"], [], seeds=2)


def test_seeds_alone_queue_runs_that_differ_only_in_seed(store):
    plan = plan_sweep(micro(), [], [], seeds=3)
    sweep_id, run_ids = submit_sweep(store, plan, tags=["seeds"], notes="spread")
    runs = store.list_runs(sweep_id=sweep_id)
    assert store.get_sweep(sweep_id).name == "sweep 3 seeds" and len(run_ids) == 3
    assert sorted(r.config["seed"] for r in runs) == [1337, 1338, 1339]
    assert all(r.tags == ["seeds"] and r.notes == "spread" for r in runs)
    assert len({str({k: v for k, v in r.config.items() if k != "seed"}) for r in runs}) == 1


def test_repeats_of_one_config_are_a_sweep_named_after_the_run(store):
    sweep_id, run_ids = submit_repeats(store, micro(seed=3), 2)
    names = sorted(r.name for r in store.list_runs(sweep_id=sweep_id))
    assert len(run_ids) == 2 and names == [f"{runner.default_name(micro())} seed={s}"
                                           for s in (3, 4)]


def test_submit_queues_one_run_per_config_in_the_sweep(store):
    plan = plan_sweep(micro(eval_interval=1), ["lr=1e-3,1e-2", "n_layers=1,2"], [])
    sweep_id, run_ids = submit_sweep(store, plan, name="lr sweep", cut=True)
    sweep = store.get_sweep(sweep_id)
    assert sweep.name == "lr sweep" and sweep.cut and sweep.spec["params"] == ["lr", "n_layers"]
    runs = {r.id: r for r in store.list_runs(sweep_id=sweep_id)}
    assert sorted(runs) == run_ids and len(run_ids) == 4
    for i, run_id in enumerate(run_ids):
        run = runs[run_id]
        assert run.status == "queued" and run.sweep_id == sweep_id
        assert TrainConfig.from_dict(run.config) == plan.configs[i]
        assert run.name == f"lr sweep {plan.label(i)}"
    assert runs[run_ids[1]].name == "lr sweep lr=0.001 n_layers=2"


def test_a_run_that_cannot_start_writes_nothing(store, tmp_path):
    plan = plan_sweep(micro(), [f"corpus=builtin,{tmp_path / 'missing.txt'}"], [])
    with pytest.raises(GptdashError,
                       match=r"the sweep's second of 2 runs \(corpus=.*missing.txt\)"):
        submit_sweep(store, plan, name=None, cut=False)
    assert store.list_sweeps() == [] and store.list_runs() == []


def test_only_a_cut_sweep_has_cut_points(store):
    plan = plan_sweep(micro(max_steps=80, eval_interval=4), ["lr=1e-3,1e-2"], [])
    _, (plain, _) = submit_sweep(store, plan, name=None, cut=False)
    _, (cut, _) = submit_sweep(store, plan, name=None, cut=True)
    alone = runner.create_run(store, micro(max_steps=80))
    assert halving.cut_points(store, plain) == [] and halving.cut_points(store, alone) == []
    assert halving.cut_points(store, cut) == [20, 40]


def train(store, run_id):
    claim_here(store, run_id)
    return runner.execute_run(store, run_id)


# An evaluation every step: 6 of them by the first cut point (step 6 of 24).
FAST = dict(max_steps=24, eval_interval=1, sample_tokens=0, checkpoint_interval=1000,
            warmup_steps=2, schedule="constant")


def test_a_confident_loser_is_cut_and_the_winner_is_not(store):
    plan = plan_sweep(micro(**FAST), ["lr=3e-2,1e-6"], [])
    _, (good, bad) = submit_sweep(store, plan, name="cut", cut=True)
    assert train(store, good).status == "completed"  # nothing to compare with yet
    result = train(store, bad)
    assert result.status == "stopped"
    run = store.get_run(bad)
    events = store.events([bad])
    cut = events[events["kind"] == "early_stop"]
    # At a cut point (a quarter or half of 24 steps), compared with the good run's forecast
    # from the same share of its own steps; the trainer stops one step later.
    assert len(cut) == 1 and int(cut["step"].iloc[0]) in (6, 12)
    at = int(cut["step"].iloc[0])
    assert run.status == "stopped" and run.last_step <= at + 1 < 24
    assert run.error.startswith(f"stopped at step {at}: forecast ")
    assert " vs best " in run.error
    assert list(cut["message"]) == [run.error]
    assert store.get_run(good).error is None


def test_a_failing_cut_check_never_stops_training(store, monkeypatch):
    calls = []

    def broken(*args, **kwargs):
        calls.append(kwargs["upto"])
        raise RuntimeError("database hiccup")

    monkeypatch.setattr(halving, "cut_reason", broken)
    plan = plan_sweep(micro(**FAST), ["lr=1e-2,3e-3"], [])  # a cut needs two runs
    _, (run_id, _) = submit_sweep(store, plan, name=None, cut=True)
    assert train(store, run_id).status == "completed"
    assert calls == [6, 12]  # asked once at each cut point, not at every evaluation


def test_a_cut_that_could_never_act_is_refused_before_anything_is_written(store):
    # tiny evaluates every 50 of 400 steps: 2 evaluations by the first cut at step 100.
    plan = plan_sweep(preset("tiny"), ["lr=1e-3,3e-3"], [])
    assert "set eval_interval to 20 or less" in cut_problem(plan)
    with pytest.raises(GptdashError, match="eval_interval to 20 or less"):
        submit_sweep(store, plan, name="never cuts", cut=True)
    assert store.list_sweeps() == [] and store.list_runs() == []
    # Without the cut the same sweep is fine, and evaluating often enough makes the cut fine.
    assert cut_problem(plan_sweep(apply_overrides(preset("tiny"), {"eval_interval": 20}),
                                  ["lr=1e-3,3e-3"], [])) is None
    submit_sweep(store, plan, name="no cut", cut=False)
    assert len(store.list_runs()) == 2


# The annealing law with a strong decay term: a run forecast before it has seen its lr
# decay predicts a higher final loss than the one it will reach.
COSINE = dict(max_steps=400, lr=1e-2, min_lr=0.0, schedule="cosine", warmup_steps=0,
              eval_interval=10)


def _law_curve(cfg, upto):
    s1, s2 = annealing_areas(lr_schedule(cfg))
    steps = np.arange(cfg.eval_interval, upto + 1, cfg.eval_interval)
    return [(int(s), float(2.0 + 0.5 * s1[s] ** -0.5 - 0.2 * s2[s])) for s in steps]


def test_a_run_as_good_as_a_finished_one_is_not_cut_before_its_lr_decays(store):
    cfg = apply_overrides(preset("tiny"), COSINE)
    sweep_id = store.create_sweep("twins", {}, cut=True)
    finished = store.create_run("finished", cfg.to_dict(), max_steps=cfg.max_steps,
                                status="running", sweep_id=sweep_id)
    store.log_metrics(finished, [("val/loss", s, v, 0.0) for s, v in _law_curve(cfg, 400)])
    store.set_status(finished, "completed")
    twin = store.create_run("twin", cfg.to_dict(), max_steps=cfg.max_steps, status="running",
                            sweep_id=sweep_id)
    store.log_metrics(twin, [("val/loss", s, v, 0.0) for s, v in _law_curve(cfg, 100)])
    # With the finished run as its relative, the twin's forecast from a quarter of its
    # steps sees the decay still to come ...
    early = run_forecast(store, twin, upto=100)
    final = _law_curve(cfg, 400)[-1][1]
    assert early.calibrated and early.predicted_final == pytest.approx(final, rel=1e-3)
    # ... and a run is never cut against its own repeat.
    assert cut_reason(store, twin, upto=100) is None


def _recorded(store, cfg, sweep_id, level, upto, status="completed"):
    run_id = store.create_run(f"seed={cfg.seed}", cfg.to_dict(),
                              max_steps=cfg.max_steps, status="running", sweep_id=sweep_id)
    store.log_metrics(run_id, [("val/loss", s, v + level, 0.0)
                               for s, v in _law_curve(cfg, upto)])
    if status != "running":
        store.set_status(run_id, status)
    return run_id


def test_the_cut_judges_seed_groups_by_their_mean_forecast(store):
    base = apply_overrides(preset("tiny"), COSINE)
    sweep_id = store.create_sweep("seeds", {}, cut=True)
    group_a = [apply_overrides(base, {"seed": seed}) for seed in (1, 2)]
    # Group B differs in a setting that leaves the curve alone: the levels below decide.
    group_b = [apply_overrides(base, {"log_interval": 5, "seed": seed}) for seed in (1, 2)]
    # Group A: one lucky seed (0.0) and one unlucky (+0.3): mean +0.15. Group B: +0.2 both.
    _recorded(store, group_a[0], sweep_id, 0.0, 400)
    unlucky = _recorded(store, group_a[1], sweep_id, 0.3, 100, status="running")
    _recorded(store, group_b[0], sweep_id, 0.2, 400)
    b_second = _recorded(store, group_b[1], sweep_id, 0.2, 100, status="running")
    # Alone, the unlucky seed is confidently worse than group B's runs; as a member of
    # group A (mean +0.15) it is not, and its own lucky repeat is no rival.
    assert run_forecast(store, unlucky, upto=100).low > run_forecast(store, b_second,
                                                                     upto=100).high
    assert cut_reason(store, unlucky, upto=100) is None
    # Group B (mean +0.2) is confidently worse than group A's mean, so its runs are cut.
    reason = cut_reason(store, b_second, upto=100)
    assert reason is not None and reason.startswith("stopped at step 100: forecast ")


def test_the_throughput_estimate_skips_a_run_this_version_cannot_read(store):
    old = store.create_run("old", {"no_such_setting": 1}, status="running", max_steps=10)
    store.log_metrics(old, [("tokens_per_sec", 1, 1000.0, 0.0)])
    store.set_status(old, "completed")
    assert measured_pace(store) is None  # no error: there is just nothing to measure
