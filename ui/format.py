"""Human-readable numbers, durations and progress for the pages."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence

DASH = "—"

# SI-style suffixes; "B" (billion) rather than "G" because people say "a 1.2 B model".
_COUNT_UNITS = ("", " k", " M", " B", " T")


def _missing(x: float | None) -> bool:
    """None, NaN, inf, or pandas' NA (a nullable integer column's empty cell)."""
    try:
        return x is None or not math.isfinite(float(x))
    except (TypeError, ValueError):
        return True


def human_count(n: float | None) -> str:
    """A count with three significant digits and a suffix: 254 k, 10.7 M, 1.2 B."""
    if _missing(n):
        return DASH
    value = float(n)
    unit = 0
    # Scale first, then re-check after rounding so 999_950 reads "1 M", not "1e+03 k".
    while unit < len(_COUNT_UNITS) - 1 and abs(float(f"{value:.3g}")) >= 1000:
        value /= 1000
        unit += 1
    return f"{value:.3g}{_COUNT_UNITS[unit]}"


def human_duration(seconds: float | None) -> str:
    """42 s, 3 min 20 s, 1 h 05 min, 2 d 03 h; "—" when unknown or negative."""
    if _missing(seconds) or seconds < 0:
        return DASH
    if seconds < 10:
        return f"{seconds:.1f} s"
    total = int(round(seconds))
    if total < 60:
        return f"{total} s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours} h {minutes:02d} min"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours:02d} h"


def human_bytes_mb(mb: float | None) -> str:
    """A size given in MB: 0.41 MB, 5.3 MB, 254 MB, 1.4 GB, 2.1 TB."""
    if _missing(mb):
        return DASH
    if mb < 1:
        return f"{mb:.2f} MB"
    if mb < 10:
        return f"{mb:.1f} MB"
    if mb < 1024:
        return f"{mb:.0f} MB"
    gb = mb / 1024
    return f"{gb:.1f} GB" if gb < 1024 else f"{gb / 1024:.1f} TB"


PACE_WINDOW = 20  # the logging intervals a run's recent pace is taken over


def recent_seconds_per_step(step_times_ms: Sequence[float]) -> float | None:
    """A run's recent pace in seconds per step, or None before it has one.

    ``step_times_ms`` are the run's ``step_time_ms`` metrics in step order: each the mean
    time of the steps of one logging interval, timed by the trainer within one attempt and
    after any evaluation. The pace is the median of the last ``PACE_WINDOW`` of them, so an
    evaluation or a checkpoint save, a queue wait or the days between a stop and a resume
    neither swing it nor stretch it, as elapsed time over steps done did.
    """
    recent = [t for t in list(step_times_ms)[-PACE_WINDOW:] if not _missing(t) and t > 0]
    return statistics.median(recent) / 1000 if recent else None


def evals_left(step: int, max_steps: int, eval_interval: int) -> int:
    """Evaluations still to come after ``step``: each multiple of eval_interval up to
    max_steps, and one at max_steps (the trainer's schedule)."""
    if step >= max_steps or eval_interval <= 0:
        return 0
    n = max_steps // eval_interval - step // eval_interval
    return n + (1 if max_steps % eval_interval else 0)


def eta_seconds(step: int | None, max_steps: int | None, step_times_ms: Sequence[float], *,
                eval_interval: int = 0, eval_s: float | None = None) -> float | None:
    """Seconds left: the steps to go at the run's recent pace (``recent_seconds_per_step``)
    plus the evaluations to go at ``eval_s`` each (``recent_eval_seconds``); None before
    there is a pace to go by."""
    pace = recent_seconds_per_step(step_times_ms)
    if step is None or max_steps is None or pace is None:
        return None
    evals = evals_left(step, max_steps, eval_interval) * eval_s if eval_s else 0.0
    return max(0.0, (max_steps - step) * pace + evals)


def recent_eval_seconds(eval_times_ms: Sequence[float]) -> float | None:
    """The median time of the run's recent evaluations (its ``eval_time_ms`` metrics, each
    an evaluation with its text sample), or None before one has been timed."""
    recent = [t for t in list(eval_times_ms)[-PACE_WINDOW:] if not _missing(t) and t >= 0]
    return statistics.median(recent) / 1000 if recent else None


def progress_fraction(step: int | None, max_steps: int | None) -> float:
    """step / max_steps clamped to [0, 1]; 0 when either is unknown."""
    if step is None or not max_steps or max_steps <= 0:
        return 0.0
    return min(1.0, max(0.0, step / max_steps))
