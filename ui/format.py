"""Human-readable numbers, durations and progress for the pages."""

from __future__ import annotations

import math

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


def progress_fraction(step: int | None, max_steps: int | None) -> float:
    """step / max_steps clamped to [0, 1]; 0 when either is unknown."""
    if step is None or not max_steps or max_steps <= 0:
        return 0.0
    return min(1.0, max(0.0, step / max_steps))
