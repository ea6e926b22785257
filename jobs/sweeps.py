"""Sweeps as queued runs: plan one from a base config and ``--grid``/``--range`` specs,
check every run up front, then record the sweep and its runs for the workers; and the
successive-halving cut, which the process training a run asks at ``cut_points``.

No torch: ``gptdash sweep`` answers at once, like ``gptdash submit``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from analysis.forecast import MIN_POINTS, Forecast
from analysis.sweep import Value, cut_steps, expand, should_cut
from gptcore.config import TrainConfig, apply_overrides
from gptcore.errors import GptdashError
from gptcore.estimate import flops_per_token, training_flops
from jobs.forecasting import run_forecast
from storage.status import RunStatus

if TYPE_CHECKING:
    from storage.store import RunRecord, RunStore

# Training FLOP/s assumed when this database has no finished run to measure: the order
# of magnitude of a laptop CPU on the tiny preset. A GPU is 100-1000x faster, so the
# estimate is only a rough guide until a run has finished here.
NOMINAL_FLOPS_PER_S = 5e10


@dataclass
class SweepPlan:
    """A sweep before anything is written: one validated config per run."""

    configs: list[TrainConfig]
    params: list[str]  # the swept settings, in the order given
    spec: dict[str, Any]  # stored on the sweep row: how the runs were made
    estimated_seconds: float | None  # all runs' training time, one after another (rough)
    overrides: list[dict[str, Value]]  # each run's swept values, as in configs

    def label(self, index: int) -> str:
        """'lr=0.003 n_layers=4': run ``index``'s swept values."""
        return " ".join(f"{k}={_fmt(v)}" for k, v in self.overrides[index].items())


def _fmt(value: Value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def training_seconds(cfg: TrainConfig, flops_per_s: float) -> float:
    """Time to train ``cfg`` at ``flops_per_s`` (evaluations and sampling left out)."""
    return training_flops(cfg, cfg.max_steps) / flops_per_s


def measured_flops_per_s(store: RunStore) -> float | None:
    """Training FLOP/s of the newest finished run with throughput metrics, else None."""
    for run in store.list_runs(status=RunStatus.COMPLETED, limit=5):
        try:
            cfg = TrainConfig.from_dict(run.config)
        except GptdashError:
            continue  # a config this version cannot read: look at the next run
        tps = store.metrics([run.id], ["tokens_per_sec"])
        if not tps.empty:
            return float(tps["value"].median()) * flops_per_token(cfg)
    return None


def plan_sweep(base: TrainConfig, grids: list[str], ranges: list[str], *, random: int = 0,
               seed: int = 0, flops_per_s: float | None = None) -> SweepPlan:
    """Expand the specs over ``base`` and validate every run's config; GptdashError names
    the first bad run and value. ``flops_per_s`` (default ``NOMINAL_FLOPS_PER_S``) sizes
    ``estimated_seconds``."""
    try:
        overrides = expand(grids, ranges, random=random, seed=seed)
    except ValueError as exc:
        raise GptdashError(str(exc)) from None
    if not overrides:
        raise GptdashError("a sweep needs at least one --grid KEY=V1,V2 or --range with "
                           "--random N")
    params = list(overrides[0])
    configs = []
    for i, values in enumerate(overrides):
        label = " ".join(f"{k}={_fmt(v)}" for k, v in values.items())
        try:
            configs.append(apply_overrides(base, values).validate())
        except GptdashError as exc:
            raise GptdashError(f"sweep run {i + 1} of {len(overrides)} ({label}): {exc}") from None
    rate = flops_per_s or NOMINAL_FLOPS_PER_S
    spec = {"base": base.to_dict(), "grids": list(grids), "ranges": list(ranges),
            "random": random, "seed": seed, "params": params, "runs": overrides}
    return SweepPlan(configs=configs, params=params, spec=spec,
                     estimated_seconds=sum(training_seconds(c, rate) for c in configs),
                     overrides=overrides)


def default_sweep_name(plan: SweepPlan) -> str:
    return f"sweep {','.join(plan.params)}"


def cut_problem(plan: SweepPlan) -> str | None:
    """Why an early cut could never act on this plan, or None.

    A forecast needs ``MIN_POINTS`` evaluations after step 0; a run that has fewer by its
    first cut point is never compared, and the cut would silently do nothing (``tiny``
    evaluates every 50 of 400 steps: 2 evaluations by the cut at step 100).
    """
    for i, cfg in enumerate(plan.configs):
        points = cut_steps(cfg.max_steps)
        if not points:
            continue
        first = points[0]
        if first // cfg.eval_interval < MIN_POINTS:
            most = max(1, first // MIN_POINTS)
            where = f" ({plan.label(i)})" if len(plan.configs) > 1 else ""
            return (f"early cut compares forecasts at step {' and '.join(map(str, points))} "
                    f"of {cfg.max_steps}, and a forecast needs {MIN_POINTS} evaluations by "
                    f"step {first}: set eval_interval to {most} or less (run {i + 1}{where} "
                    f"evaluates every {cfg.eval_interval} steps)")
    return None


def submit_sweep(store: RunStore, plan: SweepPlan, *, name: str | None = None,
                 cut: bool = False) -> tuple[int, list[int]]:
    """Record the sweep and queue its runs (named '<sweep name> lr=0.003 n_layers=4');
    returns (sweep id, run ids). Every run is checked (corpus, init_from, and with ``cut``
    enough evaluations for a forecast by the first cut) before anything is written; the
    device check is left to the worker that claims each run."""
    from jobs import runner

    if cut and (problem := cut_problem(plan)):
        raise GptdashError(problem)

    for i, cfg in enumerate(plan.configs):
        try:
            runner.check_run(store, cfg, check_device=False)
        except GptdashError as exc:
            raise GptdashError(f"sweep run {i + 1} of {len(plan.configs)} ({plan.label(i)}): "
                               f"{exc}") from None
    sweep_name = (name or "").strip() or default_sweep_name(plan)
    sweep_id = store.create_sweep(sweep_name, plan.spec, cut=cut)
    run_ids = [runner.create_run(store, cfg, name=f"{sweep_name} {plan.label(i)}",
                                 check_device=False, sweep_id=sweep_id)
               for i, cfg in enumerate(plan.configs)]
    return sweep_id, run_ids


# ---- successive halving -----------------------------------------------------------------
# Runs that may hold the sweep's best forecast: queued runs have no curve, and a failed
# run's curve ended in a fault.
COMPARED_STATUSES = (RunStatus.RUNNING, RunStatus.COMPLETED, RunStatus.STOPPED,
                     RunStatus.INTERRUPTED)


def cut_points(store: RunStore, run_id: int) -> list[int]:
    """The steps at which run ``run_id`` is compared with its sweep (``cut_steps``), or []
    unless it belongs to a sweep created with cut=True."""
    run = store.get_run(run_id)
    if run.sweep_id is None or not store.get_sweep(run.sweep_id).cut:
        return []
    return cut_steps(TrainConfig.from_dict(run.config).max_steps)


# Forecasts of runs that no longer train, by (run id, upto): they never change, and every
# cut check of a long sweep would otherwise fit them all again on the training thread.
_settled: dict[tuple[int, int], Forecast | None] = {}


def _standing(store: RunStore, run: RunRecord, fraction: float) -> Forecast | None:
    """A run's forecast from its evaluations up to ``fraction`` of its own max_steps (all of
    them, if it has not got that far yet).

    Like with like: the run being checked is forecast from that fraction too, and a
    forecast made early leaves out the part of the lr decay it has not seen; comparing it
    with another run's actual final loss, measured after the decay, would cut runs that
    were going to be just as good.
    """
    upto = max(1, int(fraction * run.max_steps)) if run.max_steps else None
    settled = run.status != RunStatus.RUNNING and upto is not None
    if settled and (run.id, upto) in _settled:
        return _settled[(run.id, upto)]
    try:
        forecast = run_forecast(store, run.id, upto=upto)
    except GptdashError:
        forecast = None  # a config this version cannot read, or a curve that cannot be fit
    if settled:
        _settled[(run.id, upto)] = forecast
    return forecast


def best_forecast(store: RunStore, sweep_id: int, *, exclude: int,
                  fraction: float = 1.0) -> Forecast | None:
    """The lowest forecast final loss among the sweep's other runs that can be forecast,
    each from its evaluations up to ``fraction`` of its steps."""
    forecasts = [_standing(store, r, fraction)
                 for r in store.list_runs(sweep_id=sweep_id, status=COMPARED_STATUSES)
                 if r.id != exclude]
    forecasts = [f for f in forecasts if f is not None]
    return min(forecasts, key=lambda f: f.predicted_final, default=None)


def cut_reason(store: RunStore, run_id: int, *, upto: int) -> str | None:
    """Why run ``run_id`` should stop now, from its evaluations up to step ``upto``: its
    forecast is confidently worse than the best of its sweep (``should_cut``); else None."""
    run = store.get_run(run_id)
    if run.sweep_id is None:
        return None
    forecast = run_forecast(store, run_id, upto=upto)
    if forecast is None:
        return None
    fraction = upto / run.max_steps if run.max_steps else 1.0
    return should_cut(forecast, best_forecast(store, run.sweep_id, exclude=run_id,
                                              fraction=fraction))
