"""A run's time left, from what the run itself recorded.

A training step's own time (``step_time_ms``) leaves out what a run spends between its
steps: checkpoint saves, best.pt at a new best, database writes, the flushes after each
evaluation. On a small model those cost as much as the steps (a tiny run's median step was
27 ms, its wall time per step 60 ms), so an ETA from the step time alone came out three
times too short. This one reads the wall times of the run's reports (one per logging
interval, stamped when made) and splits what passed between two of them by what came
there: training alone, an evaluation (its text sample included), a checkpoint save. The
steps, evaluations and saves still to come are counted at those measured costs.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import pandas as pd

from gptcore.metric_keys import EVAL_TIME_MS, STEP_TIME_MS
from storage.store import RunRecord, RunStore

# The recent evaluations whose median is an evaluation's cost, and the recent intervals
# between reports whose mean is the wall time per step.
EVAL_WINDOW = 20
RECENT_INTERVALS = 10
# A gap between two reports this much longer than the steps in it is the run waiting (a
# stop and a later resume, a worker that died and another that took over), not training.
PAUSE_S = 30.0


@dataclass(frozen=True)
class Pace:
    """What a run has been spending: wall seconds per training step (the writes between
    steps included), per evaluation (its text sample, best.pt and flush included) and per
    checkpoint save."""

    step_s: float
    eval_s: float
    save_s: float
    eval_interval: int
    checkpoint_interval: int

    @property
    def mean_step_s(self) -> float:
        """Seconds per step with the evaluations and saves spread over their intervals."""
        return (self.step_s + _per(self.eval_s, self.eval_interval)
                + _per(self.save_s, self.checkpoint_interval))

    def seconds_between(self, step: int, target: int, max_steps: int) -> float:
        """Seconds from a report at ``step`` until the run reaches ``target`` (at most
        ``max_steps``, where the run's own end is counted): steps, evaluations, saves."""
        target = min(target, max_steps)
        if target <= step:
            return 0.0
        return ((target - step) * self.step_s
                + self.eval_s * evals_between(step, target, max_steps, self.eval_interval)
                + self.save_s * saves_between(step, target, max_steps,
                                              self.checkpoint_interval))


def _per(cost: float, interval: int) -> float:
    return cost / interval if interval > 0 else 0.0


def _multiples(step: int, target: int, every: int) -> int:
    """Multiples of ``every`` in [step, target)."""
    return (target - 1) // every - (step - 1) // every if every > 0 else 0


def evals_between(step: int, target: int, max_steps: int, eval_interval: int) -> int:
    """Evaluations the trainer makes from a report at ``step`` until it reaches ``target``:
    at each multiple of eval_interval from ``step`` on (one at ``step`` comes right after
    its report), and one at max_steps."""
    if target <= step:
        return 0
    return _multiples(step, target, eval_interval) + (1 if target == max_steps else 0)


def saves_between(step: int, target: int, max_steps: int, checkpoint_interval: int) -> int:
    """latest.pt saves from a report at ``step`` until ``target``: at each multiple of
    checkpoint_interval before max_steps, and one at max_steps."""
    if target <= step:
        return 0
    return (_multiples(max(step, 1), target, checkpoint_interval)
            + (1 if target == max_steps else 0))


def pace_from_reports(step_rows: pd.DataFrame, eval_rows: pd.DataFrame, eval_interval: int,
                      checkpoint_interval: int) -> Pace | None:
    """The run's pace from its ``step_time_ms`` rows (step, value, wall_time) and its
    ``eval_time_ms`` rows (step, value); None before two reports of one attempt.

    Between two consecutive reports the run trained their steps and paid whatever came
    at the first of them: an evaluation, a checkpoint save. Reports with neither between
    them give the wall time per step (their mean: a stall is time spent too); those with an
    evaluation, what one costs beyond its steps; those with a save, what a save costs. A gap
    of more than PAUSE_S beyond its steps and evaluations (a stop and a resume, a dead
    worker, a machine asleep) is skipped.
    """
    evals = eval_rows[["step", "value"]].dropna().sort_values("step")
    eval_ms = evals.set_index("step")["value"]
    rows = step_rows.sort_values("step")[["step", "value", "wall_time"]].to_numpy(float)
    # (first step, steps, wall seconds, seconds the steps timed, evaluation seconds)
    pairs = []
    for (s0, _, w0), (s1, step_ms, w1) in zip(rows[:-1], rows[1:], strict=True):
        if s1 > s0 and all(math.isfinite(v) for v in (w0, w1, step_ms)):
            evaluated = eval_ms[(eval_ms.index >= s0) & (eval_ms.index < s1)].sum() / 1000
            pairs.append((s0, s1 - s0, w1 - w0, (s1 - s0) * step_ms / 1000, float(evaluated)))
    rates = [wall / n for _, n, wall, _, evaluated in pairs if not evaluated]
    if not rates:
        return None
    typical = statistics.median(rates)
    plain, with_eval, with_save = [], [], []
    for s0, n, wall, timed, evaluated in pairs:
        if wall - evaluated - n * typical > PAUSE_S:
            continue  # a stop and a resume, a machine asleep: not what the run spends
        if checkpoint_interval > 0 and s0 % checkpoint_interval == 0:
            with_save.append((n, wall, timed, evaluated))
        else:
            (with_eval if evaluated else plain).append((n, wall, timed, evaluated))
    if not plain:
        return None
    # The mean, not the median: stalls inside some intervals (the writer thread, the
    # collector) are part of what the run spends. Over the recent ones: a machine that got
    # busier or quieter trains at its new pace from now on.
    recent = plain[-RECENT_INTERVALS:]
    steps = sum(p[0] for p in recent)
    step_s = sum(p[1] for p in recent) / steps
    untimed_s = sum(p[1] - p[2] for p in recent) / steps  # the writes between steps
    # An evaluation as timed (its sample included), and what comes with it (best.pt, the
    # flush): what its interval holds beyond its timed steps, their writes and itself.
    timed_evals = [t for t in evals["value"].tolist()[-EVAL_WINDOW:] if t >= 0]
    with_eval_s = _beyond(with_eval, untimed_s, 0.0)
    eval_s = (statistics.median(timed_evals) / 1000 if timed_evals else 0.0) + with_eval_s
    save_s = _beyond(with_save, untimed_s, with_eval_s)
    return Pace(step_s=step_s, eval_s=eval_s, save_s=save_s, eval_interval=eval_interval,
                checkpoint_interval=checkpoint_interval)


def _beyond(pairs: list[tuple[int, float, float, float]], untimed_s: float,
            with_eval_s: float) -> float:
    """The mean time of these (steps, wall, timed steps, evaluation seconds) intervals beyond
    their steps as timed, ``untimed_s`` a step of writes, their evaluations and
    ``with_eval_s`` for what comes with an evaluation; at least 0."""
    recent = pairs[-EVAL_WINDOW:]
    if not recent:
        return 0.0
    return max(0.0, statistics.fmean(
        wall - timed - n * untimed_s - ev - (with_eval_s if ev else 0.0)
        for n, wall, timed, ev in recent))


def eta_seconds(step_rows: pd.DataFrame, eval_rows: pd.DataFrame, *, max_steps: int,
                eval_interval: int, checkpoint_interval: int, now: float) -> float | None:
    """Seconds left at wall time ``now`` for a run of ``max_steps`` that recorded these
    ``step_time_ms`` and ``eval_time_ms`` rows (see ``pace_from_reports``): from its last
    report, the steps, evaluations and saves to go, less the time gone since that report.
    None before the run has a pace."""
    pace = pace_from_reports(step_rows, eval_rows, eval_interval, checkpoint_interval)
    if pace is None:
        return None
    last = step_rows.loc[step_rows["step"].idxmax()]
    left = pace.seconds_between(int(last["step"]), max_steps, max_steps)
    return max(0.0, left - max(now - float(last["wall_time"]), 0.0))


def pace_window(log_interval: int, eval_interval: int, checkpoint_interval: int) -> int:
    """Steps of recent reports to measure the pace over: enough logging intervals, two
    evaluations and a checkpoint save, so each cost that comes round is in it."""
    return max(20 * max(log_interval, 1), 2 * max(eval_interval, 0), checkpoint_interval)


def _intervals(run: RunRecord) -> dict[str, int]:
    return {k: int(run.config.get(k) or 0) for k in ("eval_interval", "checkpoint_interval")}


def _timing_rows(store: RunStore, run: RunRecord) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The run's recent step_time_ms and eval_time_ms rows, enough for its pace."""
    window = pace_window(int(run.config.get("log_interval") or 0), *_intervals(run).values())
    rows = store.metrics([run.id], [STEP_TIME_MS, EVAL_TIME_MS],
                         after_step=run.last_step - window)
    return rows[rows["key"] == STEP_TIME_MS], rows[rows["key"] == EVAL_TIME_MS]


def run_pace(store: RunStore, run: RunRecord) -> Pace | None:
    """``pace_from_reports`` of a run from its rows in the store."""
    return pace_from_reports(*_timing_rows(store, run), **_intervals(run))


def run_eta(store: RunStore, run: RunRecord, now: float) -> float | None:
    """``eta_seconds`` of a run at wall time ``now`` from its rows in the store: what the
    Live page shows."""
    return eta_seconds(*_timing_rows(store, run), max_steps=run.max_steps, **_intervals(run),
                       now=now)
