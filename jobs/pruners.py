"""A search sweep's study and pruners: the trial of a training run reports its val loss at
each evaluation, and the search's pruner says whether to stop it.

``--pruner forecast`` (the default for one objective) is ``ForecastPruner``: the decision of
``--cut`` (``jobs.halving``: the run's forecast confidently worse than the best of its sweep,
from the same share of steps, seeds judged as a group), taken at the evaluation that reaches
each cut point. ``median`` and ``hyperband`` are Optuna's own pruners over the reported val
losses; ``none`` reports and never stops. A pruned run is stopped and recorded as the cut
is (an ``early_stop`` event, the reason as its stop message), and its trial told PRUNED.

Asked from the process that trains the run (``jobs.bridge`` through ``jobs.halving``), so
it never imports the code that queues runs; ``jobs.search`` asks and tells. No torch.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING

import optuna
from optuna.pruners import BasePruner, HyperbandPruner, MedianPruner, NopPruner
from optuna.samplers import BaseSampler, RandomSampler, TPESampler
from optuna.trial import FrozenTrial, TrialState

from analysis.sweep import cut_steps
from gptcore.config import TrainConfig
from gptcore.metric_keys import VAL_LOSS

if TYPE_CHECKING:
    from storage.store import RunRecord, RunStore
    from storage.sweeps import SweepRecord

PRUNERS = ("forecast", "median", "hyperband", "none")
# The trial's user attributes that name its run, and all its runs (one per seed).
TRIAL_RUN_ATTR = "run_id"
TRIAL_RUNS_ATTR = "run_ids"
# What a search proposes at random before TPE models what it has seen: a quarter of its
# trials, between 2 and Optuna's default of 10.
MAX_STARTUP_TRIALS = 10

optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per trial would flood workers

_storages: dict[str, optuna.storages.RDBStorage] = {}
_storages_lock = threading.Lock()


def study_storage(store: RunStore) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage on ``store``'s database, one per URL and process. Its tables are
    ours to create (``storage.optuna_tables``): Optuna neither creates nor version-checks."""
    with _storages_lock:
        if store.url not in _storages:
            kwargs = ({"connect_args": {"timeout": 30}}
                      if store.engine.dialect.name == "sqlite" else {"pool_pre_ping": True})
            _storages[store.url] = optuna.storages.RDBStorage(
                store.url, engine_kwargs=kwargs, skip_compatibility_check=True,
                skip_table_creation=True)
        return _storages[store.url]


def make_sampler(searcher: str, seed: int, trials: int, seen: int) -> BaseSampler:
    """The sampler of the ``seen``-th ask: seeded with ``seed + seen``, so each ask (each
    from a fresh process, maybe) draws afresh, and the same command repeats its search."""
    if searcher == "random":
        return RandomSampler(seed=seed + seen)
    # constant_liar: trials still training count as bad guesses, so parallel asks spread.
    return TPESampler(seed=seed + seen, constant_liar=True,
                      n_startup_trials=max(2, min(MAX_STARTUP_TRIALS, trials // 4)))


class ForecastPruner(BasePruner):
    """``--cut``'s decision as an Optuna pruner: at the evaluation that reaches each cut
    point of ``max_steps`` (``cut_steps``), ``decide(step)`` gives a reason to stop or None."""

    def __init__(self, decide: Callable[[int], str | None], max_steps: int,
                 eval_interval: int) -> None:
        self.decide = decide
        self.points = cut_steps(max_steps)
        self.eval_interval = eval_interval
        self.reason: str | None = None

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or not any(step - self.eval_interval < c <= step for c in self.points):
            return False
        self.reason = self.decide(step)
        return self.reason is not None


def make_pruner(name: str, cfg: TrainConfig,
                decide: Callable[[int], str | None] | None = None) -> BasePruner:
    """The pruner called ``name`` for trials of ``cfg``'s length; ``decide`` is the forecast
    cut's decision (needed by ``forecast`` alone)."""
    first = cut_steps(cfg.max_steps)
    if name == "forecast" and decide is not None:
        return ForecastPruner(decide, cfg.max_steps, cfg.eval_interval)
    if name == "median":
        return MedianPruner(n_startup_trials=2, n_warmup_steps=first[0] if first else 0)
    if name == "hyperband":
        return HyperbandPruner(min_resource=cfg.eval_interval, max_resource=cfg.max_steps,
                               reduction_factor=3)
    return NopPruner()


def open_study(store: RunStore, sweep: SweepRecord, *,
               pruner: BasePruner | None = None) -> optuna.Study:
    """The sweep's study, with the sampler for its next ask."""
    s = sweep.spec["search"]
    storage = study_storage(store)
    study = optuna.load_study(study_name=sweep.study, storage=storage, pruner=pruner)
    study.sampler = make_sampler(s["searcher"], s["seed"], s["trials"],
                                 len(study.get_trials(deepcopy=False)))
    return study


def trial_runs(trial: FrozenTrial) -> list[int]:
    """The runs of a trial: one per seed (none yet while it is being asked)."""
    attrs = trial.user_attrs
    return list(attrs.get(TRIAL_RUNS_ATTR) or ([attrs[TRIAL_RUN_ATTR]]
                                               if TRIAL_RUN_ATTR in attrs else []))


def report_steps(sweep: SweepRecord, cfg: TrainConfig) -> list[int]:
    """The steps at which a trial of ``sweep`` reports to its study: every evaluation before
    the end, or none without a pruner."""
    if sweep.spec["search"]["pruner"] == "none":
        return []
    return list(range(cfg.eval_interval, cfg.max_steps, cfg.eval_interval))


def trial_cut_reason(store: RunStore, run: RunRecord, sweep: SweepRecord, upto: int,
                     decide: Callable[[int], str | None]) -> str | None:
    """Report run ``run``'s val loss at ``upto`` to its trial and ask the search's pruner;
    the reason to stop it, or None."""
    losses = store.metrics([run.id], [VAL_LOSS], max_step=upto)
    if losses.empty:
        return None
    value = float(losses.sort_values("step")["value"].iloc[-1])
    cfg = TrainConfig.from_dict(run.config)
    name = sweep.spec["search"]["pruner"]
    pruner = make_pruner(name, cfg, decide)
    study = open_study(store, sweep, pruner=pruner)
    frozen = next((t for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
                   if run.id in trial_runs(t)), None)
    if frozen is None:  # told already (a person stopped the search), or not this search's
        return None
    trial = optuna.trial.Trial(study, frozen._trial_id)
    with warnings.catch_warnings():  # a trial of seeds: its first run to get here reports
        warnings.filterwarnings("ignore", message=".*is already reported")
        trial.report(value, upto)
    if not trial.should_prune():
        return None
    if isinstance(pruner, ForecastPruner):
        return pruner.reason
    return (f"stopped at step {upto}: val loss {value:.3f}, pruned by the search's {name} "
            "pruner")
