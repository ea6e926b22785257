"""The Live page's ETA: the steps to go at the run's wall time per step (every cost between
two reports included: saves, writes), plus the evaluations to go at their measured cost,
steady through evaluations, checkpoint saves and the time between a stop and a resume."""

import pandas as pd
import pytest

from ui.eta import Pace, eta_seconds, evals_between, pace_from_reports, pace_window

MAX_STEPS, LOG_EVERY, EVAL_EVERY, CKPT_EVERY = 400, 10, 50, 200
# A tiny CPU run as the issue measured it: 26.8 ms a step, 60 ms of wall time per step.
STEP_S, REPORT_S = 0.0268, 0.12  # a step; the writes after each report, untimed by the step
EVAL_S, AFTER_EVAL_S = 0.45, 0.4  # an evaluation with its sample; best.pt and the flush
SAVE_S, STARTUP_S = 0.5, 3.0  # latest.pt; a resumed process's start-up
PAUSE_AT, PAUSE_S = 300, 3600.0  # stopped at step 300, resumed an hour later


def simulated_run():
    """[(wall time of a report, step rows so far, eval rows so far, true seconds left)] at
    each report of a run recorded as the trainer and its bridge record it."""
    steps, evals, views, ends = [], [], [], []
    wall = STARTUP_S + EVAL_S
    evals.append((0, 1000 * EVAL_S))
    wall += AFTER_EVAL_S
    interval = 0.0
    for step in range(1, MAX_STEPS + 1):
        wall += STEP_S
        interval += STEP_S
        if step % LOG_EVERY == 0:
            steps.append((step, 1000 * interval / LOG_EVERY, wall))
            views.append((wall, list(steps), list(evals)))
            wall += REPORT_S
            interval = 0.0
        if step % EVAL_EVERY == 0:
            wall += EVAL_S
            evals.append((step, 1000 * EVAL_S))
            wall += AFTER_EVAL_S
        if step % CKPT_EVERY == 0 or step == MAX_STEPS:
            wall += SAVE_S
        if step == PAUSE_AT:
            wall += PAUSE_S + STARTUP_S
            ends.append(wall)  # no one can foresee the pause: the truth leaves it out
    end = wall
    out = []
    for now, step_rows, eval_rows in views:
        left = end - now - (PAUSE_S + STARTUP_S if now < ends[0] else 0.0)
        out.append((now, frame(step_rows, ("step", "value", "wall_time")),
                    frame(eval_rows, ("step", "value")), left))
    return out


def frame(rows, columns) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=list(columns))


def page_eta(now, step_rows, eval_rows):
    return eta_seconds(step_rows, eval_rows, max_steps=MAX_STEPS, eval_interval=EVAL_EVERY,
                       checkpoint_interval=CKPT_EVERY, now=now)


def test_the_eta_lands_near_the_truth_from_a_quarter_of_the_run_on():
    # Until the first save (at 200) is measured, it counts as nothing: up to 10% short.
    for now, step_rows, eval_rows, left in simulated_run():
        step = int(step_rows["step"].max())
        if MAX_STEPS // 4 <= step <= 0.9 * MAX_STEPS:
            assert page_eta(now, step_rows, eval_rows) == pytest.approx(
                left, rel=0.15 if step <= 200 else 0.05), step


def test_the_step_time_alone_came_out_far_too_short():
    """What the page showed before: the median step time times the steps to go, plus the
    evaluations; the saves and writes between steps were left out."""
    now, step_rows, eval_rows, left = simulated_run()[9]  # step 100, a quarter of the run
    median_step_s = step_rows["value"].median() / 1000
    evals = evals_between(100, MAX_STEPS, MAX_STEPS, EVAL_EVERY)
    old = (MAX_STEPS - 100) * median_step_s + evals * EVAL_S
    assert old < 0.65 * left
    assert page_eta(now, step_rows, eval_rows) == pytest.approx(left, rel=0.1)


def test_a_stop_and_resume_gap_is_not_averaged_in():
    views = simulated_run()
    now, step_rows, eval_rows, left = views[32]  # step 330: the hour-long gap is behind it
    pace = pace_from_reports(step_rows, eval_rows, EVAL_EVERY, CKPT_EVERY)
    assert pace.step_s < 0.1  # an hour over the 10 steps of that gap would be 360 s a step
    assert page_eta(now, step_rows, eval_rows) == pytest.approx(left, rel=0.1)


def test_the_eta_counts_down_between_reports():
    now, step_rows, eval_rows, _ = simulated_run()[19]
    at_report = page_eta(now, step_rows, eval_rows)
    assert page_eta(now + 2.0, step_rows, eval_rows) == pytest.approx(at_report - 2.0)
    assert page_eta(now + 1e6, step_rows, eval_rows) == 0.0


def test_no_pace_before_two_reports():
    _, step_rows, eval_rows, _ = simulated_run()[0]
    assert page_eta(100.0, step_rows, eval_rows) is None
    assert page_eta(100.0, step_rows.iloc[:0], eval_rows) is None


def test_the_pace_counts_steps_evaluations_and_saves_on_the_trainers_schedule():
    pace = Pace(step_s=0.1, eval_s=5.0, save_s=2.0, eval_interval=50, checkpoint_interval=200)
    assert pace.mean_step_s == pytest.approx(0.1 + 5.0 / 50 + 2.0 / 200)
    # From the report at 10 to step 100: the evaluation at 50.
    assert pace.seconds_between(10, 100, 400) == pytest.approx(90 * 0.1 + 5.0)
    # From 200 to the end: evaluations at 200, 250, ..., 400, saves at 200 and at the end.
    assert pace.seconds_between(200, 400, 400) == pytest.approx(200 * 0.1 + 5 * 5.0 + 2 * 2.0)
    assert pace.seconds_between(410, 400, 420) == 0.0


def test_each_kind_of_gap_measures_its_own_cost():
    _, step_rows, eval_rows, _ = simulated_run()[-1]
    pace = pace_from_reports(step_rows, eval_rows, EVAL_EVERY, CKPT_EVERY)
    assert pace.step_s == pytest.approx(STEP_S + REPORT_S / LOG_EVERY)
    assert pace.eval_s == pytest.approx(EVAL_S + AFTER_EVAL_S)
    assert pace.save_s == pytest.approx(SAVE_S)


@pytest.mark.parametrize("step, target, max_steps, every, left", [
    (0, 30, 30, 10, 4), (5, 30, 30, 10, 3), (10, 30, 30, 10, 3), (0, 25, 25, 10, 4),
    (30, 30, 30, 10, 0), (29, 30, 30, 10, 1), (3, 30, 30, 0, 1), (0, 15, 30, 10, 2),
])
def test_evals_between_follows_the_trainers_schedule(step, target, max_steps, every, left):
    assert evals_between(step, target, max_steps, every) == left


def test_the_window_holds_each_cost_that_comes_round():
    assert pace_window(10, 50, 200) == 200
    assert pace_window(10, 500, 200) == 1000
    assert pace_window(50, 10, 100) == 1000
