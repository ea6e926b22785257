"""jobs.forecasting: a recorded run's forecast, read from a real SQLite database."""

import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from test_calibration import CFG as CAL_CFG
from test_calibration import law

from analysis.forecast import uncalibrated_half_width
from gptcore.config import TrainConfig
from gptcore.errors import GptdashError
from gptcore.schedule import lr_at
from jobs.forecasting import forecast_report, lr_schedule, run_forecast
from ui.forecast_view import calibration_label, calibration_text

# A constant lr makes the law a plain power law in steps: L(s) = L0 + A * (lr * s) ** -alpha.
CFG = TrainConfig(max_steps=200, lr=1e-3, schedule="constant", warmup_steps=0)
L0, A, ALPHA = 2.0, 0.3, 0.5


def true_loss(step: int) -> float:
    if step == 0:
        return 5.5  # before any step: not on the law, and never fitted
    return L0 + A * (CFG.lr * step) ** -ALPHA


def recorded_run(store, steps, *, status="running", noise=0.0) -> int:
    run_id = store.create_run("curve", CFG.to_dict(), status="running", max_steps=CFG.max_steps)
    rng = np.random.default_rng(0)
    store.log_metrics(run_id, [("val/loss", s, true_loss(s) + noise * rng.normal(), 0.0)
                               for s in steps])
    if status != "running":
        store.set_status(run_id, status)
    return run_id


def test_lr_schedule_is_lr_at_for_every_step():
    cfg = TrainConfig(max_steps=30, warmup_steps=5, schedule="cosine")
    np.testing.assert_allclose(lr_schedule(cfg), [lr_at(s, cfg) for s in range(30)],
                               rtol=1e-12)
    assert lr_schedule(cfg) is lr_schedule(cfg)  # computed once per config


def test_forecast_of_a_recorded_curve_finds_its_final_loss(store):
    run_id = recorded_run(store, range(0, 201, 10), noise=0.002)
    forecast = run_forecast(store, run_id, upto=100)
    assert forecast.upto_step == 100 and forecast.max_steps == 200
    assert forecast.low < true_loss(200) < forecast.high
    assert forecast.predicted_final == pytest.approx(true_loss(200), abs=0.01)


def test_report_of_a_completed_run_has_its_actual_final_loss(store):
    run_id = recorded_run(store, range(0, 201, 20), status="completed")
    report = forecast_report(store, run_id, upto=120)
    assert set(report) == {"run_id", "status", "predicted_final", "low", "high", "upto_step",
                           "max_steps", "actual_final", "note", "level", "calibrated",
                           "calibrated_on", "family_size", "other_shapes", "band_from",
                           "left_out"}
    assert report["calibrated"] is False and report["family_size"] == 0  # no relative
    assert report["calibrated_on"] is None and report["other_shapes"] == 0
    assert report["status"] == "completed" and report["upto_step"] == 120
    assert report["actual_final"] == pytest.approx(true_loss(200))
    assert report["predicted_final"] == pytest.approx(true_loss(200), abs=0.01)
    assert report["note"] is None  # a constant lr has no decay to leave out


def test_report_of_a_running_run_has_no_actual_final(store):
    run_id = recorded_run(store, range(0, 101, 10))
    assert forecast_report(store, run_id)["actual_final"] is None


def test_too_few_evaluations_is_none_or_a_clear_error(store):
    run_id = recorded_run(store, [0, 10, 20, 30])
    assert run_forecast(store, run_id) is None
    with pytest.raises(GptdashError, match=r"has 3 evaluation\(s\) after step 0; a forecast "
                                           r"needs at least 5"):
        forecast_report(store, run_id)
    with pytest.raises(GptdashError, match="--upto must be a step of 1 or more"):
        forecast_report(store, run_id, upto=0)


def test_forecasting_needs_no_torch():
    code = "import sys, jobs.forecasting, jobs.sweeps; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


# ---- a family in the database -------------------------------------------------------------
def relative(store, cfg, *, upto=None, level=2.0, status="completed", curve=None) -> int:
    """A run of ``cfg`` whose val curve is the annealing law (or ``curve``: step -> loss)."""
    run_id = store.create_run(f"lr {cfg.lr:g} {cfg.schedule}", cfg.to_dict(), status="running",
                              max_steps=cfg.max_steps)
    rows = (law(cfg, upto or cfg.max_steps, level) if curve is None else
            [("val/loss", s, curve(s), 0.0)
             for s in range(cfg.eval_interval, cfg.max_steps + 1, cfg.eval_interval)])
    store.log_metrics(run_id, rows)
    if status != "running":
        store.set_status(run_id, status)
    return run_id


def healthy_family(store) -> list[int]:
    return [relative(store, CAL_CFG, level=2.0),
            relative(store, replace(CAL_CFG, schedule="wsd", lr=5e-3, min_lr=5e-4), level=2.05),
            relative(store, replace(CAL_CFG, schedule="linear", lr=3e-3, min_lr=3e-4),
                     level=1.95)]


def test_a_diverged_relative_is_left_out_and_poisons_no_forecast(store):
    kin = healthy_family(store)
    # lr 1.0: it falls a little, then learns nothing more. Kept in the family, it bent the
    # law's shape for all: bands of 0-24 on losses near 2, its own forecast -23.84.
    bad = relative(store, replace(CAL_CFG, lr=1.0, min_lr=0.1),
                   curve=lambda s: 6.0 + 1.5 * np.exp(-s / 30))
    new = relative(store, replace(CAL_CFG, lr=4e-3, min_lr=4e-4), upto=160, level=2.02,
                   status="running")
    why = f"#{bad}: fits the law of its relatives far worse than they do"
    for run_id in (new, kin[0]):
        report = forecast_report(store, run_id, upto=160)
        assert 0 < report["low"] < report["predicted_final"] < report["high"]
        assert report["high"] - report["low"] < 0.05 * report["predicted_final"]
        assert report["calibrated"] and report["family_size"] == len(kin) - (run_id in kin)
        assert len(report["left_out"]) == 1 and report["left_out"][0].startswith(why)
    healthy = forecast_report(store, kin[0], upto=160)
    assert healthy["predicted_final"] == pytest.approx(healthy["actual_final"], rel=0.005)
    own = forecast_report(store, bad)
    assert own["predicted_final"] >= 0 and own["low"] >= 0
    assert "this run's curve does not follow the law" in own["note"]


def test_a_relative_the_guard_rolled_back_is_left_out(store):
    kin = healthy_family(store)
    store.log_event(kin[1], 120, "rollback", "rolled back to step 100 and skipped 2 batches")
    new = relative(store, replace(CAL_CFG, lr=4e-3, min_lr=4e-4), upto=160, status="running")
    report = forecast_report(store, new)
    assert report["left_out"] == [f"#{kin[1]}: rolled back by the divergence guard at step 120"]
    assert report["family_size"] == 2


def test_a_finished_run_has_no_forecast_note(store):
    # Stopped early at step 150 of a cosine run: the curve shows too little annealing to
    # fit C, which on a running run is worth a note, and on a finished one is not.
    cfg = replace(CAL_CFG, max_steps=400)
    running = relative(store, cfg, upto=150, status="running")
    assert "do not show the lr decay" in run_forecast(store, running).note
    finished = relative(store, cfg, upto=150)
    assert run_forecast(store, finished).note is None
    assert forecast_report(store, finished)["note"] is None


def test_the_forecast_is_refitted_when_a_relative_finishes_and_not_before(store):
    run_id = relative(store, CAL_CFG, upto=100, status="running")
    before = run_forecast(store, run_id)
    assert run_forecast(store, run_id) is before  # kept: nothing that decides it changed
    assert not before.calibrated
    other = relative(store, replace(CAL_CFG, lr=5e-3, min_lr=5e-4), level=2.05,
                     status="running")
    assert run_forecast(store, run_id) is before  # a running relative is no relative yet
    store.set_status(other, "completed")
    after = run_forecast(store, run_id)
    assert after.calibrated and after.family_size == 1
    assert forecast_report(store, run_id)["predicted_final"] == after.predicted_final


# ---- a first run of a new shape -----------------------------------------------------------
def other_shape(cfg, emb_dim):
    return replace(cfg, model=replace(cfg.model, emb_dim=emb_dim))


def test_a_first_run_of_a_new_shape_is_calibrated_on_other_shapes_and_says_so(store):
    # Two other shapes on the same data and optimizer, three finished runs each, all on one
    # law (alpha 0.4, C 0.3, lambda 0.99) at their own levels; the new shape has none.
    for emb_dim, level in ((64, 2.2), (128, 1.9)):
        for lr, schedule in ((1e-2, "cosine"), (5e-3, "wsd"), (3e-3, "linear")):
            relative(store, replace(other_shape(CAL_CFG, emb_dim), lr=lr, min_lr=lr / 10,
                                    schedule=schedule), level=level)
    relative(store, replace(other_shape(CAL_CFG, 80), corpus="elsewhere.txt"))  # other data
    relative(store, replace(other_shape(CAL_CFG, 96), batch_size=2 * CAL_CFG.batch_size))
    new = relative(store, CAL_CFG, upto=160, level=2.05, status="running")
    report = forecast_report(store, new)
    assert report["calibrated"] and report["calibrated_on"] == "other shapes"
    assert report["family_size"] == 6 and report["other_shapes"] == 2
    assert report["band_from"] == "other shapes"
    # The cosine decay still to come is foreseen: alone, its fit left it out.
    actual = law(CAL_CFG, CAL_CFG.max_steps, 2.05)[-1][2]
    assert report["predicted_final"] == pytest.approx(actual, rel=0.01)
    assert report["low"] <= actual <= report["high"]
    text = calibration_text(run_forecast(store, new))
    assert text.startswith("calibrated on other shapes (6 runs)")
    assert calibration_label(run_forecast(store, new)) == "calibrated on other shapes (6 runs)"


def test_one_other_shape_calibrates_with_the_rule_band_and_its_own_family_wins(store):
    for lr in (1e-2, 5e-3):
        relative(store, replace(other_shape(CAL_CFG, 64), lr=lr, min_lr=lr / 10), level=2.2)
    new = relative(store, CAL_CFG, upto=160, level=2.05, status="running")
    report = forecast_report(store, new)
    assert report["calibrated_on"] == "other shapes" and report["other_shapes"] == 1
    assert report["band_from"] == "rule"  # one shape cannot measure another's misses
    rule = uncalibrated_half_width(160, CAL_CFG.max_steps) * report["predicted_final"]
    assert report["high"] - report["predicted_final"] == pytest.approx(rule)
    relative(store, replace(CAL_CFG, lr=5e-3, min_lr=5e-4), level=2.0)  # one of its own
    report = forecast_report(store, new)
    assert report["calibrated_on"] == "relatives" and report["other_shapes"] == 0
    assert report["family_size"] == 1


def test_with_nothing_finished_the_band_is_at_least_the_rule(store):
    run_id = recorded_run(store, range(0, 201, 10), noise=0.002)
    forecast = run_forecast(store, run_id, upto=80)
    assert not forecast.calibrated and forecast.band_source == "rule"
    rule = uncalibrated_half_width(80, CFG.max_steps)  # 0.16 * sqrt(0.6): about 12%
    assert forecast.half_width >= rule * forecast.predicted_final * (1 - 1e-9)
    assert forecast.curve([200]).high[0] == pytest.approx(forecast.high)
    assert "the band is ±12%" in calibration_text(forecast)
