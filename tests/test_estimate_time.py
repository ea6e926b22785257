"""How long a run takes: training steps, evaluations with their samples, checkpoint saves
and start-up, at a pace measured on this machine (gptcore.estimate, jobs.sweeps)."""

from datetime import timedelta

import pytest

from gptcore.config import apply_overrides, preset
from gptcore.estimate import (
    CHECKPOINT_MB_PER_S,
    DEFAULT_STARTUP_S,
    MachinePace,
    checkpoint_count,
    duration_estimate,
    eval_count,
    eval_flops,
    flops_per_token,
    memory_estimate,
    training_flops,
)
from jobs.sweeps import NOMINAL_PACE, measured_pace, plan_sweep
from storage.status import RunStatus

TINY = preset("tiny")  # 400 steps, an evaluation every 50, a checkpoint every 200


def test_a_run_evaluates_at_0_every_interval_and_at_the_end():
    assert eval_count(TINY) == 9  # 0, 50, ..., 400
    assert eval_count(apply_overrides(TINY, {"max_steps": 420})) == 10  # and at 420
    assert checkpoint_count(TINY) == 2  # at 200 and at the end
    assert checkpoint_count(apply_overrides(TINY, {"max_steps": 401})) == 3


def test_an_evaluation_is_forward_passes_over_both_splits_and_the_sample():
    forward = flops_per_token(TINY) / 3
    batches = 2 * TINY.eval_iters * TINY.batch_size * TINY.model.context_length
    sample = TINY.sample_tokens * TINY.model.context_length
    assert eval_flops(TINY) == pytest.approx(forward * (batches + sample))
    assert eval_flops(apply_overrides(TINY, {"sample_tokens": 0})) == pytest.approx(
        forward * batches)


def test_the_estimate_adds_evaluations_checkpoints_and_start_up_to_the_steps():
    pace = MachinePace(train_flops_per_s=1e9, eval_flops_per_s=5e8, startup_s=4.0)
    est = duration_estimate(TINY, pace)
    assert est.train_s == pytest.approx(training_flops(TINY, 400) / 1e9)
    assert est.eval_s == pytest.approx(9 * eval_flops(TINY) / 5e8)
    mem = memory_estimate(TINY)
    written = 2 * (mem.params_mb + mem.optimizer_mb) + 9 * mem.params_mb
    assert est.checkpoint_s == pytest.approx(written / CHECKPOINT_MB_PER_S)
    assert est.total_s == pytest.approx(est.train_s + est.eval_s + est.checkpoint_s + 4.0)
    # Evaluating ten times as often costs ten times the evaluations, not nothing.
    often = duration_estimate(apply_overrides(TINY, {"eval_interval": 5}), pace)
    assert often.eval_s == pytest.approx(81 * eval_flops(TINY) / 5e8)


def test_a_sweep_estimate_includes_its_evaluations():
    plan = plan_sweep(TINY, ["eval_interval=10,400"], [])
    frequent, rare = (duration_estimate(c, NOMINAL_PACE) for c in plan.configs)
    assert plan.estimated_seconds == pytest.approx(frequent.total_s + rare.total_s)
    assert frequent.total_s > rare.total_s + 35 * eval_flops(TINY) / NOMINAL_PACE.train_flops_per_s
    assert frequent.eval_s - rare.eval_s == pytest.approx(
        (41 - 2) * eval_flops(TINY) / NOMINAL_PACE.train_flops_per_s)


def test_the_pace_is_measured_from_the_newest_finished_run(store):
    run_id = store.create_run("measured", TINY.to_dict(), status=RunStatus.RUNNING,
                              max_steps=400)
    started = store.get_run(run_id).started_at.timestamp()
    # Claimed, 6 s of start-up, then the step-0 evaluation (2 s), then training.
    store.log_metrics(run_id, [
        ("val/loss", 0, 5.0, started + 8.0), ("eval_time_ms", 0, 2000.0, started + 8.0),
        ("eval_time_ms", 50, 1000.0, started + 20.0), ("eval_time_ms", 100, 1000.0, 0.0),
        ("tokens_per_sec", 10, 4000.0, 0.0), ("tokens_per_sec", 20, 5000.0, 0.0),
        ("tokens_per_sec", 30, 6000.0, 0.0)])
    store.set_status(run_id, RunStatus.COMPLETED)
    pace = measured_pace(store)
    assert pace.train_flops_per_s == pytest.approx(5000.0 * flops_per_token(TINY))
    assert pace.eval_flops_per_s == pytest.approx(eval_flops(TINY) / 1.0)
    assert pace.startup_s == pytest.approx(6.0, abs=0.01)
    assert pace.run_id == run_id  # the New run page names it


def test_the_training_pace_is_what_the_run_spent_per_step_not_its_median_step(store):
    """New run's estimates were a quarter short: the median tokens/s sees only the steps,
    not the saves, writes and stalls between them that the run's own time holds."""
    run_id = store.create_run("measured", TINY.to_dict(), status=RunStatus.RUNNING,
                              max_steps=400)
    started = store.get_run(run_id).started_at.timestamp()
    store.log_metrics(run_id, [
        ("val/loss", 0, 5.0, started + 8.0), ("eval_time_ms", 0, 2000.0, started + 8.0),
        *[("eval_time_ms", s, 1000.0, 0.0) for s in range(50, 401, 50)],
        ("tokens_per_sec", 10, 5000.0, 0.0)])
    store.update_run(run_id, last_step=400, trained_s=100.0)
    store.set_status(run_id, RunStatus.COMPLETED)
    pace = measured_pace(store)
    saves = duration_estimate(TINY, MachinePace(train_flops_per_s=1.0)).checkpoint_s
    train_s = 100.0 - 6.0 - (2.0 + 8 * 1.0) - saves  # less start-up, evaluations, saves
    assert pace.train_flops_per_s == pytest.approx(training_flops(TINY, 400) / train_s)
    # So the estimate of the same run is the time it took.
    assert duration_estimate(TINY, pace).total_s == pytest.approx(100.0, rel=0.02)


def test_a_run_without_timings_falls_back_to_the_default_start_up(store):
    run_id = store.create_run("old", TINY.to_dict(), status=RunStatus.RUNNING, max_steps=400)
    store.log_metrics(run_id, [("tokens_per_sec", 10, 5000.0, 0.0)])
    store.set_status(run_id, RunStatus.COMPLETED)
    pace = measured_pace(store)
    assert pace.eval_flops_per_s is None and pace.startup_s == DEFAULT_STARTUP_S
    assert timedelta(seconds=duration_estimate(TINY, pace).eval_s) > timedelta(0)
