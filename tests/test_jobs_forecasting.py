"""jobs.forecasting: a recorded run's forecast, read from a real SQLite database."""

import subprocess
import sys

import numpy as np
import pytest

from gptcore.config import TrainConfig
from gptcore.errors import GptdashError
from gptcore.schedule import lr_at
from jobs.forecasting import forecast_report, lr_schedule, run_forecast

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
                           "family_size", "band_from", "left_out"}
    assert report["calibrated"] is False and report["family_size"] == 0  # no relative
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
