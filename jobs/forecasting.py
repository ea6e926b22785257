"""A recorded run's final-loss forecast: its val-loss curve and lr schedule, fitted by
``analysis.forecast``.

No torch: ``gptdash forecast`` and the pages read forecasts at once.
"""

from __future__ import annotations

import functools
import json
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from analysis.forecast import MIN_POINTS, Forecast, annealing_areas, forecast_final
from gptcore.config import TrainConfig
from gptcore.errors import GptdashError
from gptcore.metric_keys import VAL_LOSS
from gptcore.schedule import lr_array
from storage.status import RunStatus

if TYPE_CHECKING:
    from storage.store import RunRecord, RunStore



def lr_schedule(cfg: TrainConfig) -> np.ndarray:
    """The lr of every optimizer step 0..max_steps-1, as the trainer sets it (read-only)."""
    return _schedule(json.dumps(cfg.to_dict(), sort_keys=True))[0]


def _areas(cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    return _schedule(json.dumps(cfg.to_dict(), sort_keys=True))[1]


# Kept for the last few configs: a live page refits a run's forecast at each new
# evaluation, and the schedule and its annealing areas never change (on a 10-million-step
# run they take about a second to compute, the fit itself milliseconds).
@functools.lru_cache(maxsize=8)
def _schedule(config_json: str) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    lrs = lr_array(TrainConfig.from_dict(json.loads(config_json)))
    areas = annealing_areas(lrs)
    for array in (lrs, *areas):
        array.setflags(write=False)  # shared between callers
    return lrs, areas


def _val_curve(store: RunStore, run_id: int, upto: int | None) -> tuple[list[int], list[float]]:
    frame = store.metrics([run_id], [VAL_LOSS], max_step=upto)
    return [int(s) for s in frame["step"]], [float(v) for v in frame["value"]]


def _forecast(run: RunRecord, steps: list[int], losses: list[float],
              upto: int | None) -> Forecast | None:
    cfg = TrainConfig.from_dict(run.config)
    try:
        return forecast_final(steps, losses, lr_schedule(cfg), cfg.max_steps, upto_step=upto,
                              areas=_areas(cfg))
    except ValueError as exc:
        raise GptdashError(f"cannot forecast run {run.id}: {exc}") from None


def run_forecast(store: RunStore, run_id: int, *, upto: int | None = None) -> Forecast | None:
    """Forecast run ``run_id``'s val loss at its max_steps from its evaluations so far (only
    those at or before step ``upto`` when given); None when it has too few evaluations."""
    if upto is not None and upto < 1:
        raise GptdashError(f"--upto must be a step of 1 or more, not {upto}")
    run = store.get_run(run_id)
    steps, losses = _val_curve(store, run_id, upto)
    return _forecast(run, steps, losses, upto)


def forecast_report(store: RunStore, run_id: int, *, upto: int | None = None) -> dict[str, Any]:
    """The forecast as plain values (for JSON): run_id, status, predicted_final, low, high,
    upto_step, max_steps, actual_final (the last evaluation's val loss once the run has
    completed, else None) and note.

    Raises GptdashError when the run has too few evaluations to forecast.
    """
    run = store.get_run(run_id)
    if upto is not None and upto < 1:
        raise GptdashError(f"--upto must be a step of 1 or more, not {upto}")
    steps, losses = _val_curve(store, run_id, upto)
    forecast = _forecast(run, steps, losses, upto)
    if forecast is None:
        usable = sum(1 for s, v in zip(steps, losses, strict=True) if s >= 1 and math.isfinite(v))
        where = f" up to step {upto}" if upto is not None else ""
        advice = ("wait for more, or evaluate more often (a smaller eval_interval)"
                  if run.status in (RunStatus.QUEUED, RunStatus.RUNNING) and upto is None
                  else "evaluate more often (a smaller eval_interval)")
        raise GptdashError(f"run {run_id} ({run.status}) has {usable} evaluation(s) after "
                           f"step 0{where}; a forecast needs at least {MIN_POINTS}: {advice}")
    actual = None
    if run.status == RunStatus.COMPLETED:
        _, all_losses = _val_curve(store, run_id, None)
        actual = all_losses[-1] if all_losses else None
    return {"run_id": run.id, "status": run.status,
            "predicted_final": forecast.predicted_final, "low": forecast.low,
            "high": forecast.high, "upto_step": forecast.upto_step,
            "max_steps": forecast.max_steps, "actual_final": actual, "note": forecast.note}
