"""One forecast of a run on every surface: Compare, Live and ``gptdash forecast`` show the
same numbers, a relative that finishes reaches them all, and a finished run has no note."""

import json
from dataclasses import replace

from test_app_pages import _app_test, _open, _texts
from test_calibration import CFG, law
from test_cli import gptdash

from jobs.recovery import worker_id
from storage.store import RunStore


def recorded(store: RunStore, cfg, upto: int, *, status: str, level: float = 2.0) -> int:
    run_id = store.create_run(f"lr {cfg.lr:g}", cfg.to_dict(), status="running",
                              max_steps=cfg.max_steps)
    store.update_run(run_id, worker=worker_id())  # training here: the app leaves it be
    store.log_metrics(run_id, law(cfg, upto, level))
    if status != "running":
        store.set_status(run_id, status)
    return run_id


def compare_row(at) -> dict:
    """The one row of Compare's forecast table (one run chosen)."""
    [table] = [t.value for t in at.table if "forecast final" in t.value.columns]
    [row] = table.to_dict("records")
    return row


def cli_forecast(home, run_id: int) -> dict:
    out = gptdash(home, "forecast", str(run_id))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_compare_live_and_the_cli_show_one_forecast_before_and_after_a_relative_finishes(home):
    store = RunStore()
    run_id = recorded(store, CFG, 100, status="running")
    with _app_test() as at:
        at.run()
        at.session_state["compare_ids"] = [run_id]
        _open(at, "app_pages/compare.py")
        before = cli_forecast(home, run_id)
        assert not before["calibrated"]
        row = compare_row(at)
        assert row["forecast final"] == f"{before['predicted_final']:.4f}"
        assert row["calibration"] == "uncalibrated"
        assert "with 90% probability" in _texts(at.caption)  # the band's own level

        # A relative finishes; the run has no new evaluation. Compare kept its old,
        # uncalibrated forecast while Live and the CLI had moved on.
        relative = recorded(store, replace(CFG, lr=5e-3, min_lr=5e-4), CFG.max_steps,
                            status="completed", level=2.05)
        after = cli_forecast(home, run_id)
        assert after["calibrated"] and after["family_size"] == 1
        assert after["predicted_final"] != before["predicted_final"]
        at.run()
        row = compare_row(at)
        assert row["forecast final"] == f"{after['predicted_final']:.4f}"
        assert row["band"] == f"{after['low']:.3g}–{after['high']:.3g}"
        assert row["calibration"] == "calibrated (1)"

        _open(at, "app_pages/live.py")
        at.selectbox(key="live_pick").set_value(run_id).run()
        assert not at.exception
        summary = _texts(at.caption)
        assert (f"Forecast final val loss {after['predicted_final']:.3g} "
                f"({after['low']:.3g}–{after['high']:.3g}, 90% band)") in summary
        assert "calibrated on 1 finished relative" in summary

        # The relative's own page: it completed, so no note on a decay still to come.
        at.selectbox(key="live_pick").set_value(relative).run()
        assert not at.exception
        assert "Forecast final val loss" in _texts(at.caption)
        assert "Note:" not in _texts(at.caption)
    store.close()


def test_live_shows_no_forecast_note_on_a_finished_run(home):
    # Stopped early at step 150 of a cosine run: too little annealing seen to fit its
    # effect, worth a note while the run goes on and none once it has finished.
    store = RunStore()
    running = recorded(store, CFG, 150, status="running")
    with _app_test() as at:
        at.run()
        _open(at, "app_pages/live.py")
        at.selectbox(key="live_pick").set_value(running).run()
        assert "Note: the evaluations so far do not show the lr decay" in _texts(at.caption)
        store.set_status(running, "completed")
        at.run()
        assert not at.exception
        assert "Forecast final val loss" in _texts(at.caption)
        assert "Note:" not in _texts(at.caption)
    store.close()


def test_the_cli_says_which_relatives_it_left_out_and_why(home):
    store = RunStore()
    recorded(store, replace(CFG, lr=5e-3, min_lr=5e-4), CFG.max_steps, status="completed")
    guarded = recorded(store, replace(CFG, lr=3e-3, min_lr=3e-4), CFG.max_steps,
                       status="completed", level=2.05)
    store.log_event(guarded, 120, "rollback", "rolled back to step 100 and skipped 2 batches")
    run_id = recorded(store, CFG, 100, status="running")
    store.close()
    out = gptdash(home, "forecast", str(run_id))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["family_size"] == 1
    assert ("calibrated on 1 finished relative(s); left out of the family's fit: "
            f"#{guarded}: rolled back by the divergence guard at step 120") in out.stderr
