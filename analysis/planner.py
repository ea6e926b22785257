"""The budget planner's core: from runs' (N, D, loss), what to train for a budget.

How much it can say depends on how many model sizes the runs span:

- three sizes or more (and five runs): the law is fitted whole (``analysis.scaling``);
  the allocation, the predicted loss and their bands are the user's own. Where the runs
  also hold IsoFLOP curves with a minimum inside their sizes at two budgets or more, the
  allocation follows those minima (approach 2) and the loss the law.
- two sizes: how the loss falls with N cannot be told apart from noise, so alpha and
  beta are held at Epoch's refit of Chinchilla (stated in the notes) and E, A and B are
  fitted; the bands are the bootstrap's and wide. A ladder is proposed alongside.
- none or one: nothing about N is known. The allocation is Epoch's law's (no band, no
  loss: a published law's loss says nothing about this corpus and tokenizer) and an
  IsoFLOP ladder is proposed, to fit the law from.

Runs of under MIN_FIT_TOKENS tokens are left out of the law's fit (``law_runs``) when the
others fit it as fully; they stay on their IsoFLOP curves. Every answer comes for half, the
whole and twice the budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
from scipy import optimize

from analysis.isoflop import IsoFlopFit, assign_budgets, fit_isoflop
from analysis.ladder import Ladder, Shape, Throughput, nearest_shape, propose_ladder
from analysis.scaling import (
    BAND_LEVEL,
    EPOCH,
    N_BOOT,
    Allocation,
    Band,
    FlopsPerToken,
    LawFit,
    LossLaw,
    count_sizes,
    fit_loss_law,
    size_groups,
    token_flops,
)

MIN_SIZES_TO_FIT = 3
MIN_RUNS_TO_FIT = 5  # the law's five constants
MIN_RUNS_FIXED_EXPONENTS = 3  # E, A and B
# Runs that trained on fewer tokens than this sit below the law the longer runs follow
# (early in training B / D^beta overshoots the loss), and with them in the fit
# the law bends to them (E toward 0) and under-predicts larger budgets. Measured on our
# byte-level CPU runs at 1,024 tokens a step (bench/RESULTS.md, "Planner on our own CPU
# runs"): runs under ~1 M tokens fell 5-40% below the law fitted on the others, runs above
# it sat on the law at 1.9 to 300 tokens per parameter, and the same short runs at a
# quarter of the batch (four times the steps) fell further below, so the floor is one of
# tokens, not of steps or of tokens per parameter. Unmeasured for other tokenizers.
MIN_FIT_TOKENS = 1_000_000
BUDGET_MULTIPLES = (0.5, 1.0, 2.0)
PRIOR = EPOCH  # the law assumed where the runs cannot fit one


class PlanMode(StrEnum):
    """How the plan was made (``Plan.mode``)."""

    FITTED = "fitted"
    FIXED_EXPONENTS = "fixed_exponents"
    PRIOR = "prior"


@dataclass(frozen=True, eq=False)
class PlanPoint:
    """What to train for ``compute`` FLOPs. ``n_opt``/``d_opt``/``tokens_per_param`` are the
    law's optimum (in PRIOR mode their low and high are NaN: no band). ``shape`` is the
    nearest shape the user can train (None without shapes), ``params`` and ``tokens`` that
    shape's parameters and the tokens the budget buys it; ``loss`` the loss predicted for
    that run with its band (None in PRIOR mode); ``seconds`` its training time (None
    without a throughput)."""

    compute: float
    multiple: float
    n_opt: Band
    d_opt: Band
    tokens_per_param: Band
    shape: Shape | None
    params: float
    tokens: float
    loss: Band | None
    seconds: float | None


@dataclass(frozen=True, eq=False)
class Plan:
    """The answer for half, the whole and twice the budget (``points``, in that order),
    how it was made (``mode``, ``notes``: one line each, for the user), the fitted law
    (None in PRIOR mode) and, when the runs span too few sizes, the ladder to train."""

    mode: PlanMode
    n_runs: int
    n_sizes: int
    points: list[PlanPoint]
    fit: LawFit | None
    ladder: Ladder | None
    notes: list[str]
    isoflop: IsoFlopFit | None = None  # approach 2, where the runs hold IsoFLOP curves
    # The runs (indices into the plan's inputs) left out of the law's fit, each with why;
    # they still count in the IsoFLOP curves.
    fit_left_out: dict[int, str] = field(default_factory=dict)

    @property
    def main(self) -> PlanPoint:
        """The point at the budget asked for (multiple 1)."""
        return next(p for p in self.points if p.multiple == 1.0)


def _solve_log(gap: Callable[[float], float], guess: float) -> float:
    """The root in log C of ``gap`` (increasing in it), bracketed outwards from ``guess``."""
    low = high = math.log(guess)
    while gap(low) > 0:
        low -= 3.0
    while gap(high) < 0:
        high += 3.0
    return math.exp(optimize.brentq(gap, low, high, xtol=1e-9)) if low < high else guess


def compute_for_tokens(law: LossLaw, tokens: float,
                       flops_per_token: FlopsPerToken | None = None) -> float:
    """The budget whose compute-optimal run trains on ``tokens`` tokens (D_opt grows with C)."""
    if not tokens > 0:
        raise ValueError(f"tokens must be positive, not {tokens}")

    def gap(log_c: float) -> float:
        return math.log(float(law.optimal(math.exp(log_c), flops_per_token)[1]) / tokens)
    # About 20 tokens a parameter: C = 6 N D = 0.3 D**2.
    return _solve_log(gap, 0.3 * tokens ** 2)


def compute_for_time(law: LossLaw, seconds: float, throughput: Throughput,
                     flops_per_token: FlopsPerToken | None = None) -> float:
    """The budget whose compute-optimal run trains in ``seconds`` at ``throughput``: the
    time budget as FLOPs, where the machine's FLOP/s depends on the model's size."""
    if not seconds > 0:
        raise ValueError(f"the time budget must be positive, not {seconds}")

    def gap(log_c: float) -> float:
        n, d = law.optimal(math.exp(log_c), flops_per_token)
        return math.log(float(throughput.seconds(n, d)) / seconds)
    return _solve_log(gap, seconds * throughput.flops_per_s)


def _at(band: Band, i: int) -> Band:
    return Band(band.value[i], band.low[i], band.high[i], band.level)


def _point(allocation: Allocation, i: int, fit: LawFit | None, shapes: Sequence[Shape],
           throughput: Throughput | None, flops_per_token: FlopsPerToken | None) -> PlanPoint:
    """The plan for the i-th budget of ``allocation``."""
    compute = float(allocation.compute[i])
    n_opt = float(allocation.n.value[i])
    shape = nearest_shape(shapes, n_opt) if shapes else None
    params = float(shape.params) if shape else n_opt
    tokens = float(compute / token_flops(flops_per_token, np.asarray(params)))
    loss = fit.predict(params, tokens) if fit else None
    seconds = float(throughput.seconds(params, tokens)) if throughput else None
    return PlanPoint(compute, BUDGET_MULTIPLES[i], _at(allocation.n, i), _at(allocation.d, i),
                     _at(allocation.tokens_per_param, i), shape, params, tokens, loss, seconds)


def _mode(sizes: int, runs: int) -> PlanMode:
    if sizes >= MIN_SIZES_TO_FIT and runs >= MIN_RUNS_TO_FIT:
        return PlanMode.FITTED
    if sizes >= 2 and runs >= MIN_RUNS_FIXED_EXPONENTS:
        return PlanMode.FIXED_EXPONENTS
    return PlanMode.PRIOR


def law_runs(n: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, dict[int, str], str | None]:
    """Which runs the law is fitted on: those of MIN_FIT_TOKENS tokens or more, as long as
    they alone fit the law as fully as all the runs would (the same ``PlanMode``); else all.
    (mask, {index: why left out}, a note for the user or None)."""
    short = d < MIN_FIT_TOKENS
    keep = ~short
    everything = _mode(count_sizes(n), n.size)
    if not short.any() or everything == PlanMode.PRIOR:  # no law is fitted
        return np.ones(n.size, dtype=bool), {}, None
    if _mode(count_sizes(n[keep]), int(keep.sum())) != everything:
        return np.ones(n.size, dtype=bool), {}, (
            f"{int(short.sum())} run(s) trained on fewer than {MIN_FIT_TOKENS:,} tokens are in "
            "the law's fit because the others alone are too few to fit it; such short runs "
            "sit below the law longer runs follow, so the fit may bend toward them: train "
            "longer runs to plan without them")
    why = {int(i): (f"trained on {d[i]:,.0f} tokens, fewer than {MIN_FIT_TOKENS:,}: so early "
                    "in training the loss lies below the law longer runs follow; left out of "
                    "the law's fit (it still counts in its budget's IsoFLOP curve)")
           for i in np.flatnonzero(short)}
    return keep, why, (f"{int(short.sum())} run(s) trained on fewer than {MIN_FIT_TOKENS:,} "
                       "tokens are left out of the law's fit (they still count in the IsoFLOP "
                       "curves)")


def plan(n: Sequence[float] | np.ndarray, d: Sequence[float] | np.ndarray,
         loss: Sequence[float] | np.ndarray, flops: float | None = None, *,
         seconds: float | None = None, tokens: float | None = None,
         shapes: Sequence[Shape] = (), flops_per_token: FlopsPerToken | None = None,
         throughput: Throughput | None = None, ladder_time_s: float | None = None,
         isoflop_budgets: Sequence[float] = (), n_boot: int = N_BOOT, seed: int = 0,
         level: float = BAND_LEVEL, loss_sd: Sequence[float] | None = None) -> Plan:
    """Plan a budget from runs of ``n`` parameters on ``d`` tokens that reached ``loss``
    (finished runs' final val loss, or a calibrated forecast of it).

    The budget is one of ``flops``, ``seconds`` (training time at ``throughput``) or
    ``tokens`` (the tokens of the optimal run); the last two become FLOPs through the law
    the plan uses (``compute_for_time``, ``compute_for_tokens``). ``shapes``
    (``ladder.shape_ladder``) turn the optimal N into a shape; ``throughput``
    (``ladder.fit_throughput``) turns tokens into seconds; with both and ``ladder_time_s``
    an IsoFLOP ladder that trains in that time is proposed whenever the runs span fewer than
    MIN_SIZES_TO_FIT sizes. With ``isoflop_budgets`` (a ladder's ``budgets``) the runs
    on them are also fitted by approach 2 (``Plan.isoflop``; a note says why not when
    they cannot be), and where they are, the allocation is approach 2's. ``loss_sd``
    (``scaling.log_sd_of_band``): how uncertain each loss is (a forecast's band; 0 for a
    finished run), drawn afresh in every bootstrap resample.
    ValueError for unusable runs or budget.
    """
    if sum(b is not None for b in (flops, seconds, tokens)) != 1:
        raise ValueError("give the budget one way: as FLOPs, seconds or tokens")
    if seconds is not None and throughput is None:
        raise ValueError("a budget in time needs the machine's throughput: train a run first "
                         "or give the budget in FLOPs")
    n_arr, d_arr = np.asarray(n, dtype=float), np.asarray(d, dtype=float)
    loss_arr = np.asarray(loss, dtype=float)
    sizes = count_sizes(n_arr)
    mode = _mode(sizes, n_arr.size)
    keep, left_out, note = law_runs(n_arr, d_arr)
    notes: list[str] = [note] if note else []
    sd = None if loss_sd is None else np.asarray(loss_sd, dtype=float)[keep]
    fit: LawFit | None = None
    if mode == PlanMode.FITTED:
        fit = fit_loss_law(n_arr[keep], d_arr[keep], loss_arr[keep], n_boot=n_boot, seed=seed,
                           level=level, loss_sd=sd)
    elif mode == PlanMode.FIXED_EXPONENTS:
        fit = fit_loss_law(n_arr[keep], d_arr[keep], loss_arr[keep], fixed_exponents=PRIOR,
                           n_boot=n_boot, seed=seed, level=level, loss_sd=sd)
        notes.append(f"{sizes} model sizes cannot fit how the loss falls with size: the "
                     f"exponents are held at Epoch AI's refit of Chinchilla (alpha "
                     f"{PRIOR.alpha}, beta {PRIOR.beta}) and only E, A and B are fitted; "
                     "train runs of a third size to fit them")
    else:
        notes.append(f"{n_arr.size} run(s) of {sizes} model size(s) cannot fit a law: the "
                     "model size and tokens follow Epoch AI's refit of Chinchilla, with no "
                     "band and no loss; train the proposed IsoFLOP ladder to plan from your "
                     "own runs")
    law = fit.law if fit else PRIOR
    if seconds is not None:
        compute = compute_for_time(law, seconds, throughput, flops_per_token)
    elif tokens is not None:
        compute = compute_for_tokens(law, tokens, flops_per_token)
    else:
        compute = flops
    if not compute > 0:
        raise ValueError(f"the budget must be a positive number of FLOPs, not {compute}")
    budgets = np.array([compute * m for m in BUDGET_MULTIPLES])
    isoflop = None
    if len(isoflop_budgets) and n_arr.size:
        run_flops = token_flops(flops_per_token, n_arr) * d_arr
        try:
            isoflop = fit_isoflop(n_arr, loss_arr, assign_budgets(run_flops, isoflop_budgets),
                                  flops_per_token=flops_per_token, n_boot=n_boot, seed=seed,
                                  level=level)
        except ValueError as e:
            notes.append(str(e))
    if isoflop is not None:
        # Where the runs hold IsoFLOP curves, their minima say where N_opt lies, as the
        # curves measure it; the law's valley only follows from five constants fitted to
        # every run. On our CPU ladders the minima's trend put N_opt within 1.1x of the
        # larger budgets' own minima, the law's valley 2-3x below (bench/RESULTS.md).
        allocation = isoflop.optimal(budgets)
        if fit is not None:
            by_law = float(fit.optimal(compute, flops_per_token).n.value)
            notes.append(f"the model size and tokens follow your runs' IsoFLOP minima "
                         f"(approach 2: N_opt ∝ C^{isoflop.n_exponent:.2f}, from "
                         f"{len(isoflop.minima)} budgets); the fitted law's own optimum is "
                         f"{by_law:,.0f} parameters; the loss is the law's")
    elif fit is not None:
        allocation = fit.optimal(budgets, flops_per_token)
    else:
        n_opt, d_opt = PRIOR.optimal(budgets, flops_per_token)
        unknown = np.full(budgets.shape, np.nan)
        allocation = Allocation(budgets, *(Band(v, unknown, unknown, level)
                                           for v in (n_opt, d_opt, d_opt / n_opt)))
    points = [_point(allocation, i, fit, shapes, throughput, flops_per_token)
              for i in range(budgets.size)]
    ladder = None
    if mode != PlanMode.FITTED and shapes and throughput and ladder_time_s:
        ladder = propose_ladder(ladder_time_s, throughput, shapes, law=law,
                                flops_per_token=flops_per_token)
    return Plan(mode=mode, n_runs=int(n_arr.size), n_sizes=sizes, points=points, fit=fit,
                ladder=ladder, notes=notes, isoflop=isoflop, fit_left_out=left_out)


@dataclass(frozen=True)
class LrAdvice:
    """A learning rate for a model size, and where it comes from (one line)."""

    lr: float
    how: str


def learning_rate_for(n: Sequence[float] | np.ndarray, lr: Sequence[float] | np.ndarray,
                      loss: Sequence[float] | np.ndarray, target_n: float) -> LrAdvice | None:
    """The lr for a model of ``target_n`` parameters from runs' sizes, peak lrs and losses.

    Each size's best lr is the lr of its lowest-loss run. From two sizes on, a line in log
    lr against log N through those (larger models take smaller lrs) gives the target's,
    unless it rises with N (noise, not a trend): then, as with one size, the best lr at
    the size nearest the target. Runs of one size that trained on different tokens compare
    only roughly. None without runs.
    """
    n_arr, lr_arr = np.asarray(n, dtype=float), np.asarray(lr, dtype=float)
    y = np.asarray(loss, dtype=float)
    groups = size_groups(n_arr)
    if not groups:
        return None
    sizes = np.array([np.exp(np.log(n_arr[g]).mean()) for g in groups])
    lrs = np.array([lr_arr[g][np.argmin(y[g])] for g in groups])
    if sizes.size >= 2 and np.all(lrs == lrs[0]):
        return LrAdvice(float(lrs[0]), f"{lrs[0]:g}, the lr of the best run at every one of "
                                       f"{sizes.size} sizes: no trend to fit")
    if sizes.size >= 2:
        slope, level = np.polyfit(np.log(sizes), np.log(lrs), 1)
        if slope <= 0:
            return LrAdvice(float(np.exp(level + slope * np.log(target_n))),
                            f"lr ∝ N^{slope:.2f}, fitted on the best lr of {sizes.size} sizes")
    nearest = int(np.argmin(np.abs(np.log(sizes / target_n))))
    return LrAdvice(float(lrs[nearest]), f"the best lr seen at {sizes[nearest]:,.0f} parameters")
