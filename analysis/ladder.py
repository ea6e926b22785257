"""What to train to fit the law: model shapes near a size, the machine's speed by size, and
an IsoFLOP ladder (a few budgets x a few sizes) that fits a time the user gives.

Parameters are counted by the caller's ``param_count(n_layers, emb_dim, n_heads)``:
``analysis`` does not import ``gptcore``, whose ``estimate.param_count`` is the project's
one count (the CLI and pages pass it in, with the vocabulary and context of the runs).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize

from analysis.scaling import (
    EPOCH,
    FLOPS_PER_PARAM_TOKEN,
    FlopsPerToken,
    LossLaw,
    count_sizes,
    token_flops,
)

ParamCount = Callable[[int, int, int], int]  # (n_layers, emb_dim, n_heads) -> parameters

WIDTH_STEP = 32  # emb_dim a multiple of this
HEAD_DIM = 64  # the head width a shape's n_heads aims for (GPT-2's)
# emb_dim / n_layers within these: Kaplan et al. 2020 (Fig. 5) found the loss within a
# few percent over a wide range of aspect ratios around GPT-2's 64.
ASPECT = (16, 128)
MAX_LAYERS = 48
# One layer is not on the others' curve: on our CPU IsoFLOP runs (bench/planner_own_runs.py)
# a 1 x 64 model beat the 2 x 48 one of the same size by 5-6% at the smallest budgets and
# lost by 7.5% at 1e13 FLOPs (no second layer, no induction heads), which bent the law's
# fit and halved its N_opt. The ladder starts at two layers.
MIN_LAYERS = 2
MAX_EMB_DIM = 4096
LADDER_BUDGETS = 3
LADDER_SIZES = 5
BUDGET_STEP = 3.0  # each ladder budget this many times the last
SIZE_STEP = 2.0  # each size on a budget this many times the last
MIN_SIZE_GAP = 1.4  # where shapes run out: the least ratio of two sizes on one budget


@dataclass(frozen=True)
class Shape:
    n_layers: int
    emb_dim: int
    n_heads: int
    params: int


def heads_for(emb_dim: int) -> int:
    """The divisor of emb_dim whose head width is nearest HEAD_DIM (fewer heads on a tie)."""
    divisors = [h for h in range(1, emb_dim + 1) if emb_dim % h == 0]
    return min(divisors, key=lambda h: (abs(math.log(emb_dim / h / HEAD_DIM)), h))


def shape_ladder(param_count: ParamCount, *, max_layers: int = MAX_LAYERS,
                 max_emb_dim: int = MAX_EMB_DIM) -> list[Shape]:
    """Every shape of MIN_LAYERS layers or more with emb_dim a multiple of WIDTH_STEP,
    emb_dim / n_layers within ASPECT and n_heads from :func:`heads_for`, by increasing
    parameter count."""
    shapes = []
    for layers in range(MIN_LAYERS, max_layers + 1):
        for emb in range(WIDTH_STEP, max_emb_dim + 1, WIDTH_STEP):
            if ASPECT[0] <= emb / layers <= ASPECT[1]:
                heads = heads_for(emb)
                shapes.append(Shape(layers, emb, heads, int(param_count(layers, emb, heads))))
    return sorted(shapes, key=lambda s: (s.params, s.n_layers))


def nearest_shape(shapes: Sequence[Shape], n: float) -> Shape:
    """The shape whose parameter count is nearest ``n`` (in ratio)."""
    if not shapes:
        raise ValueError("no model shapes to choose from: widen max_layers or max_emb_dim")
    return min(shapes, key=lambda s: abs(math.log(s.params / n)))


def fit_flops_per_token(shapes: Sequence[Shape],
                        shape_flops: Callable[[Shape], float]) -> FlopsPerToken:
    """FLOPs per token as a smooth function of N, for the planner's optimum and ladder when
    attention is counted: ``shape_flops`` counts a shape's (gptcore.estimate's
    flops_per_token, with the runs' context), and log(FLOPs / 6N) is fitted as a line in
    log N over ``shapes``. Attention's share shrinks as models widen; at context 64 the line
    was within 0.3% of the count at the median shape, 8% at the worst."""
    if not shapes:
        raise ValueError("no model shapes to count FLOPs on: widen max_layers or max_emb_dim")
    log_n = np.log([float(s.params) for s in shapes])
    ratio = np.log([shape_flops(s) for s in shapes]) - np.log(FLOPS_PER_PARAM_TOKEN) - log_n
    centre = float(log_n.mean())
    slope, level = np.polyfit(log_n - centre, ratio, 1) if log_n.size > 1 else (0.0, ratio[0])

    def flops_per_token(n: np.ndarray) -> np.ndarray:
        log = np.log(np.asarray(n, dtype=float))
        return FLOPS_PER_PARAM_TOKEN * np.exp(log + level + slope * (log - centre))
    return flops_per_token


@dataclass(frozen=True)
class Throughput:
    """Training speed by model size: FLOP/s = flops_per_s * (N / n_ref)**exponent (small
    models use a machine less well, so the exponent is usually a little above 0), and
    tokens/s = FLOP/s / flops per token."""

    flops_per_s: float
    exponent: float = 0.0
    n_ref: float = 1.0
    flops_per_token: FlopsPerToken | None = None

    def tokens_per_s(self, n: np.ndarray | float) -> np.ndarray:
        n = np.asarray(n, dtype=float)
        rate = self.flops_per_s * (n / self.n_ref) ** self.exponent
        return rate / token_flops(self.flops_per_token, n)

    def seconds(self, n: np.ndarray | float, tokens: np.ndarray | float) -> np.ndarray:
        """Training time of ``tokens`` tokens for a model of N parameters."""
        return np.asarray(tokens, dtype=float) / self.tokens_per_s(n)


# How FLOP/s grows with model size where the runs measured one size only: a small model
# spends more of each step on overheads. Fitted on our CPU runs (log FLOP/s against log N):
# 0.30 over 59 runs of 23 k to 1.2 M parameters at one thread, 0.32 over 17 runs of 36 k
# to 830 k at two (bench/RESULTS.md, "The planner's ladder on the clock"). Taking 0 made a
# first ladder's smallest models train twice as long as it said.
SPEED_EXPONENT_PRIOR = 0.3


def fit_throughput(n: Sequence[float] | np.ndarray, tokens_per_s: Sequence[float] | np.ndarray,
                   flops_per_token: FlopsPerToken | None = None) -> Throughput:
    """The speed law from runs' sizes and measured tokens/s: a line in log FLOP/s against
    log N with two sizes or more; with one, their mean FLOP/s at their size, falling to
    smaller sizes as SPEED_EXPONENT_PRIOR says."""
    n_arr, tps = np.asarray(n, dtype=float), np.asarray(tokens_per_s, dtype=float)
    if n_arr.size == 0 or n_arr.size != tps.size or np.any(n_arr <= 0) or np.any(tps <= 0):
        raise ValueError("throughput needs one positive tokens/s per run, for at least one run")
    log_rate = np.log(tps * token_flops(flops_per_token, n_arr))
    n_ref = float(np.exp(np.log(n_arr).mean()))
    if count_sizes(n_arr) < 2:
        return Throughput(float(np.exp(log_rate.mean())), SPEED_EXPONENT_PRIOR, n_ref,
                          flops_per_token)
    exponent, level = np.polyfit(np.log(n_arr / n_ref), log_rate, 1)
    return Throughput(float(np.exp(level)), float(exponent), n_ref, flops_per_token)


@dataclass(frozen=True)
class LadderRun:
    compute: float  # the budget (FLOPs) this run belongs to
    shape: Shape
    tokens: float
    seconds: float


@dataclass(frozen=True)
class Ladder:
    """IsoFLOP runs to train: ``budgets`` (FLOPs, increasing), each with a few sizes
    around the size a prior law thinks best for it."""

    runs: list[LadderRun]
    budgets: list[float]

    @property
    def total_s(self) -> float:
        return sum(r.seconds for r in self.runs)


def _ladder_at(smallest: float, shapes: Sequence[Shape], throughput: Throughput, law: LossLaw,
               n_budgets: int, sizes: int,
               flops_per_token: FlopsPerToken | None) -> Ladder:
    budgets = [smallest * BUDGET_STEP ** k for k in range(n_budgets)]
    runs = []
    for c in budgets:
        centre = float(law.optimal(c, flops_per_token)[0])
        picked = {nearest_shape(shapes, centre * SIZE_STEP ** (k - (sizes - 1) / 2))
                  for k in range(sizes)}
        # Sizes past the ends of the shapes round to one shape: take the next ones nearest
        # the centre instead, so each budget keeps its sizes (an IsoFLOP curve needs three).
        for shape in sorted(shapes, key=lambda s: abs(math.log(s.params / centre))):
            if len(picked) >= sizes:
                break
            if all(abs(math.log(shape.params / p.params)) >= math.log(MIN_SIZE_GAP)
                   for p in picked):
                picked.add(shape)
        for shape in sorted(picked, key=lambda s: s.params):
            tokens = float(c / token_flops(flops_per_token, np.asarray(float(shape.params))))
            runs.append(LadderRun(c, shape, tokens,
                                  float(throughput.seconds(shape.params, tokens))))
    return Ladder(runs, budgets)


def propose_ladder(time_s: float, throughput: Throughput, shapes: Sequence[Shape], *,
                   law: LossLaw = EPOCH, n_budgets: int = LADDER_BUDGETS,
                   sizes: int = LADDER_SIZES,
                   flops_per_token: FlopsPerToken | None = None) -> Ladder:
    """The largest IsoFLOP ladder whose runs together train in ``time_s`` seconds:
    ``n_budgets`` budgets BUDGET_STEP apart, each with ``sizes`` shapes SIZE_STEP apart
    centred on the N_opt ``law`` gives it (Epoch's refit of Chinchilla until the user's own
    runs fit one). Each run's tokens are its budget over its FLOPs per token. Sizes that
    round to one shape train once. The time counts training only (no evaluation or start-up).
    """
    if not time_s > 0:
        raise ValueError(f"the ladder needs a positive time, not {time_s}")

    def excess(log_c: float) -> float:
        ladder = _ladder_at(math.exp(log_c), shapes, throughput, law, n_budgets, sizes,
                            flops_per_token)
        return math.log(ladder.total_s / time_s)

    # Time grows about as fast as the budgets: start from a guess and bracket the root.
    guess = math.log(time_s * throughput.flops_per_s / sum(BUDGET_STEP ** k
                                                            for k in range(n_budgets)) / sizes)
    low, high = guess - 2.0, guess + 2.0
    while excess(low) > 0:
        low -= 2.0
    while excess(high) < 0:
        high += 2.0
    log_c = optimize.brentq(excess, low, high, xtol=1e-6)
    # Shapes are discrete, so time jumps where the rounding flips: stay on the safe side.
    while excess(log_c) > 0:
        log_c -= 1e-3
    return _ladder_at(math.exp(log_c), shapes, throughput, law, n_budgets, sizes,
                      flops_per_token)


def width_after(width: float, n_runs: int, more_runs: int) -> float:
    """The band width expected after ``more_runs`` more runs like the ones fitted: a
    bootstrap band narrows as 1/sqrt(runs) (standard error of a smooth statistic). Runs
    closer to the budget asked about narrow it faster than this; repeats of the smallest
    sizes slower."""
    return width * math.sqrt(n_runs / (n_runs + more_runs))


def runs_to_narrow(width: float, n_runs: int, target_width: float) -> int:
    """More runs (like the ones fitted) needed to narrow a band of ``width`` from
    ``n_runs`` runs to ``target_width``, by the same 1/sqrt(runs) rule."""
    if not 0 < target_width:
        raise ValueError(f"the target width must be positive, not {target_width}")
    return max(0, math.ceil(n_runs * (width / target_width) ** 2) - n_runs)
