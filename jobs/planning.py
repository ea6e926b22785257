"""The budget planner on the user's own runs: gather them from the store, plan with
``analysis.planner``, and queue what it recommends (``gptdash plan``, the Plan page).

A corpus and tokenizer (default: those of the newest run) pick the runs, and of them those
of one batch (tokens a step: the one most runs trained at), since at another batch the same
model on the same tokens ends elsewhere; the others are listed as left out. Each completed
run counts with its parameters (``gptcore.estimate.param_count``), the tokens it trained on
(tokens per step x steps done) and its last val loss. A run still training, stopped or
interrupted counts with its calibrated forecast of the val loss at its max_steps, on
max_steps' tokens; an uncalibrated forecast is never used (its band is a rule, not a
measure), and such a run is listed as left out. FLOPs are counted as gptcore counts them
(``flops_per_token``: 6N plus attention), through a line in log N fitted on the shapes the
planner may recommend. A time budget is turned into FLOPs with the tokens/s measured on the
user's runs of that device.

No torch: ``gptdash plan`` answers at once.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from analysis.forecast import BAND_LEVEL as FORECAST_LEVEL
from analysis.isoflop import infer_budgets
from analysis.ladder import (
    Ladder,
    Shape,
    Throughput,
    fit_flops_per_token,
    fit_throughput,
    runs_to_narrow,
    shape_ladder,
)
from analysis.planner import (
    MIN_FIT_TOKENS,
    LrAdvice,
    Plan,
    PlanPoint,
    learning_rate_for,
    plan,
)
from analysis.scaling import FlopsPerToken, log_sd_of_band, token_flops
from gptcore.config import TrainConfig
from gptcore.errors import GptdashError
from gptcore.estimate import flops_per_token, param_count
from gptcore.metric_keys import TOKENS_PER_SEC, VAL_LOSS
from gptcore.tokens import lookup
from jobs.forecasting import run_forecast
from jobs.sweeps import NOMINAL_FLOPS_PER_S, SweepPlan, submit_sweep
from storage.home import cache_dir
from storage.status import RunStatus

if TYPE_CHECKING:
    from storage.store import RunRecord, RunStore

# Runs that count with their calibrated forecast rather than their last loss.
UNFINISHED = (RunStatus.RUNNING, RunStatus.STOPPED, RunStatus.INTERRUPTED)
DEFAULT_LADDER_S = 30 * 60.0
# Past this many epochs of its corpus a run learns little more from its tokens
# (Muennighoff et al. 2023, as ui.epochs says on the New run page).
REPEAT_LIMIT = 4.0
MAX_RUNS = 500  # the newest runs looked at
# The nearest shape this many times off the optimal size: the ladder of shapes ends there.
SHAPE_MISS = 1.5
# The sweep spec's key for an IsoFLOP ladder's budgets, so a later plan fits approach 2 on it.
LADDER_KEY = "isoflop_budgets"
# Evaluations of a ladder run: enough for its curve (and a forecast while it trains).
LADDER_EVALS = 5
_DURATION = re.compile(r"(?:(\d+(?:\.\d*)?)h)?(?:(\d+(?:\.\d*)?)m(?:in)?)?(?:(\d+(?:\.\d*)?)s)?")


def parse_duration(text: str) -> float:
    """Seconds in ``2h``, ``30m``, ``1h30m``, ``90s``; GptdashError for anything else."""
    match = _DURATION.fullmatch(text.strip().lower())
    if not text.strip() or match is None or not any(match.groups()):
        raise GptdashError(f"{text!r} is not a duration: write it as 2h, 30m, 1h30m or 90s")
    h, m, s = (float(g) if g else 0.0 for g in match.groups())
    seconds = 3600 * h + 60 * m + s
    if not seconds > 0:
        raise GptdashError(f"the duration {text!r} must be more than zero")
    return seconds


def parse_amount(text: str, what: str) -> float:
    """A positive number such as ``3e15`` (FLOPs or tokens); GptdashError otherwise."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise GptdashError(f"{text!r} is not a number of {what}: write a positive number such "
                           "as 3e15")
    return value


@dataclass(frozen=True)
class PlanRun:
    """One run as the planner sees it. ``source``: "final" (its last val loss) or
    "forecast" (its calibrated forecast, with ``low``-``high``)."""

    run_id: int
    name: str
    params: int
    tokens: int
    loss: float
    source: str
    low: float | None
    high: float | None
    lr: float
    device: str | None
    tokens_per_s: float | None
    sweep_id: int | None


@dataclass(frozen=True)
class Gathered:
    """The runs of one corpus and tokenizer, the config new runs start from (the newest
    run's, else the defaults) and the runs left out, each with why."""

    corpus: str
    tokenizer: str
    base: TrainConfig
    runs: list[PlanRun]
    left_out: list[tuple[int, str]]


def _config(run: RunRecord) -> TrainConfig | None:
    try:
        return TrainConfig.from_dict(run.config)
    except GptdashError:
        return None  # a config this version cannot read


def _median_tps(store: RunStore, run_id: int) -> float | None:
    tps = store.metrics([run_id], [TOKENS_PER_SEC])
    return float(tps["value"].median()) if not tps.empty else None


def _as_plan_run(store: RunStore, run: RunRecord, cfg: TrainConfig) -> PlanRun | str:
    """The run's point, or why it is left out."""
    if run.status == RunStatus.COMPLETED:
        val = store.metrics([run.id], [VAL_LOSS])
        if val.empty or run.last_step < 1:
            return "completed without a val loss"
        steps, loss, source, low, high = run.last_step, float(val["value"].iloc[-1]), "final", \
            None, None
    else:
        forecast = run_forecast(store, run.id)
        if forecast is None:
            return f"{run.status}: too few evaluations to forecast its final loss"
        if not forecast.calibrated:
            return (f"{run.status}: its forecast is uncalibrated (no finished run of the same "
                    "data to check it on)")
        steps, loss, source = cfg.max_steps, forecast.predicted_final, "forecast"
        low, high = forecast.low, forecast.high
    if not (math.isfinite(loss) and loss > 0):
        return f"its loss {loss} is not a positive number"
    return PlanRun(run.id, run.name, param_count(cfg), steps * cfg.tokens_per_step, loss,
                   source, low, high, cfg.lr, run.device, _median_tps(store, run.id),
                   run.sweep_id)


def corpora(store: RunStore) -> list[tuple[str, str]]:
    """The (corpus, tokenizer) pairs of the runs, the newest run's first."""
    pairs = ((c.corpus, c.tokenizer) for r in store.list_runs(limit=MAX_RUNS)
             if (c := _config(r)) is not None)
    return list(dict.fromkeys(pairs))


def gather(store: RunStore, corpus: str | None = None,
           tokenizer: str | None = None) -> Gathered:
    """The planner's runs of ``corpus`` and ``tokenizer`` (default: the newest run's)."""
    runs = [(r, c) for r in store.list_runs(limit=MAX_RUNS) if (c := _config(r)) is not None]
    corpus = corpus or (runs[0][1].corpus if runs else TrainConfig().corpus)
    tokenizer = tokenizer or (runs[0][1].tokenizer if runs else TrainConfig().tokenizer)
    of_corpus = [(r, c) for r, c in runs if c.corpus == corpus and c.tokenizer == tokenizer]
    mine = [(r, c) for r, c in of_corpus
            if r.status == RunStatus.COMPLETED or r.status in UNFINISHED]
    # One law is one batch's: the plan is for the batch (tokens a step) most of the runs
    # trained at, the newest run's among equals.
    counts = Counter(c.tokens_per_step for _, c in mine if not c.init_from)
    batch = max(counts, key=counts.__getitem__) if counts else None
    # New runs start from the newest run of that batch trained from scratch (with none,
    # the newest run queued or tried): a fine-tune's weights are another run's, and so is
    # part of its loss.
    base = next((c for _, c in (mine if counts else of_corpus)
                 if not c.init_from and (batch is None or c.tokens_per_step == batch)),
                replace(TrainConfig(), corpus=corpus, tokenizer=tokenizer))
    used, left_out = [], []
    for run, cfg in mine:
        if cfg.init_from:
            left_out.append((run.id, "fine-tuned from other weights: its loss is not what "
                                     "its own tokens bought"))
            continue
        if cfg.tokens_per_step != batch:
            left_out.append((run.id, f"trained at {cfg.tokens_per_step:,} tokens a step where "
                                     f"most runs (and the plan) take {batch:,}: one law holds "
                                     "for one batch (at 4-8x the batch, runs of the same size "
                                     "and tokens ended 8-22% higher)"))
            continue
        try:
            point = _as_plan_run(store, run, cfg)
        except GptdashError as exc:  # a forecast that cannot be made: say why, plan on
            point = str(exc)
        if isinstance(point, str):
            left_out.append((run.id, point))
        else:
            used.append(point)
    return Gathered(corpus, tokenizer, base.validate(), used, left_out)


def devices(runs: list[PlanRun]) -> list[str]:
    """The devices (``cpu``, ``cuda``) on which runs measured their tokens/s, newest first."""
    return list(dict.fromkeys(r.device.split(" ")[0] for r in runs if r.tokens_per_s and r.device))


def _device_matches(label: str | None, device: str) -> bool:
    """``cpu`` matches a run on ``cpu``; ``cuda`` one on ``cuda (NVIDIA H100 ...)``."""
    return label is not None and (label == device or label.split(" ")[0] == device)


def _with_shape(base: TrainConfig, shape: Shape) -> TrainConfig:
    return replace(base, model=replace(base.model, n_layers=shape.n_layers,
                                       emb_dim=shape.emb_dim, n_heads=shape.n_heads))


@dataclass(frozen=True)
class Recommended:
    """A plan point as a run to queue: its config (shape, steps, lr), and epochs of the
    corpus it implies (None while the corpus is not tokenized)."""

    point: PlanPoint
    config: TrainConfig
    epochs: float | None


@dataclass(frozen=True)
class BudgetPlan:
    """Everything ``gptdash plan`` and the Plan page show."""

    gathered: Gathered
    plan: Plan
    budget: str  # the budget as asked: "2h on cpu", "3e+15 FLOPs", "5e+08 tokens"
    device: str | None  # whose throughput gives the times
    throughput: Throughput | None
    throughput_runs: int  # 0: the nominal speed (only for the ladder), or none
    lr: LrAdvice | None
    lr_how: str
    recommended: list[Recommended]  # 0.5x, 1x, 2x
    train_tokens: int | None
    warnings: list[str]
    flops_per_token: FlopsPerToken
    ladder_configs: list[TrainConfig]

    @property
    def main(self) -> Recommended:
        return next(r for r in self.recommended if r.point.multiple == 1.0)


def run_config(base: TrainConfig, shape: Shape, tokens: float, lr: float, *,
               ladder: bool = False) -> TrainConfig:
    """``base`` with ``shape``, the steps that train on about ``tokens`` and ``lr`` (min_lr
    kept in its ratio to lr); warmup and evaluations at most a tenth of the steps, so a
    short run still warms up, decays and is forecast. A ``ladder`` run is there for its
    final loss: LADDER_EVALS evaluations and no samples, which cost a short run of a small
    model a fifth of its time or more."""
    steps = max(1, round(tokens / base.tokens_per_step))
    cfg = _with_shape(base, shape)
    evals = max(1, min(base.eval_interval, steps // 10))
    if ladder:
        evals = max(1, steps // LADDER_EVALS)
    return replace(cfg, max_steps=steps, lr=lr, min_lr=base.min_lr * lr / base.lr,
                   warmup_steps=min(base.warmup_steps, steps // 10), eval_interval=evals,
                   sample_tokens=0 if ladder else cfg.sample_tokens,
                   checkpoint_interval=min(base.checkpoint_interval, steps)).validate()


def _train_tokens(base: TrainConfig) -> int | None:
    """The corpus's training tokens when the token cache holds it tokenized, else None."""
    try:
        found = lookup(base.corpus, base.tokenizer, cache_dir(), base.val_fraction,
                       base.text_field)
    except (GptdashError, OSError):
        return None
    return found.manifest.train_tokens if found is not None else None


def _throughput(runs: list[PlanRun], device: str | None,
                fpt: FlopsPerToken) -> tuple[str | None, Throughput | None, int]:
    """The device (given, else the newest measured run's) and its speed law from the runs'
    tokens/s; (device, None, 0) when none of its runs measured one."""
    if device is None and (seen := devices(runs)):
        device = seen[0]
    on = [r for r in runs if r.tokens_per_s and device is not None
          and _device_matches(r.device, device)]
    if not on:
        return device, None, 0
    return device, fit_throughput([r.params for r in on], [r.tokens_per_s for r in on], fpt), \
        len(on)


def make_plan(store: RunStore, *, seconds: float | None = None, flops: float | None = None,
              tokens: float | None = None, device: str | None = None,
              corpus: str | None = None, tokenizer: str | None = None,
              ladder_time_s: float = DEFAULT_LADDER_S, n_boot: int = 300,
              seed: int = 0, gathered: Gathered | None = None) -> BudgetPlan:
    """Plan a budget (one of ``seconds`` on ``device``, ``flops`` or ``tokens``) from the
    user's runs (``gathered``, else those of ``corpus`` and ``tokenizer``); GptdashError for
    a budget it cannot plan."""
    if sum(b is not None for b in (seconds, flops, tokens)) != 1:
        raise GptdashError("give the budget one way: a time (--budget 2h --device cpu), "
                           "FLOPs (--flops 3e15) or tokens (--tokens 5e8)")
    gathered = gathered or gather(store, corpus, tokenizer)
    base = gathered.base

    def count(layers: int, emb: int, heads: int) -> int:
        return param_count(_with_shape(base, Shape(layers, emb, heads, 0)))

    shapes = shape_ladder(count)
    fpt = fit_flops_per_token(shapes, lambda s: flops_per_token(_with_shape(base, s)))
    runs = gathered.runs
    device, throughput, measured = _throughput(runs, device, fpt)
    if seconds is not None and throughput is None:
        where = f" on {device}" if device else ""
        raise GptdashError(f"no finished run{where} recorded its tokens/s, so a time cannot be "
                           "turned into FLOPs: train a run there first, or give the budget as "
                           "--flops or --tokens")
    notes = []
    ladder_speed = throughput
    if throughput is None:
        ladder_speed = Throughput(NOMINAL_FLOPS_PER_S, flops_per_token=fpt)
        notes.append(f"no run has measured this machine's speed: times assume a nominal "
                     f"{NOMINAL_FLOPS_PER_S / 1e9:g} GFLOP/s (a laptop CPU's)")
    budgets = sorted({b for sweep_id in {r.sweep_id for r in runs if r.sweep_id is not None}
                      for b in store.get_sweep(sweep_id).spec.get(LADDER_KEY, [])})
    if not budgets and runs:  # IsoFLOP curves trained by hand: runs of one budget, 3+ sizes
        n_runs = np.array([float(r.params) for r in runs])
        budgets = infer_budgets(token_flops(fpt, n_runs) * np.array([float(r.tokens)
                                                                     for r in runs]), n_runs)
    try:
        result = plan([r.params for r in runs], [r.tokens for r in runs],
                      [r.loss for r in runs], flops, seconds=seconds, tokens=tokens,
                      shapes=shapes, flops_per_token=fpt, throughput=ladder_speed,
                      ladder_time_s=ladder_time_s, isoflop_budgets=budgets, n_boot=n_boot,
                      seed=seed, loss_sd=[_loss_sd(r) for r in runs])
    except ValueError as exc:
        raise GptdashError(str(exc)) from None
    main = result.main
    if abs(math.log(main.params / float(main.n_opt.value))) > math.log(SHAPE_MISS):
        edge = "smallest" if main.params > float(main.n_opt.value) else "largest"
        notes.append(f"the law's best size for this budget is {float(main.n_opt.value):,.0f} "
                     f"parameters, and the {edge} shape the planner has is "
                     f"{main.params:,.0f} ({main.shape.n_layers} x {main.shape.emb_dim}): "
                     "the recommended run is that shape, off the optimum, so its loss is "
                     "higher than the budget could buy")
    advice = learning_rate_for([r.params for r in runs], [r.lr for r in runs],
                               [r.loss for r in runs], result.main.params) if runs else None
    lr_how = advice.how if advice else (f"{base.lr:g}, the lr new runs start from (the newest "
                                        "run's, or the default): no finished runs to compare")
    train_tokens = _train_tokens(base)
    recommended = []
    for point in result.points:
        lr = advice.lr if advice else base.lr
        cfg = run_config(base, point.shape, point.tokens, lr)
        seen = cfg.tokens_per_step * cfg.max_steps
        recommended.append(Recommended(point, cfg, seen / train_tokens if train_tokens else None))
    warnings = [f"{r.point.multiple:g}x the budget trains on {r.epochs:.1f} epochs of the "
                f"corpus, more than {REPEAT_LIMIT:g}: past that repeated tokens are worth "
                "little (Muennighoff et al. 2023); a larger corpus spends it better"
                for r in recommended if r.epochs is not None and r.epochs > REPEAT_LIMIT]
    ladder_configs = []
    if result.ladder is not None:
        lr = advice.lr if advice else base.lr
        ladder_configs = [run_config(base, r.shape, r.tokens, lr, ladder=True)
                          for r in result.ladder.runs]
        if train_tokens and ladder_configs:
            most = max(c.tokens_per_step * c.max_steps for c in ladder_configs) / train_tokens
            if most > REPEAT_LIMIT:
                warnings.append(
                    f"the ladder's longest runs train on {most:.1f} epochs of the corpus, more "
                    f"than {REPEAT_LIMIT:g}: a law fitted on them is one of repeated tokens, "
                    "which says little about a run on fresh ones; a larger corpus (or a "
                    "shorter --ladder-time) fits a law that holds")
    description = (f"{time_text(seconds)} on {device}" if seconds is not None else
                   f"{flops:.3g} FLOPs" if flops is not None else f"{tokens:.3g} tokens")
    return BudgetPlan(gathered, replace(result, notes=[*result.notes, *notes]), description,
                      device, throughput, measured, advice, lr_how, recommended, train_tokens,
                      warnings, fpt, ladder_configs)


def narrowing(bp: BudgetPlan) -> str | None:
    """How many more runs like these would halve the band of the main loss, or None."""
    loss = bp.main.point.loss
    if loss is None or bp.plan.n_runs == 0:
        return None
    width = float(loss.high - loss.low)
    more = runs_to_narrow(width, bp.plan.n_runs, width / 2)
    return (f"the {loss.level:.0%} band of the loss is {float(loss.low):.3f} to "
            f"{float(loss.high):.3f}; about {more} more runs like these would halve it "
            f"(a bootstrap band narrows as 1/sqrt(runs); runs nearer the budget narrow it "
            "faster)")


def left_out_of_law(bp: BudgetPlan) -> str | None:
    """One line naming the runs left out of the law's fit (``Plan.fit_left_out``), or None;
    each run's own reason is in ``bp.plan.fit_left_out``."""
    ids = [bp.gathered.runs[i].run_id for i in bp.plan.fit_left_out]
    if not ids:
        return None
    tokens = [bp.gathered.runs[i].tokens for i in bp.plan.fit_left_out]
    return (f"left out of the law's fit, as trained on fewer than {MIN_FIT_TOKENS:,} tokens "
            f"({min(tokens):,} to {max(tokens):,}): run{'s' if len(ids) > 1 else ''} "
            f"{', '.join(str(i) for i in sorted(ids))}")


def queue_recommended(store: RunStore, bp: BudgetPlan) -> int:
    """Queue the run recommended for the budget; its id."""
    from jobs import actions

    cfg = bp.main.config
    name = (f"plan {bp.budget}: {cfg.model.n_layers}x{cfg.model.emb_dim} "
            f"{cfg.max_steps} steps")
    return actions.submit(store, cfg, name=name, tags=["plan"])


def queue_ladder(store: RunStore, bp: BudgetPlan) -> tuple[int, list[int]]:
    """Queue the proposed IsoFLOP ladder as one sweep (its budgets kept in the sweep's spec,
    so the next plan fits approach 2 on its runs); (sweep id, run ids)."""
    ladder: Ladder | None = bp.plan.ladder
    if ladder is None:
        raise GptdashError("there is no ladder to queue: the runs already fit the law "
                           "(queue the recommended run instead)")
    overrides = [{"n_layers": c.model.n_layers, "emb_dim": c.model.emb_dim,
                  "n_heads": c.model.n_heads, "max_steps": c.max_steps}
                 for c in bp.ladder_configs]
    spec = {"base": bp.gathered.base.to_dict(), "params": list(overrides[0]),
            "runs": overrides, LADDER_KEY: ladder.budgets}
    sweep = SweepPlan(configs=bp.ladder_configs, params=list(overrides[0]), spec=spec,
                      estimated_seconds=ladder.total_s, overrides=overrides)
    return submit_sweep(store, sweep, name="isoflop ladder", tags=["plan"])


def time_text(seconds: float | None) -> str:
    """3.5 h, 40 min, 75 s: a duration no more precise than an estimate is; - for none."""
    if seconds is None:
        return "-"
    if seconds >= 5400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def _loss_sd(run: PlanRun) -> float:
    """How uncertain a run's loss is for the fit: 0 for a final val loss, else what its
    forecast's band says (the forecasts' bands are FORECAST_LEVEL bands)."""
    if run.source != "forecast" or run.low is None or run.high is None:
        return 0.0
    return log_sd_of_band(max(run.low, 1e-9), max(run.high, run.low, 1e-9), FORECAST_LEVEL)


def arrays(runs: list[PlanRun]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, D, loss) of the runs, for figures."""
    return (np.array([r.params for r in runs], dtype=float),
            np.array([r.tokens for r in runs], dtype=float),
            np.array([r.loss for r in runs], dtype=float))
