"""Successive halving: a run of a sweep created with the early cut is compared with the
rest of its sweep at its cut points, and stopped when its forecast is confidently worse.

Repeats of one config with other seeds (``gptcore.config.repeat_key``) are judged as a
group: the group's standing is the mean of its members' forecasts, so one lucky or
unlucky seed neither cuts its config nor saves it, and a run is compared with the other
groups, never with its own repeats.

Asked by ``jobs.bridge`` from the process that trains the run; kept apart from
``jobs.sweeps`` (which queues runs through ``jobs.runner``) so that the trainer's bridge
never imports the code that starts runs. No torch.
"""

from __future__ import annotations

from dataclasses import replace
from statistics import fmean
from typing import TYPE_CHECKING

from analysis.forecast import Forecast
from analysis.sweep import cut_steps, should_cut
from gptcore.config import TrainConfig, repeat_key
from gptcore.errors import GptdashError
from jobs.forecasting import run_forecast
from storage.status import RunStatus

if TYPE_CHECKING:
    from storage.store import RunRecord, RunStore

# Runs that may hold the sweep's best forecast: queued runs have no curve, and a failed
# run's curve ended in a fault.
COMPARED_STATUSES = (RunStatus.RUNNING, RunStatus.COMPLETED, RunStatus.STOPPED,
                     RunStatus.INTERRUPTED)


def cut_points(store: RunStore, run_id: int) -> list[int]:
    """The steps at which run ``run_id`` is compared with its sweep (``cut_steps``), or []
    unless it belongs to a sweep created with cut=True; a search's trial reports at every
    evaluation to its study (``jobs.pruners.report_steps``)."""
    run = store.get_run(run_id)
    if run.sweep_id is None:
        return []
    sweep = store.get_sweep(run.sweep_id)
    cfg = TrainConfig.from_dict(run.config)
    if sweep.study is not None:
        from jobs.pruners import report_steps  # Optuna, for search sweeps' runs alone

        return report_steps(sweep, cfg)
    return cut_steps(cfg.max_steps) if sweep.cut else []


# Forecasts of runs that no longer train, by (database, run id, upto, completed runs):
# they change only when a relative completes (it calibrates them), and every cut check of
# a long sweep would otherwise fit them all again on the training thread.
_settled: dict[tuple[str, int, int, int], Forecast | None] = {}


def _completed(store: RunStore) -> int:
    return len(store.list_runs(status=RunStatus.COMPLETED))


def _standing(store: RunStore, run: RunRecord, fraction: float,
              completed: int) -> Forecast | None:
    """A run's forecast from its evaluations up to ``fraction`` of its own max_steps (all of
    them, if it has not got that far yet).

    Like with like: the run being checked is forecast from that fraction too, and a
    forecast made early leaves out the part of the lr decay it has not seen; comparing it
    with another run's actual final loss, measured after the decay, would cut runs that
    were going to be just as good.
    """
    upto = max(1, int(fraction * run.max_steps)) if run.max_steps else None
    settled = run.status != RunStatus.RUNNING and upto is not None
    key = (store.url, run.id, upto or 0, completed)
    if settled and key in _settled:
        return _settled[key]
    try:
        forecast = run_forecast(store, run.id, upto=upto)
    except GptdashError:
        forecast = None  # a config this version cannot read, or a curve that cannot be fit
    if settled:
        if len(_settled) > 4096:
            _settled.clear()
        _settled[key] = forecast
    return forecast


def group_forecast(forecasts: list[Forecast | None]) -> Forecast | None:
    """One standing for a group of repeats: the mean of its members' forecasts and of their
    band edges (the members share data and model, so their misses are not independent and
    the band is not narrowed by averaging); None when no member can be forecast."""
    known = [f for f in forecasts if f is not None]
    if len(known) <= 1:
        return known[0] if known else None
    return replace(known[0], predicted_final=fmean(f.predicted_final for f in known),
                   low=fmean(f.low for f in known), high=fmean(f.high for f in known))


def _groups(runs: list[RunRecord]) -> dict[str, list[RunRecord]]:
    groups: dict[str, list[RunRecord]] = {}
    for run in runs:
        groups.setdefault(repeat_key(run.config), []).append(run)
    return groups


def best_forecast(store: RunStore, sweep_id: int, *, exclude: int,
                  fraction: float = 1.0) -> Forecast | None:
    """The lowest forecast final loss among the sweep's other seed groups (runs that differ
    only in seed, ``exclude``'s own group left out), each the mean of its members'
    forecasts from their evaluations up to ``fraction`` of their steps."""
    runs = store.list_runs(sweep_id=sweep_id, status=COMPARED_STATUSES)
    own = next((repeat_key(r.config) for r in runs if r.id == exclude), None)
    if own is None:
        own = repeat_key(store.get_run(exclude).config)
    completed = _completed(store)
    standings = [group_forecast([_standing(store, r, fraction, completed) for r in members])
                 for key, members in _groups(runs).items() if key != own]
    standings = [f for f in standings if f is not None]
    return min(standings, key=lambda f: f.predicted_final, default=None)


def cut_reason(store: RunStore, run_id: int, *, upto: int) -> str | None:
    """Why run ``run_id`` should stop now, from its evaluations up to step ``upto``: its
    forecast is confidently worse than the best of its sweep (``should_cut``), or, in a
    search, its study's pruner says so (``jobs.pruners``); else None."""
    run = store.get_run(run_id)
    if run.sweep_id is None:
        return None
    sweep = store.get_sweep(run.sweep_id)
    if sweep.study is not None:
        from jobs.pruners import trial_cut_reason

        return trial_cut_reason(store, run, sweep, upto,
                                lambda step: _forecast_cut(store, run, step))
    return _forecast_cut(store, run, upto)


def _forecast_cut(store: RunStore, run: RunRecord, upto: int) -> str | None:
    """The forecast cut's decision for ``run`` at step ``upto`` (``cut_reason``)."""
    run_id = run.id
    forecast = run_forecast(store, run_id, upto=upto)
    if forecast is None:
        return None
    fraction = upto / run.max_steps if run.max_steps else 1.0
    key = repeat_key(run.config)
    repeats = [r for r in store.list_runs(sweep_id=run.sweep_id, status=COMPARED_STATUSES)
               if r.id != run_id and repeat_key(r.config) == key]
    completed = _completed(store)
    standing = group_forecast([forecast,
                               *(_standing(store, r, fraction, completed) for r in repeats)])
    if standing is not forecast:
        standing = replace(standing, upto_step=forecast.upto_step)
    return should_cut(standing, best_forecast(store, run.sweep_id, exclude=run_id,
                                              fraction=fraction))
