"""Search sweeps: an Optuna study proposes each run's config from the runs it has seen.

    gptdash sweep --search tpe --trials 40 --range lr=1e-4:1e-2:log --range n_layers=2:6
                  --choice activation=gelu,silu [--objective loss,flops] [--pruner forecast]

Ask and tell. The sweep row names its study (``sweeps.study``), kept with Optuna's RDB
storage in gptdash's own database (``storage.optuna_tables``), so it survives every restart
and ``optuna-dashboard <database URL>`` opens it. A trial is an ordinary queued run of the
sweep (its trial's user attribute ``run_id``); the run row stays the truth, and the study is
told from it. ``advance`` is the one step that does both: it tells the study of every trial
whose run has ended (completed: its objectives; failed, NaN or cancelled: FAIL, never a
loss; stopped by the pruner: PRUNED; stopped by a person or a worker's shutdown: nothing
yet, it may be resumed), then asks for new trials while
fewer than ``parallel`` of the sweep's runs are queued or running and the search was not
stopped (``gptdash stop --sweep``: ``jobs.sweeps.stop_sweep`` marks its spec). Workers
call it through ``advance_searches`` after each run they train and while idle
(``jobs.manager``), so a trial's config is proposed when a worker is about to be
free, and N workers with ``parallel`` N train N trials at once. One process at a time
advances a sweep (``RunStore.sweep_lock``), so no trial is asked twice. Pruning is ``jobs.pruners``.

No torch: ``gptdash sweep --search`` answers at once.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass, field
from statistics import fmean
from typing import TYPE_CHECKING, Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import TrialState

from analysis.sweep import SEED_KEY, Range, Value, parse_grid, parse_range
from gptcore.config import TrainConfig, apply_overrides
from gptcore.errors import GptdashError
from gptcore.estimate import training_flops
from gptcore.metric_keys import VAL_LOSS
from jobs import runner
from jobs.pruners import (
    PRUNERS,
    TRIAL_RUN_ATTR,
    TRIAL_RUNS_ATTR,
    make_sampler,
    open_study,
    study_storage,
    trial_runs,
)
from jobs.sweeps import forecast_too_early
from storage.names import NAME_MAX, check_name, check_notes
from storage.status import ACTIVE, Executor, RunStatus
from storage.tags import check_tags

if TYPE_CHECKING:
    from storage.store import RunRecord, RunStore
    from storage.sweeps import SweepRecord

SEARCHERS = ("tpe", "random")
# What a trial can be scored on, all minimised: the final val loss, the training FLOPs it
# spent, its training seconds.
OBJECTIVES = ("loss", "flops", "time")
# A run's end that the study is told of; an interrupted run may still resume.
TOLD_STATUSES = (RunStatus.COMPLETED, RunStatus.FAILED, RunStatus.STOPPED, RunStatus.CANCELLED)
# Configs in a row the search may propose that gptdash refuses (emb_dim not divisible by
# n_heads, say) before it gives up: each is told FAIL, so the sampler learns to avoid them.
MAX_REFUSED_ASKS = 20


@dataclass
class SearchPlan:
    """A search before anything is written: its space, budget and strategy."""

    base: TrainConfig
    ranges: list[Range]
    choices: list[tuple[str, list[Value]]]
    trials: int
    parallel: int = 1
    searcher: str = "tpe"
    pruner: str = "forecast"
    objectives: list[str] = field(default_factory=lambda: ["loss"])
    seed: int = 0
    seeds: int = 0  # runs per trial, config seeds base.seed, +1, ...; 0: one, its own seed

    @property
    def runs_per_trial(self) -> int:
        return max(self.seeds, 1)

    @property
    def params(self) -> list[str]:
        return [r.key for r in self.ranges] + [k for k, _ in self.choices]

    def distributions(self) -> dict[str, BaseDistribution]:
        """The space as Optuna distributions: a range of whole numbers is an int one."""
        out: dict[str, BaseDistribution] = {}
        for r in self.ranges:
            log = r.scale == "log"
            out[r.key] = (IntDistribution(int(r.low), int(r.high), log=log) if r.integer
                          else FloatDistribution(r.low, r.high, log=log))
        for key, values in self.choices:
            out[key] = CategoricalDistribution(values)
        return out

    def spec(self) -> dict[str, Any]:
        """What the sweep row keeps: enough to ask and prune again after any restart."""
        return {"base": self.base.to_dict(), "params": self.params,
                "search": {"searcher": self.searcher, "trials": self.trials,
                           "parallel": self.parallel, "pruner": self.pruner,
                           "objectives": list(self.objectives), "seed": self.seed,
                           "seeds": self.seeds,
                           "ranges": [[r.key, r.low, r.high, r.scale, r.integer]
                                      for r in self.ranges],
                           "choices": [[k, list(v)] for k, v in self.choices]}}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> SearchPlan:
        s = spec["search"]
        return cls(base=TrainConfig.from_dict(spec["base"]),
                   ranges=[Range(k, lo, hi, scale, integer) for k, lo, hi, scale, integer
                           in s["ranges"]],
                   choices=[(k, list(v)) for k, v in s["choices"]], trials=s["trials"],
                   parallel=s["parallel"], searcher=s["searcher"], pruner=s["pruner"],
                   objectives=list(s["objectives"]), seed=s["seed"],
                   seeds=s.get("seeds", 0))


def parse_choice(spec: str) -> tuple[str, list[Value]]:
    """'activation=gelu,silu' -> ('activation', ['gelu', 'silu']); two values at least."""
    try:
        key, values = parse_grid(spec)
    except ValueError:
        raise GptdashError(f"--choice needs KEY=V1,V2,...: got {spec!r}") from None
    if len(values) < 2:
        raise GptdashError(f"--choice {key} has one value ({values[0]}): give two or more, or "
                           f"fix it with --set {key}={values[0]}")
    return key, values


def parse_objectives(text: str) -> list[str]:
    """'loss,flops' -> ['loss', 'flops']; each one we record, none twice."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown or not names:
        raise GptdashError(f"--objective {text!r}: objectives are {', '.join(OBJECTIVES)} "
                           "(comma-separated, e.g. loss,flops)")
    if len(set(names)) != len(names):
        raise GptdashError(f"--objective {text!r} names one objective twice")
    return names


def plan_search(base: TrainConfig, ranges: list[str], choices: list[str], *, trials: int,
                parallel: int = 1, searcher: str = "tpe", pruner: str | None = None,
                objectives: str = "loss", seed: int = 0, seeds: int = 0) -> SearchPlan:
    """Parse and check a search; GptdashError (one line) for anything wrong, nothing written.
    ``pruner`` None: the forecast for one objective, none for several (Optuna prunes
    single-objective studies only). ``seeds`` N: each trial is N runs with the config seeds
    ``base.seed``, +1, ..., and its value their mean."""
    if searcher not in SEARCHERS:
        raise GptdashError(f"--search {searcher!r}: choose {' or '.join(SEARCHERS)}")
    if trials < 1:
        raise GptdashError(f"--trials must be 1 or more, not {trials}")
    if parallel < 1:
        raise GptdashError(f"--parallel must be 1 or more, not {parallel}")
    if seeds < 0 or seeds == 1:
        raise GptdashError(f"--seeds {seeds}: give 2 or more runs per trial, or leave it out")
    names = parse_objectives(objectives)
    pruner = pruner or ("forecast" if len(names) == 1 else "none")
    if pruner not in PRUNERS:
        raise GptdashError(f"--pruner {pruner!r}: choose one of {', '.join(PRUNERS)}")
    if len(names) > 1 and pruner != "none":
        raise GptdashError(f"--pruner {pruner} judges one objective, and --objective "
                           f"{objectives} has {len(names)}: use --pruner none")
    try:
        parsed = [parse_range(r) for r in ranges]
    except ValueError as exc:
        raise GptdashError(str(exc)) from None
    parsed_choices = [parse_choice(c) for c in choices]
    plan = SearchPlan(base=base, ranges=parsed, choices=parsed_choices, trials=trials,
                      parallel=parallel, searcher=searcher, pruner=pruner, objectives=names,
                      seed=seed, seeds=seeds)
    keys = plan.params
    if not keys:
        raise GptdashError("a search needs at least one --range KEY=LOW:HIGH[:log] or "
                           "--choice KEY=V1,V2")
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise GptdashError(f"{', '.join(twice)} given more than once: one --range or --choice "
                           "per setting")
    if seeds and SEED_KEY in keys:
        raise GptdashError(f"--seeds {seeds} sets {SEED_KEY} itself: drop --range/--choice "
                           f"{SEED_KEY}, or --seeds")
    # Every end of every range and every choice must be a value of its setting (an unknown
    # setting or a word for a number is refused here, not at the first trial).
    for r in parsed:
        for end in (r.low, r.high):
            apply_overrides(base, {r.key: int(end) if r.integer else end})
    for key, values in parsed_choices:
        for value in values:
            apply_overrides(base, {key: value})
    if pruner == "forecast" and (problem := forecast_too_early(base)):
        raise GptdashError(f"--pruner forecast: {problem}")
    return plan


def submit_search(store: RunStore, plan: SearchPlan, *, name: str | None = None,
                  tags: list[str] | None = None, notes: str = "",
                  on: str = Executor.LOCAL) -> tuple[int, list[int]]:
    """Record the search sweep and its study, and queue its first ``parallel`` trials;
    (sweep id, run ids)."""
    sweep_id = create_search(store, plan, name=name, tags=tags, notes=notes, on=on)
    return sweep_id, advance(store, sweep_id)


def create_search(store: RunStore, plan: SearchPlan, *, name: str | None = None,
                  tags: list[str] | None = None, notes: str = "",
                  on: str = Executor.LOCAL) -> int:
    """Record the search sweep and create its study, queueing nothing yet (``advance``
    does); its id. The base config is checked like any run's first."""
    if on != Executor.LOCAL:
        raise GptdashError("a search proposes each trial when a worker is free, and Ray jobs "
                           "are started up front: run a search with --on local")
    sweep_name = check_name((name or "").strip() or f"search {','.join(plan.params)}",
                            "sweep name")
    check_tags(tags or [])
    check_notes(notes)
    runner.check_run(store, plan.base, check_device=False)
    study_name = f"gptdash-{uuid.uuid4().hex[:12]}"
    spec = {**plan.spec(), "tags": list(tags or []), "notes": notes}
    sweep_id = store.create_sweep(sweep_name, spec, cut=plan.pruner == "forecast",
                                  study=study_name)
    optuna.create_study(study_name=study_name, storage=study_storage(store),
                        directions=["minimize"] * len(plan.objectives))
    return sweep_id


def advance(store: RunStore, sweep_id: int) -> list[int]:
    """Tell the study what ended, then queue trials up to ``parallel`` queued or running
    (none once ``trials`` were asked or the search was stopped); the new run ids."""
    with store.sweep_lock(sweep_id):
        sweep = store.get_sweep(sweep_id)
        plan = SearchPlan.from_spec(sweep.spec)
        study = open_study(store, sweep)
        runs = store.list_runs(sweep_id=sweep_id)
        _tell_ended(store, study, runs, plan.objectives)
        store.set_sweep_told(sweep_id, sum(1 + r.attempts for r in runs
                                           if r.status in TOLD_STATUSES))
        status = {r.id: r.status for r in runs}
        asked = [trial_runs(t) for t in study.get_trials(deepcopy=False)]
        asked = [ids for ids in asked if ids]
        active = sum(any(status.get(i) in ACTIVE for i in ids) for ids in asked)
        created: list[list[int]] = []
        while (not sweep.spec.get("stopped") and active + len(created) < plan.parallel
               and len(asked) + len(created) < plan.trials):
            created.append(_ask_trial(store, study, plan, sweep))
            study.sampler = make_sampler(plan.searcher, plan.seed, plan.trials,
                                         len(study.get_trials(deepcopy=False)))
        return [run_id for ids in created for run_id in ids]


def has_news(store: RunStore, sweep: SweepRecord) -> bool:
    """Whether ``advance`` has anything to do, from one grouped count of the sweep's runs:
    a run ended since it last told the study (the ended runs' number plus their claims, so
    a stopped run that was resumed and ended again counts), or room for another trial."""
    counts = store.sweep_status_counts(sweep.id)
    s = sweep.spec.get("search", {})
    ended = sum(n + claims for status, (n, claims) in counts.items()
                if status in TOLD_STATUSES)
    active = sum(counts.get(status, (0, 0))[0] for status in ACTIVE)
    per_trial = max(s.get("seeds", 0), 1)  # runs; a trial of seeds is news a little early
    wants_more = (not sweep.spec.get("stopped") and active < s.get("parallel", 1) * per_trial
                  and sum(n for n, _ in counts.values()) < s.get("trials", 0) * per_trial)
    return ended != sweep.told or wants_more


def advance_searches(store: RunStore) -> list[int]:
    """``advance`` every search sweep that has news; the runs queued."""
    created: list[int] = []
    for sweep in store.search_sweeps():
        if has_news(store, sweep):
            created += advance(store, sweep.id)
    return created


def _ask_trial(store: RunStore, study: optuna.Study, plan: SearchPlan,
               sweep: SweepRecord) -> list[int]:
    """Ask the study for a trial and queue it as runs of the sweep (one per seed); its run
    ids. A config gptdash refuses is told FAIL (with why, as the trial's ``refused``
    attribute) and another is asked."""
    last = ""
    for _ in range(MAX_REFUSED_ASKS):
        trial = study.ask(plan.distributions())
        label = " ".join(f"{k}={_fmt(v)}" for k, v in trial.params.items())
        seeds = ([{}] if not plan.seeds else
                 [{SEED_KEY: plan.base.seed + k} for k in range(plan.seeds)])
        try:
            configs = [apply_overrides(plan.base, {**trial.params, **seed}).validate()
                       for seed in seeds]
            run_ids = [runner.create_run(
                store, cfg, name=_trial_name(sweep.name, trial.number, label, seed),
                tags=sweep.spec.get("tags", []), notes=sweep.spec.get("notes", ""),
                check_device=False, sweep_id=sweep.id)
                for cfg, seed in zip(configs, seeds, strict=True)]
        except GptdashError as exc:
            last = f"{label}: {exc}"
            trial.set_user_attr("refused", str(exc))
            study.tell(trial, state=TrialState.FAIL)
            continue
        trial.set_user_attr(TRIAL_RUN_ATTR, run_ids[0])
        trial.set_user_attr(TRIAL_RUNS_ATTR, run_ids)
        return run_ids
    raise GptdashError(f"sweep {sweep.id}: the search proposed {MAX_REFUSED_ASKS} configs in a "
                       f"row that gptdash refuses (the last, {last}): narrow its ranges")


def _trial_name(sweep_name: str, number: int, label: str, seed: dict[str, int]) -> str:
    """'tune #3 lr=0.002 n_layers=4 seed=1', cut to a name's length (the label may be long)."""
    name = f"{sweep_name} #{number} {label}" + (f" seed={seed[SEED_KEY]}" if seed else "")
    return name[:NAME_MAX]


def _fmt(value: Value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _tell_ended(store: RunStore, study: optuna.Study, runs: list[RunRecord],
                objectives: list[str]) -> None:
    """Tell the study of each running trial whose runs have all ended: FAIL if one failed,
    PRUNED if one was pruned, else COMPLETE with the mean of their objectives. A trial left
    without runs (its asker died before queueing them, or they were deleted) is FAIL."""
    by_id = {r.id: r for r in runs}
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        members = [by_id.get(i) for i in trial_runs(trial)]
        if not members or None in members:
            study.tell(trial.number, state=TrialState.FAIL)
            continue
        if any(run.status not in TOLD_STATUSES for run in members):
            continue
        outcomes = [_outcome(store, run, objectives) for run in members]
        if None in outcomes:  # a person's stop: it may be resumed
            continue
        states = {state for state, _ in outcomes}
        if states == {TrialState.COMPLETE}:
            means = [fmean(values[i] for _, values in outcomes) for i in range(len(objectives))]
            study.tell(trial.number, means)
        else:
            study.tell(trial.number, state=(TrialState.FAIL if TrialState.FAIL in states
                                            else TrialState.PRUNED))


def _outcome(store: RunStore, run: RunRecord,
             objectives: list[str]) -> tuple[TrialState, list[float] | None] | None:
    """What an ended run tells its trial: COMPLETE with its objectives, PRUNED when the
    search's pruner stopped it, FAIL for a fault, NaN or a cancel; None (nothing yet) when
    a person or its worker's shutdown stopped it: it may be resumed and finish."""
    if run.status == RunStatus.STOPPED:
        pruned = any(e.kind == "early_stop" for e in store.event_rows([run.id]))
        return (TrialState.PRUNED, None) if pruned else None
    if run.status != RunStatus.COMPLETED:
        return TrialState.FAIL, None
    values = [objective_value(store, run, name) for name in objectives]
    if any(v is None or not math.isfinite(v) for v in values):
        return TrialState.FAIL, None
    return TrialState.COMPLETE, values


def objective_value(store: RunStore, run: RunRecord, name: str) -> float | None:
    """A finished run's ``loss`` (its last val loss), ``flops`` (training FLOPs spent) or
    ``time`` (training seconds)."""
    if name == "flops":
        return training_flops(TrainConfig.from_dict(run.config), run.last_step)
    if name == "time":
        return run.trained_s
    losses = store.metrics([run.id], [VAL_LOSS])
    return float(losses.sort_values("step")["value"].iloc[-1]) if not losses.empty else None



@dataclass
class SearchView:
    """What the Sweeps page shows of a search: its trials as a frame (number, state, run_id,
    one column per objective, one per setting), its Pareto front's trial numbers (several
    objectives) and each setting's importance (``optuna.importance``)."""

    trials: Any  # pandas.DataFrame
    objectives: list[str]
    params: list[str]
    front: list[int]
    importances: dict[str, float]


def search_view(store: RunStore, sweep: SweepRecord) -> SearchView:
    """Read a search's study for the page (``optuna.importance`` needs two complete trials
    that differ; with fewer, no importances)."""
    import pandas as pd

    plan = SearchPlan.from_spec(sweep.spec)
    study = open_study(store, sweep)
    trials = study.get_trials(deepcopy=False)
    rows = [{"number": t.number, "state": t.state.name.lower(),
             "run_id": t.user_attrs.get(TRIAL_RUN_ATTR),
             **dict(zip(plan.objectives, t.values or [None] * len(plan.objectives),
                        strict=True)),
             **{p: t.params.get(p) for p in plan.params}} for t in trials]
    frame = pd.DataFrame(rows, columns=["number", "state", "run_id", *plan.objectives,
                                        *plan.params])
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    front = ([t.number for t in study.best_trials]
             if len(plan.objectives) > 1 and complete else [])
    importances: dict[str, float] = {}
    if len(complete) >= 2 and len(plan.params) > 1:
        try:
            # Several objectives: what it takes to reach the study's best trials on all.
            importances = optuna.importance.get_param_importances(study)
        except (RuntimeError, ValueError):  # every complete trial alike: nothing to tell
            importances = {}
    return SearchView(trials=frame, objectives=plan.objectives, params=plan.params,
                      front=front, importances=dict(importances))
