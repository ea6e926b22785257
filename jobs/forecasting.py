"""A recorded run's final-loss forecast: its val-loss curve and lr schedule, fitted by
``analysis.forecast``, calibrated on its family by ``analysis.family``.

A run's family is the completed runs of the same model shape, tokenizer, corpus, batch,
optimizer and evaluation set (``family_key``); they may differ in learning rate,
schedule, steps and seed. With at least one, the law's shape constants come from them
and the forecast is calibrated; with two or more, the band's width comes from how far
forecasts from the same share of steps missed on them, each left out in turn. Without
any, a run borrows the law's shape from the completed runs of other model shapes that
share the rest of its family's fields, "calibrated on other shapes": with two or more
shapes its band is how far each shape's runs missed with the others' law; with one it is
the rule below. With nothing finished at all the run is forecast from its own curve
alone, "uncalibrated", and its band is at least ``analysis.forecast``'s rule for a
forecast nothing has checked (``UNCALIBRATED_MISS``). A relative whose curve
does not follow the law (diverged, rolled back by the guard, or far off the others' law)
is left out of the family, and the forecast says which and why; a run whose own curve
is such is forecast alone, with a note.

``run_forecast`` is the one forecast of a run that every page and the CLI show.

No torch: ``gptdash forecast`` and the pages read forecasts at once.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from analysis.family import (
    Curve,
    FamilyFit,
    band_half_width,
    band_share,
    divergence,
    far_worse,
    fit_family,
    fit_shapes,
    leave_one_out_errors,
    leave_one_out_fits,
    leave_one_shape_out_errors,
    misfit,
    screen,
)
from analysis.forecast import (
    BAND_LEVEL,
    MIN_POINTS,
    MIN_POINTS_CALIBRATED,
    Forecast,
    forecast_final,
)
from analysis.law import annealing_areas
from gptcore.config import TrainConfig
from gptcore.errors import GptdashError
from gptcore.metric_keys import VAL_LOSS
from gptcore.schedule import lr_array
from storage.status import RunStatus

if TYPE_CHECKING:
    from storage.store import RunRecord, RunStore

# What a family shares besides the model's shape (everything under ``model``): the
# data, the tokens per step, the optimizer and the evaluation set. Learning rate,
# schedule, warmup, steps and seed may differ.
FAMILY_FIELDS = ("corpus", "tokenizer", "val_fraction", "batch_size", "grad_accum_steps",
                 "nproc", "optimizer", "weight_decay", "beta1", "beta2", "momentum",
                 "grad_clip", "label_smoothing", "eval_iters", "fixed_eval")
# A first run borrows the law's shape from runs of other model shapes that share all of
# FAMILY_FIELDS with it: the annealing constant is in the lr's units, which are the
# optimizer's, and the batch sets how far a step of a given lr goes, so only the model
# (whose size each run's own level and scale carry) may differ.
# The newest other shapes a first run borrows from, each with at most MAX_RELATIVES runs:
# every shape more costs a joint fit for the band.
MAX_SHAPES = 4
# The newest completed relatives a family fit uses: more add little and cost a refit each
# for the leave-one-out band.
MAX_RELATIVES = 12
# Events of the divergence guard: a run it rolled back (and maybe slowed) did not follow
# the schedule its config records, so its curve cannot teach the family the law.
GUARD_EVENTS = ("rollback", "lr_reduced")
# Forecasts kept in the process, each under everything that decides it.
MAX_FORECASTS_KEPT = 256


def family_key(cfg: TrainConfig) -> str:
    """What runs of one forecast family have in common, as a string to compare."""
    data = cfg.to_dict()
    return json.dumps({"model": data["model"], **{k: data.get(k) for k in FAMILY_FIELDS}},
                      sort_keys=True)


def lr_schedule(cfg: TrainConfig) -> np.ndarray:
    """The lr of every optimizer step 0..max_steps-1, as the trainer sets it (read-only)."""
    return _schedule(json.dumps(cfg.to_dict(), sort_keys=True))


def _areas(cfg: TrainConfig, momentum: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    return _annealing(json.dumps(cfg.to_dict(), sort_keys=True), momentum)


# Kept for the last few configs: a live page refits a run's forecast at each new
# evaluation, and the schedule and its annealing areas never change (on a 10-million-step
# run they take about a second to compute, the fit itself milliseconds).
@functools.lru_cache(maxsize=8)
def _schedule(config_json: str) -> np.ndarray:
    lrs = lr_array(TrainConfig.from_dict(json.loads(config_json)))
    lrs.setflags(write=False)  # shared between callers
    return lrs


@functools.lru_cache(maxsize=16)
def _annealing(config_json: str, momentum: float | None) -> tuple[np.ndarray, np.ndarray]:
    lrs = _schedule(config_json)
    areas = annealing_areas(lrs) if momentum is None else annealing_areas(lrs, momentum)
    for array in areas:
        array.setflags(write=False)
    return areas


def _shapes_key(cfg: TrainConfig) -> str:
    """What runs of other shapes a first run may borrow the law's shape from have in
    common with it, as a string to compare."""
    data = cfg.to_dict()
    return json.dumps({k: data.get(k) for k in FAMILY_FIELDS}, sort_keys=True)


def _kin(store: RunStore, run: RunRecord) -> tuple[list[RunRecord], list[list[RunRecord]]]:
    """The completed runs of ``run``'s family (itself left out), newest first, at most
    ``MAX_RELATIVES``; and those of other model shapes otherwise alike, one list per
    family (newest first, at most ``MAX_RELATIVES`` each), at most ``MAX_SHAPES`` families,
    those with the newest runs first."""
    cfg = TrainConfig.from_dict(run.config)
    own, shapes = family_key(cfg), _shapes_key(cfg)
    found: list[RunRecord] = []
    others: dict[str, list[RunRecord]] = {}  # by family, in the order of their newest run
    for other in store.list_runs(status=RunStatus.COMPLETED):
        keys = _keys_of(other) if other.id != run.id else None
        if keys is None:
            continue
        if keys[0] == own:
            if len(found) < MAX_RELATIVES:
                found.append(other)
        elif keys[1] == shapes and (keys[0] in others or len(others) < MAX_SHAPES):
            group = others.setdefault(keys[0], [])
            if len(group) < MAX_RELATIVES:
                group.append(other)
    return found, list(others.values())


def _keys_of(run: RunRecord) -> tuple[str, str] | None:
    try:
        cfg = TrainConfig.from_dict(run.config)
    except (ValueError, TypeError, GptdashError):
        return None  # a config an older release wrote that this one cannot read
    return family_key(cfg), _shapes_key(cfg)


class _Family:
    """A family's screening, fit and, per share of steps, its leave-one-out errors (each
    computed once)."""

    def __init__(self, ids: list[int], curves: list[Curve], known: dict[int, str]) -> None:
        screening = screen(curves, known)
        self.left_out = tuple(f"#{ids[i]}: {why}" for i, why in screening.left_out.items())
        self.curves = [curves[i] for i in screening.kept]
        self.misfits = list(screening.misfits.values())
        self.fit: FamilyFit | None = fit_family(self.curves)
        self._fits: list[FamilyFit | None] | None = None
        self._errors: dict[float, list[float]] = {}

    def errors(self, fraction: float) -> list[float]:
        share = band_share(fraction)
        if share not in self._errors:
            if len(self.curves) < 2:
                self._errors[share] = []
            else:
                if self._fits is None:
                    self._fits = leave_one_out_fits(self.curves)
                self._errors[share] = leave_one_out_errors(self.curves, share, self._fits)
        return self._errors[share]


# Completed runs never change, so a family is fitted once per set of relatives.
_FAMILIES: dict[tuple[str, tuple[int, ...]], _Family] = {}


def _family_of(store: RunStore, kin: list[RunRecord]) -> _Family | None:
    if not kin:
        return None
    key = (store.url, tuple(sorted(r.id for r in kin)))
    if key not in _FAMILIES:
        ids = [r.id for r in kin]
        frame = store.metrics(ids, [VAL_LOSS])
        curves = []
        for other in kin:
            rows = frame[frame["run_id"] == other.id]
            cfg = TrainConfig.from_dict(other.config)
            curves.append(Curve.of(rows["step"].astype(int).tolist(),
                                   rows["value"].astype(float).tolist(), lr_schedule(cfg),
                                   cfg.max_steps))
        position = {run_id: i for i, run_id in enumerate(ids)}
        guarded: dict[int, str] = {}
        for event in store.event_rows(ids):  # sorted by step: the first intervention wins
            if event.kind in GUARD_EVENTS:
                guarded.setdefault(position[event.run_id],
                                   f"rolled back by the divergence guard at step {event.step:,}")
        if len(_FAMILIES) > 32:
            _FAMILIES.clear()
        _FAMILIES[key] = _Family(ids, curves, guarded)
    return _FAMILIES[key]


class _Shapes:
    """Other shapes' families: the law's shape fitted across them and, per share of
    steps, how far each shape's runs missed with the others' law (each computed once)."""

    def __init__(self, families: list[_Family]) -> None:
        self.shapes = [f.curves for f in families if f.curves]
        self.fit: FamilyFit | None = fit_shapes(self.shapes) if self.shapes else None
        self.runs = sum(len(curves) for curves in self.shapes)
        self._errors: dict[float, list[float]] = {}

    def errors(self, fraction: float) -> list[float]:
        share = band_share(fraction)
        if share not in self._errors:
            self._errors[share] = leave_one_shape_out_errors(self.shapes, share)
        return self._errors[share]


_SHAPES: dict[tuple[str, tuple[tuple[int, ...], ...]], _Shapes] = {}


def _shapes_of(store: RunStore, groups: list[list[RunRecord]]) -> _Shapes | None:
    if not groups:
        return None
    key = (store.url, tuple(tuple(sorted(r.id for r in g)) for g in groups))
    if key not in _SHAPES:
        if len(_SHAPES) > 32:
            _SHAPES.clear()
        _SHAPES[key] = _Shapes([_family_of(store, group) for group in groups])
    return _SHAPES[key]


def _val_curve(store: RunStore, run_id: int, upto: int | None) -> tuple[list[int], list[float]]:
    frame = store.metrics([run_id], [VAL_LOSS], max_step=upto)
    return [int(s) for s in frame["step"]], [float(v) for v in frame["value"]]


@dataclass(frozen=True)
class _Answer:
    forecast: Forecast | None
    needed: int  # evaluations a forecast needs: fewer with a family's shape to lean on


def _forecast(run: RunRecord, steps: list[int], losses: list[float], upto: int | None,
              family: _Family | None, shapes: _Shapes | None) -> _Answer:
    cfg = TrainConfig.from_dict(run.config)
    fit = family.fit if family is not None else None
    # No finished relative of its own shape (or none that follows the law): the other
    # shapes' law, when there is one.
    borrowed = fit is None and shapes is not None and shapes.fit is not None
    if borrowed:
        fit = shapes.fit
    # A run whose own curve does not follow the law is not forced into its family's shape
    # (a diverged run at a huge lr forecast with it came out at -23.8): it is fitted alone.
    own = Curve.of(steps, losses, lr_schedule(cfg), cfg.max_steps)
    astray = divergence(own)
    if astray is None and fit is not None and not borrowed and family.misfits:
        miss = misfit(fit, own)
        if far_worse(miss, family.misfits):
            astray = (f"it fits the law of its relatives far worse than they do (off by "
                      f"{miss:.1%} of its loss)")
    if astray is not None:
        fit = None
        borrowed = False
    try:
        if fit is None:
            forecast = forecast_final(steps, losses, lr_schedule(cfg), cfg.max_steps,
                                      upto_step=upto, areas=_areas(cfg))
        else:
            forecast = forecast_final(steps, losses, lr_schedule(cfg), cfg.max_steps,
                                      upto_step=upto, areas=_areas(cfg, fit.momentum),
                                      family=fit)
    except ValueError as exc:
        raise GptdashError(f"cannot forecast run {run.id}: {exc}") from None
    needed = MIN_POINTS if fit is None else MIN_POINTS_CALIBRATED
    if forecast is None:
        return _Answer(None, needed)
    if upto is None and run.status == RunStatus.COMPLETED:
        forecast = replace(forecast, note=None)  # a finished run has no decay still to come
    if astray is not None:
        forecast = replace(forecast, note=f"this run's curve does not follow the law: {astray}; "
                                          "it is fitted alone and its forecast is a poor guide")
    if family is not None:
        # Uncalibrated, a forecast still says how many relatives it had (and did not use).
        forecast = replace(forecast, left_out=family.left_out,
                           family_size=forecast.family_size or len(family.curves))
    if fit is None:
        return _Answer(forecast.with_rule_band(), needed)
    share = forecast.upto_step / cfg.max_steps
    if borrowed:
        forecast = replace(forecast, other_shapes=len(shapes.shapes))
        half = band_half_width(shapes.errors(share), BAND_LEVEL)
        return _Answer(forecast.with_rule_band() if half is None
                       else forecast.with_band(half, shapes.runs, source="other shapes"),
                       needed)
    half = band_half_width(family.errors(share), BAND_LEVEL)
    return _Answer(forecast if half is None else forecast.with_band(half, len(family.curves)),
                   needed)


_ANSWERS: OrderedDict[tuple, _Answer] = OrderedDict()
_ANSWERS_LOCK = threading.Lock()  # pages ask from several threads at once


def _answer(store: RunStore, run_id: int, upto: int | None) -> _Answer:
    if upto is not None and upto < 1:
        raise GptdashError(f"--upto must be a step of 1 or more, not {upto}")
    run = store.get_run(run_id)
    steps, losses = _val_curve(store, run_id, upto)
    kin, shape_kin = _kin(store, run)
    curve = hashlib.blake2b(np.asarray(steps, dtype=np.int64).tobytes()
                            + np.asarray(losses, dtype=np.float64).tobytes()).hexdigest()
    key = (store.url, run_id, upto, run.status, json.dumps(run.config, sort_keys=True),
           tuple(r.id for r in kin), tuple(tuple(r.id for r in g) for g in shape_kin), curve)
    with _ANSWERS_LOCK:
        if key in _ANSWERS:
            _ANSWERS.move_to_end(key)
            return _ANSWERS[key]
    answer = _forecast(run, steps, losses, upto, _family_of(store, kin),
                       _shapes_of(store, shape_kin))
    with _ANSWERS_LOCK:
        _ANSWERS[key] = answer
        while len(_ANSWERS) > MAX_FORECASTS_KEPT:
            _ANSWERS.popitem(last=False)
    return answer


def run_forecast(store: RunStore, run_id: int, *, upto: int | None = None) -> Forecast | None:
    """Forecast run ``run_id``'s val loss at its max_steps from its evaluations so far (only
    those at or before step ``upto`` when given); None when it has too few evaluations.

    The one forecast of a run: Live, Compare, Sweeps, the early cut and ``gptdash
    forecast`` all ask here. It is kept under everything that decides it (the run's
    evaluations, config and status, ``upto``, and which relatives have finished), so it
    is refitted when any of them changes and at no other time.
    """
    return _answer(store, run_id, upto).forecast


def forecast_report(store: RunStore, run_id: int, *, upto: int | None = None) -> dict[str, Any]:
    """The forecast as plain values (for JSON): run_id, status, predicted_final, low, high,
    upto_step, max_steps, actual_final (the last evaluation's val loss once the run has
    completed, else None), note, level, calibrated, family_size (the finished runs it
    learned from), band_from ("fit", "relatives", "other shapes" or "rule"), left_out (the
    finished relatives left out of the family's fit, each with why), calibrated_on
    ("relatives", "other shapes", or None when uncalibrated) and other_shapes (how many
    shapes its finished runs were, 0 for its own family).

    Raises GptdashError when the run has too few evaluations to forecast.
    """
    answer = _answer(store, run_id, upto)
    run = store.get_run(run_id)
    forecast = answer.forecast
    if forecast is None:
        steps, losses = _val_curve(store, run_id, upto)
        usable = sum(1 for s, v in zip(steps, losses, strict=True) if s >= 1 and math.isfinite(v))
        where = f" up to step {upto}" if upto is not None else ""
        advice = ("wait for more, or evaluate more often (a smaller eval_interval)"
                  if run.status in (RunStatus.QUEUED, RunStatus.RUNNING) and upto is None
                  else "evaluate more often (a smaller eval_interval)")
        raise GptdashError(f"run {run_id} ({run.status}) has {usable} evaluation(s) after "
                           f"step 0{where}; a forecast needs at least {answer.needed}: {advice}")
    actual = None
    if run.status == RunStatus.COMPLETED:
        _, all_losses = _val_curve(store, run_id, None)
        actual = all_losses[-1] if all_losses else None
    return {"run_id": run.id, "status": run.status,
            "predicted_final": forecast.predicted_final, "low": forecast.low,
            "high": forecast.high, "upto_step": forecast.upto_step,
            "max_steps": forecast.max_steps, "actual_final": actual, "note": forecast.note,
            "level": forecast.level, "calibrated": forecast.calibrated,
            "family_size": forecast.family_size, "band_from": forecast.band_source,
            "left_out": list(forecast.left_out),
            "calibrated_on": None if not forecast.calibrated else
            "other shapes" if forecast.other_shapes else "relatives",
            "other_shapes": forecast.other_shapes}
