"""A calibration run: a short relative of a run whose finished curve gives the run's
forecast family its shape constants (``jobs.forecasting``).

It keeps everything that makes a family (model, data, batch, optimizer, evaluation set)
and the run's peak learning rate, holds that lr constant and then cools down quickly
(the WSD schedule with a short decay): the flat part shows the law's power in steps, the
cool-down its annealing drop. It trains half the run's steps, evaluated often enough to
fit. No torch: queued like any run, for whichever worker is free.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

from gptcore.config import TrainConfig
from gptcore.errors import GptdashError
from jobs import actions
from storage.status import RunStatus

if TYPE_CHECKING:
    from storage.store import RunStore

CALIBRATION_TAG = "calibration"
COOLDOWN_FRACTION = 0.2  # the last fifth of the calibration run decays the lr
SHARE_OF_STEPS = 0.5
MIN_EVALUATIONS = 20  # the family fit wants a curve, not a handful of points
MIN_STEPS = 20


def calibration_config(cfg: TrainConfig, steps: int | None = None) -> TrainConfig:
    """``cfg`` as a calibration run: its lr held, then a quick cool-down, over ``steps``
    (half of ``cfg.max_steps`` by default)."""
    if steps is None:
        steps = max(MIN_STEPS, round(SHARE_OF_STEPS * cfg.max_steps))
    if steps < MIN_STEPS:
        raise GptdashError(f"a calibration run needs at least {MIN_STEPS} steps, not {steps}")
    min_lr = cfg.min_lr if cfg.min_lr < cfg.lr else cfg.lr / 10
    return replace(cfg, schedule="wsd", decay_fraction=COOLDOWN_FRACTION, max_steps=steps,
                   min_lr=min_lr, warmup_steps=min(cfg.warmup_steps, steps // 4),
                   eval_interval=max(1, min(cfg.eval_interval, steps // MIN_EVALUATIONS)),
                   early_stopping_patience=0).validate()


def submit_calibration(store: RunStore, run_id: int, *, steps: int | None = None) -> int:
    """Queue a calibration run for run ``run_id``; its id. A cancelled run is refused: it
    never trained, so it has no forecast to calibrate."""
    run = store.get_run(run_id)
    if run.status == RunStatus.CANCELLED:
        raise GptdashError(f"run {run_id} was cancelled before it trained: it has no forecast "
                           "to calibrate; submit it again first")
    cfg = calibration_config(TrainConfig.from_dict(run.config), steps)
    return actions.submit(store, cfg, name=f"calibration for {run.name}",
                          tags=[CALIBRATION_TAG],
                          notes=f"Gives run {run_id}'s forecast family its shape constants.")
