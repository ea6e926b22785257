"""A calibration run: a short relative that turns a run's forecast from uncalibrated to
calibrated once it completes."""

import numpy as np
import pytest
from test_cli import gptdash

from analysis.law import annealing_areas
from gptcore.config import TrainConfig, apply_overrides, preset
from gptcore.errors import GptdashError
from jobs.calibration import CALIBRATION_TAG, calibration_config, submit_calibration
from jobs.forecasting import family_key, forecast_report, lr_schedule, run_forecast
from storage.store import RunStore

CFG = apply_overrides(preset("tiny"), {"max_steps": 400, "lr": 1e-2, "min_lr": 1e-3,
                                       "schedule": "cosine", "warmup_steps": 20,
                                       "eval_interval": 10})


def law(cfg: TrainConfig, upto: int, level: float = 2.0) -> list[tuple[str, int, float, float]]:
    """The annealing law's val curve for ``cfg`` (alpha 0.4, C 0.3, lambda 0.99)."""
    s1, s2 = annealing_areas(lr_schedule(cfg), 0.99)
    steps = range(cfg.eval_interval, upto + 1, cfg.eval_interval)
    return [("val/loss", s, float(level + 0.4 * s1[s] ** -0.4 - 0.3 * s2[s]), 0.0)
            for s in steps]


def test_the_calibration_config_holds_the_lr_then_cools_down_in_the_same_family():
    cal = calibration_config(CFG)
    assert cal.schedule == "wsd" and cal.decay_fraction == pytest.approx(0.2)
    assert cal.lr == CFG.lr and cal.max_steps == CFG.max_steps // 2
    assert cal.max_steps // cal.eval_interval >= 20  # a curve to fit, not a handful
    assert family_key(cal) == family_key(CFG)
    assert calibration_config(CFG, 60).max_steps == 60
    with pytest.raises(GptdashError, match="at least 20 steps"):
        calibration_config(CFG, 5)


def test_a_cancelled_run_is_not_calibrated(store):
    run_id = store.create_run("never trained", CFG.to_dict(), status="queued",
                              max_steps=CFG.max_steps)
    store.set_status(run_id, "cancelled")
    with pytest.raises(GptdashError, match="cancelled before it trained"):
        submit_calibration(store, run_id)
    assert [r.id for r in store.list_runs()] == [run_id]  # nothing queued


def test_a_finished_calibration_run_calibrates_the_forecast(store):
    run_id = store.create_run("cosine run", CFG.to_dict(), status="running",
                              max_steps=CFG.max_steps)
    store.log_metrics(run_id, law(CFG, 100))
    before = forecast_report(store, run_id)
    assert before["calibrated"] is False and before["family_size"] == 0

    cal_id = submit_calibration(store, run_id)
    cal = store.get_run(cal_id)
    assert cal.status == "queued" and CALIBRATION_TAG in cal.tags
    assert cal.name == "calibration for cosine run"
    # The worker would train it; its curve follows the same law at its own level.
    cal_cfg = TrainConfig.from_dict(cal.config)
    store.set_status(cal_id, "running")
    store.log_metrics(cal_id, law(cal_cfg, cal_cfg.max_steps, level=2.05))
    store.set_status(cal_id, "completed")

    after = run_forecast(store, run_id)
    assert after.calibrated and after.family_size == 1
    actual = law(CFG, 400)[-1][2]
    # From a quarter of its steps the cosine run's decay is foreseen: the uncalibrated
    # forecast from the same points was far higher.
    assert after.predicted_final == pytest.approx(actual, rel=0.005)
    assert before["predicted_final"] > actual * 1.02


def test_cli_calibrate_and_forecast_say_whether_it_is_calibrated(tmp_path):
    store = RunStore(f"sqlite:///{tmp_path / 'gptdash.db'}")
    run_id = store.create_run("cosine run", CFG.to_dict(), status="running",
                              max_steps=CFG.max_steps)
    store.log_metrics(run_id, law(CFG, 200))
    out = gptdash(tmp_path, "forecast", str(run_id))
    assert out.returncode == 0, out.stderr
    assert "uncalibrated: no finished relative" in out.stderr
    out = gptdash(tmp_path, "calibrate", str(run_id))
    assert out.returncode == 0, out.stderr
    cal_id = int(out.stdout.strip())
    assert store.get_run(cal_id).status == "queued"
    cal_cfg = TrainConfig.from_dict(store.get_run(cal_id).config)
    store.set_status(cal_id, "running")
    store.log_metrics(cal_id, law(cal_cfg, cal_cfg.max_steps))
    store.set_status(cal_id, "completed")
    out = gptdash(tmp_path, "forecast", str(run_id))
    assert "calibrated on 1 finished relative(s)" in out.stderr
    assert '"calibrated": true, "family_size": 1' in out.stdout
    assert np.isfinite(float(out.stdout.split('"predicted_final": ')[1].split(",")[0]))
    bad = gptdash(tmp_path, "calibrate", str(run_id), "--steps", "3")
    assert bad.returncode == 2 and "at least 20 steps" in bad.stderr
