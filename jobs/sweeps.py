"""Sweeps as queued runs: plan one from a base config and ``--grid``/``--range`` specs,
check every run up front, then record the sweep and its runs for the workers. The
successive-halving cut that a training run asks at its cut points is ``jobs.halving``.

No torch: ``gptdash sweep`` answers at once, like ``gptdash submit``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from analysis.forecast import MIN_POINTS
from analysis.sweep import SEED_KEY, Value, cut_steps, expand, sweep_size
from gptcore.config import TrainConfig, apply_overrides
from gptcore.errors import GptdashError
from gptcore.estimate import (
    DEFAULT_STARTUP_S,
    MachinePace,
    duration_estimate,
    eval_flops,
    flops_per_token,
    training_flops,
)
from gptcore.metric_keys import EVAL_TIME_MS, TOKENS_PER_SEC, VAL_LOSS
from jobs import ray_executor, runner
from storage.names import check_name, check_notes
from storage.status import ACTIVE, Executor, RunStatus
from storage.tags import check_tags

if TYPE_CHECKING:
    from storage.store import RunRecord, RunStore

# Training FLOP/s assumed when this database has no finished run to measure: the order
# of magnitude of a laptop CPU on the tiny preset. A GPU is 100-1000x faster, so the
# estimate is only a rough guide until a run has finished here.
NOMINAL_FLOPS_PER_S = 5e10
NOMINAL_PACE = MachinePace(train_flops_per_s=NOMINAL_FLOPS_PER_S)
# A sweep of more runs than this is queued only when confirmed (--yes; a checkbox on the
# page): a typo in a grid can multiply a sweep into days of training.
CONFIRM_ABOVE = 100


@dataclass
class SweepPlan:
    """A sweep before anything is written: one validated config per run."""

    configs: list[TrainConfig]
    params: list[str]  # the swept settings, in the order given (not the seed of --seeds)
    spec: dict[str, Any]  # stored on the sweep row: how the runs were made
    estimated_seconds: float | None  # all runs' wall time, one after another (rough)
    overrides: list[dict[str, Value]]  # each run's swept values (and seed), as in configs
    seeds: int = 0  # runs per point, seed after seed; 0: the base config's one seed

    def label(self, index: int) -> str:
        """'lr=0.003 n_layers=4': run ``index``'s swept values."""
        return " ".join(f"{k}={_fmt(v)}" for k, v in self.overrides[index].items())


def _fmt(value: Value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


_ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth",
             "ninth", "tenth")


def _which_run(index: int, total: int) -> str:
    """Which of a sweep's runs a refusal is about, by position: "run 1" would read as the
    run with id 1, which is some other run."""
    n = index + 1
    if n <= len(_ORDINALS):
        return f"the sweep's {_ORDINALS[index]} of {total} runs"
    suffix = "th" if n % 100 in (11, 12, 13) else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"the sweep's {n}{suffix} of {total} runs"


def measured_pace(store: RunStore) -> MachinePace | None:
    """This machine's pace, from the newest finished run with throughput metrics, else None:
    its training FLOP/s (median tokens/s times FLOPs per token), its evaluations' FLOP/s
    (``eval_time_ms``, samples included) and its start-up (claimed to the first evaluation's
    result, less that evaluation)."""
    for run in store.list_runs(status=RunStatus.COMPLETED, limit=5):
        try:
            cfg = TrainConfig.from_dict(run.config)
        except GptdashError:
            continue  # a config this version cannot read: look at the next run
        tps = store.metrics([run.id], [TOKENS_PER_SEC])
        if tps.empty:
            continue
        evals = store.metrics([run.id], [EVAL_TIME_MS])
        eval_rate = (eval_flops(cfg) / (float(evals["value"].median()) / 1000)
                     if not evals.empty and evals["value"].median() > 0 else None)
        startup = _startup_s(store, run)
        train_s = _training_seconds(cfg, run, startup, float(evals["value"].sum()) / 1000)
        # What the run spent per step, everything between steps included (saves, writes,
        # stalls): the median tokens/s saw only the steps, and New run's estimates came out
        # a quarter short. A run with no time recorded falls back to it.
        train_rate = (training_flops(cfg, run.last_step) / train_s if train_s
                      else float(tps["value"].median()) * flops_per_token(cfg))
        return MachinePace(train_flops_per_s=train_rate, eval_flops_per_s=eval_rate,
                           startup_s=startup, run_id=run.id)
    return None


def _training_seconds(cfg: TrainConfig, run: RunRecord, startup_s: float,
                      evals_s: float) -> float | None:
    """Seconds a finished run spent on its training steps: its recorded training time less
    its start-up, its evaluations and its checkpoint saves; None when it recorded none."""
    saves = duration_estimate(cfg, MachinePace(train_flops_per_s=1.0)).checkpoint_s
    left = (run.duration_s or 0.0) - startup_s - evals_s - saves
    return left if run.last_step > 0 and left > 0 else None


def _startup_s(store: RunStore, run) -> float:
    """Seconds from a run's claim to its first evaluation starting: data load, model build."""
    first = store.metrics([run.id], [VAL_LOSS, EVAL_TIME_MS], max_step=0)
    if run.started_at is None or first.empty:
        return DEFAULT_STARTUP_S
    val = first[first["key"] == VAL_LOSS]["wall_time"]
    took = first[first["key"] == EVAL_TIME_MS]["value"]
    if val.empty:
        return DEFAULT_STARTUP_S
    seconds = float(val.min()) - run.started_at.timestamp() - (
        float(took.iloc[0]) / 1000 if not took.empty else 0.0)
    return seconds if 0 < seconds < 600 else DEFAULT_STARTUP_S


def count_runs(grids: list[str], ranges: list[str], *, random: int = 0, seeds: int = 0) -> int:
    """How many runs these specs make, without expanding them; GptdashError for a bad spec."""
    try:
        return sweep_size(grids, ranges, random=random, seeds=seeds)
    except ValueError as exc:
        raise GptdashError(str(exc)) from None


def plan_sweep(base: TrainConfig, grids: list[str], ranges: list[str], *, random: int = 0,
               seed: int = 0, seeds: int = 0, pace: MachinePace | None = None) -> SweepPlan:
    """Expand the specs over ``base`` and validate every run's config; GptdashError names
    the first bad run and value. ``seeds`` N repeats every point with the config seeds
    ``base.seed``, ``base.seed + 1``, ... ``pace`` (default ``NOMINAL_PACE``) sizes
    ``estimated_seconds``: training, evaluations, checkpoints and start-up."""
    try:
        overrides = expand(grids, ranges, random=random, seed=seed, seeds=seeds,
                           first_seed=base.seed)
    except ValueError as exc:
        raise GptdashError(str(exc)) from None
    if not overrides:
        raise GptdashError("a sweep needs at least one --grid KEY=V1,V2, a --range with "
                           "--random N, or --seeds N")
    params = [k for k in overrides[0] if not (seeds and k == SEED_KEY)]
    configs = []
    for i, values in enumerate(overrides):
        label = " ".join(f"{k}={_fmt(v)}" for k, v in values.items())
        try:
            configs.append(apply_overrides(base, values).validate())
        except GptdashError as exc:
            raise GptdashError(f"{_which_run(i, len(overrides))} ({label}): {exc}") from None
    pace = pace or NOMINAL_PACE
    spec = {"base": base.to_dict(), "grids": list(grids), "ranges": list(ranges),
            "random": random, "seed": seed, "seeds": seeds, "params": params,
            "runs": overrides}
    return SweepPlan(configs=configs, params=params, spec=spec,
                     estimated_seconds=sum(duration_estimate(c, pace).total_s
                                           for c in configs),
                     overrides=overrides, seeds=seeds)


def default_sweep_name(plan: SweepPlan) -> str:
    """'sweep lr,n_layers', 'sweep lr x 3 seeds', or 'sweep 3 seeds' for seeds alone."""
    swept = ",".join(plan.params)
    if not plan.seeds:
        return f"sweep {swept}"
    return f"sweep {swept} x {plan.seeds} seeds" if swept else f"sweep {plan.seeds} seeds"


def forecast_too_early(cfg: TrainConfig) -> str | None:
    """Why the forecast cut could never act on a run of ``cfg``, or None: a forecast needs
    ``MIN_POINTS`` evaluations after step 0 by the first cut point."""
    points = cut_steps(cfg.max_steps)
    if not points or points[0] // cfg.eval_interval >= MIN_POINTS:
        return None
    first = points[0]
    return (f"early cut compares forecasts at step {' and '.join(map(str, points))} "
            f"of {cfg.max_steps}, and a forecast needs {MIN_POINTS} evaluations by "
            f"step {first}: set eval_interval to {max(1, first // MIN_POINTS)} or less")


def cut_problem(plan: SweepPlan) -> str | None:
    """Why an early cut could never act on this plan, or None.

    A forecast needs ``MIN_POINTS`` evaluations after step 0; a run that has fewer by its
    first cut point is never compared, and the cut would silently do nothing (``tiny``
    evaluates every 50 of 400 steps: 2 evaluations by the cut at step 100).
    """
    if len(plan.configs) < 2:
        return ("early cut stops a run whose forecast is worse than another run's of its "
                "sweep, and this sweep has one run: leave out the cut, or sweep more values")
    for i, cfg in enumerate(plan.configs):
        if problem := forecast_too_early(cfg):
            where = f" ({plan.label(i)})" if len(plan.configs) > 1 else ""
            return f"{problem} (run {i + 1}{where} evaluates every {cfg.eval_interval} steps)"
    return None


def submit_sweep(store: RunStore, plan: SweepPlan, *, name: str | None = None,
                 cut: bool = False, tags: list[str] | None = None,
                 notes: str = "", on: str = Executor.LOCAL) -> tuple[int, list[int]]:
    """Record the sweep and queue its runs (named '<sweep name> lr=0.003 n_layers=4', each
    with ``tags`` and ``notes``); returns (sweep id, run ids). Every run is checked (corpus,
    init_from, and with ``cut`` enough evaluations for a forecast by the first cut, memory
    against the largest device here) before anything is written; each run's worker checks
    its own device again. ``on="ray"``: each run is a job on the Ray cluster at
    ``GPTDASH_RAY_ADDRESS``, which must answer before anything is written."""
    if cut and (problem := cut_problem(plan)):
        raise GptdashError(problem)
    sweep_name = check_name((name or "").strip() or default_sweep_name(plan), "sweep name")
    run_names = [check_name(f"{sweep_name} {plan.label(i)}") for i in range(len(plan.configs))]
    tags = check_tags(tags or [])
    check_notes(notes)
    for i, cfg in enumerate(plan.configs):
        try:
            runner.check_run(store, cfg, check_device=False, executor=on)
        except GptdashError as exc:
            raise GptdashError(f"{_which_run(i, len(plan.configs))} ({plan.label(i)}): "
                               f"{exc}") from None
    cluster = ray_executor.cluster_for(on) if on != Executor.LOCAL else None
    sweep_id = store.create_sweep(sweep_name, plan.spec, cut=cut)
    run_ids = [runner.create_run(store, cfg, name=run_name, tags=tags, notes=notes,
                                 check_device=False, sweep_id=sweep_id, executor=on)
               for cfg, run_name in zip(plan.configs, run_names, strict=True)]
    if cluster is not None:
        ray_executor.start_runs(store, cluster, run_ids)
    return sweep_id, run_ids


def submit_repeats(store: RunStore, cfg: TrainConfig, seeds: int, *, name: str | None = None,
                   tags: list[str] | None = None, notes: str = "",
                   on: str = Executor.LOCAL) -> tuple[int, list[int]]:
    """Queue ``seeds`` runs of ``cfg`` that differ only in seed (``cfg.seed``, +1, ...) as
    one sweep named ``name`` (else the run's default name), its runs '<name> seed=N'; the
    New run page's "repeat with N seeds". (sweep id, run ids)."""
    plan = plan_sweep(cfg, [], [], seeds=seeds)
    return submit_sweep(store, plan, name=(name or "").strip() or runner.default_name(cfg),
                        tags=tags, notes=notes, on=on)


@dataclass
class SweepStop:
    """What ``stop_sweep`` did, run ids by outcome."""

    cancelled: list[int]  # were queued: they will never start
    stopping: list[int]  # were training: each saves a checkpoint and stops
    ended: list[int]  # ended on their own meanwhile: nothing to do


def stop_sweep(store: RunStore, sweep_id: int) -> SweepStop:
    """Cancel a sweep's queued runs, then ask its running ones to stop; a search asks no
    more trials.

    The queued ones first, so a worker that finishes a stopped run finds none of this
    sweep left to claim. GptdashError when no run of it is queued or running.
    """
    from jobs.actions import Stop, stop

    sweep = store.get_sweep(sweep_id)  # a clear error when there is no such sweep
    if sweep.study is not None:  # first, so no new trial is queued meanwhile (jobs.search)
        with store.sweep_lock(sweep_id):
            store.set_sweep_spec(sweep_id, {**store.get_sweep(sweep_id).spec, "stopped": True})
    runs = store.list_runs(sweep_id=sweep_id, status=tuple(ACTIVE))
    if not runs:
        raise GptdashError(f"sweep {sweep_id} {sweep.name!r} has no queued or running runs: "
                           "nothing to stop")
    done = SweepStop([], [], [])
    outcome = {Stop.CANCELLED: done.cancelled, Stop.REQUESTED: done.stopping,
               Stop.ENDED: done.ended}
    for run in sorted(runs, key=lambda r: (r.status != RunStatus.QUEUED, r.id)):
        try:
            outcome[stop(store, run.id)].append(run.id)
        except GptdashError:  # it ended between the listing and the stop
            done.ended.append(run.id)
    return done
