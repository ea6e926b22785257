"""Sweeps: expand ``--grid``/``--range`` specs into runs, and decide when to cut a loser.

    --grid lr=1e-3,3e-3,1e-2       every value, crossed with every other grid
    --range lr=1e-4:1e-2:log       drawn at random (log or lin; int ends stay ints)
    --random 8 --seed 0            how many draws, reproducibly
    --seeds 3                      every point trained with config seeds s, s+1, s+2

``expand`` gives one override dict per run: the cartesian product of the grids, times
``random`` draws from the ranges (the same draws for every grid combination, so each
combination is compared on equal footing), times ``seeds`` values of the config's
``seed`` (so a point's spread from seed to seed shows beside its mean).

Successive halving needs no new training code: at ``cut_steps(max_steps)`` the sweep
forecasts every run's final loss and ``should_cut`` stops a run whose forecast is
confidently worse than the best run's.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from analysis.forecast import Forecast

Value = int | float | bool | str
SCALES = ("log", "lin")
CUT_FRACTIONS = (0.25, 0.5)  # check at a quarter and at half of max_steps
SIGNIFICANT_DIGITS = 4  # drawn floats are rounded so run names and tables stay readable
SEED_KEY = "seed"  # the config field ``--seeds`` repeats each point with


@dataclass(frozen=True)
class Range:
    """A ``--range KEY=LOW:HIGH[:log|:lin]``; ``integer`` when both ends are whole numbers."""

    key: str
    low: float
    high: float
    scale: str = "lin"
    integer: bool = False

    def draw(self, rng: np.random.Generator) -> int | float:
        """One value, uniform in log or linear space; a whole number for an integer range."""
        if self.scale == "lin" and self.integer:  # every whole number equally likely
            return int(rng.integers(int(self.low), int(self.high), endpoint=True))
        if self.scale == "log":
            value = math.exp(rng.uniform(math.log(self.low), math.log(self.high)))
        else:
            value = rng.uniform(self.low, self.high)
        return int(round(value)) if self.integer else float(f"{value:.{SIGNIFICANT_DIGITS}g}")


def parse_value(text: str) -> Value:
    """'true' -> True, '3' -> 3, '1e-3' -> 0.001, anything else stays a string."""
    text = text.strip()
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_grid(spec: str) -> tuple[str, list[Value]]:
    """'lr=1e-3,3e-3' -> ('lr', [0.001, 0.003]); a value given twice ('1e-3,0.001') counts
    once, so no two runs of a sweep are the same run."""
    key, sep, rest = spec.partition("=")
    values = [v for v in rest.split(",") if v.strip()]
    if not sep or not key.strip() or not values:
        raise ValueError(f"--grid needs KEY=V1,V2,...: got {spec!r}")
    unique: dict[tuple[bool, Value], Value] = {}
    for value in map(parse_value, values):
        # Keyed by bool-ness too: True == 1 in Python, but not as a setting.
        unique.setdefault((isinstance(value, bool), value), value)
    return key.strip(), list(unique.values())


def sweep_size(grids: Sequence[str] = (), ranges: Sequence[str] = (), *, random: int = 0,
               seeds: int = 0) -> int:
    """How many runs ``expand`` makes from these specs, without making them; the same
    ValueError for a bad spec."""
    parsed_grids, parsed_ranges = _parse(grids, ranges, random, seeds)
    if not parsed_grids and not parsed_ranges and not seeds:
        return 0
    points = math.prod(len(v) for _, v in parsed_grids) * (random if parsed_ranges else 1)
    return points * max(seeds, 1)


def parse_range(spec: str) -> Range:
    """'lr=1e-4:1e-2:log' -> Range('lr', 1e-4, 1e-2, 'log', integer=False)."""
    key, sep, rest = spec.partition("=")
    parts = rest.split(":")
    if not sep or not key.strip() or len(parts) not in (2, 3):
        raise ValueError(f"--range needs KEY=LOW:HIGH or KEY=LOW:HIGH:log|lin: got {spec!r}")
    key = key.strip()
    scale = parts[2].strip().lower() if len(parts) == 3 else "lin"
    if scale not in SCALES:
        raise ValueError(f"--range {key}: the scale must be log or lin, not {parts[2]!r}")
    ends = [parse_value(p) for p in parts[:2]]
    if any(isinstance(e, (bool, str)) for e in ends):
        raise ValueError(f"--range {key}: LOW and HIGH must be numbers, got {rest!r}")
    low, high = (float(e) for e in ends)
    if not low < high:
        raise ValueError(f"--range {key}: LOW must be below HIGH, got {rest!r}")
    if scale == "log" and low <= 0:
        raise ValueError(f"--range {key}: a log range needs LOW above 0, got {rest!r}")
    return Range(key, low, high, scale, integer=all(isinstance(e, int) for e in ends))


def expand(grids: Sequence[str] = (), ranges: Sequence[str] = (), *, random: int = 0,
           seed: int = 0, seeds: int = 0, first_seed: int = 0) -> list[dict[str, Value]]:
    """Every run of a sweep as a dict of overrides, in a stable order.

    With no ``ranges`` it is the grid's cartesian product; with ranges, each grid
    combination is paired with the same ``random`` draws (numpy's generator seeded with
    ``seed``, so the same command gives the same runs). With ``seeds`` N, each of those
    points is repeated N times, one after another, with ``seed`` = ``first_seed``,
    ``first_seed + 1``, ...; seeds alone (no grid or range) make N runs of the base.
    """
    parsed_grids, parsed_ranges = _parse(grids, ranges, random, seeds)
    combos = [dict(zip([k for k, _ in parsed_grids], values, strict=True))
              for values in itertools.product(*(v for _, v in parsed_grids))]
    if parsed_ranges:
        rng = np.random.default_rng(seed)
        draws = [{r.key: r.draw(rng) for r in parsed_ranges} for _ in range(random)]
        combos = [{**combo, **draw} for combo in combos for draw in draws]
    if not seeds:
        return combos if parsed_grids or parsed_ranges else []
    return [{**combo, SEED_KEY: first_seed + k} for combo in combos for k in range(seeds)]


def _parse(grids: Sequence[str], ranges: Sequence[str], random: int,
           seeds: int = 0) -> tuple[list[tuple[str, list[Value]]], list[Range]]:
    """The specs parsed and checked together (a key swept twice, --random without ranges,
    a swept seed with --seeds)."""
    parsed_grids = [parse_grid(g) for g in grids]
    parsed_ranges = [parse_range(r) for r in ranges]
    keys = [k for k, _ in parsed_grids] + [r.key for r in parsed_ranges]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        raise ValueError(f"{', '.join(twice)} given more than once: one --grid or --range "
                         "per setting")
    if seeds < 0:
        raise ValueError(f"--seeds must be 0 or more, not {seeds}")
    if seeds and SEED_KEY in keys:
        raise ValueError(f"--seeds {seeds} sets {SEED_KEY} itself (the base seed, then one "
                         f"more per run): drop --grid/--range {SEED_KEY}, or --seeds")
    if random < 0:
        raise ValueError(f"--random must be 0 or more, not {random}")
    if parsed_ranges and not random:
        raise ValueError("--range needs --random N: how many values to draw")
    if random and not parsed_ranges:
        raise ValueError(f"--random {random} needs at least one --range to draw from")
    return parsed_grids, parsed_ranges


def cut_steps(max_steps: int, fractions: Sequence[float] = CUT_FRACTIONS) -> list[int]:
    """The steps at which a successive-halving sweep compares its runs' forecasts."""
    return sorted({max(1, int(f * max_steps)) for f in fractions if 0 < f < 1})


def should_cut(run: Forecast | None, best: Forecast | None) -> str | None:
    """A reason to stop ``run`` when its forecast is confidently worse than ``best``'s.

    Confidently worse means the two bands do not overlap: the lowest final loss still
    plausible for ``run`` is above the highest plausible for ``best``. So a noisy or
    early forecast, whose band is wide, is never cut on its point estimate alone, and a
    missing forecast (too few evaluations) never cuts anything.
    """
    if run is None or best is None or run.low <= best.high:
        return None
    return (f"stopped at step {run.upto_step}: forecast {run.predicted_final:.2f} ± "
            f"{run.half_width:.2f} vs best {best.predicted_final:.2f} ± {best.half_width:.2f}")
