"""The Live page's ETA: steps to go at the recent pace plus evaluations to go, steady
through evaluations, checkpoint saves and the time between a stop and a resume."""

import pytest

from ui.format import eta_seconds, evals_left, recent_eval_seconds, recent_seconds_per_step

MAX_STEPS, LOG_EVERY, EVAL_EVERY = 1000, 10, 100
STEP_S, EVAL_S, CHECKPOINT_S, PAUSE_S, PAUSE_AT = 0.1, 20.0, 1.0, 3600.0, 300


def simulated_run():
    """(step, wall seconds since the start, step_time_ms so far, eval_time_ms so far) at
    each report of a run that evaluates every 100 steps (and at 0), saves a checkpoint
    after each evaluation, and was stopped at step 300 and resumed an hour later."""
    # The trainer evaluates at step 0, before its first step.
    wall, step_times, eval_times, views = EVAL_S, [], [1000 * EVAL_S], []
    for step in range(LOG_EVERY, MAX_STEPS + 1, LOG_EVERY):
        interval = LOG_EVERY * STEP_S
        if (step - LOG_EVERY) % EVAL_EVERY == 0 and step > LOG_EVERY:
            interval += CHECKPOINT_S  # the save lands in the next interval's time
        if step - LOG_EVERY == PAUSE_AT:
            wall += PAUSE_S
            interval += 2.0  # the resumed process warms up
        wall += interval
        step_times.append(1000 * interval / LOG_EVERY)
        views.append((step, wall, list(step_times), list(eval_times)))
        if step % EVAL_EVERY == 0:
            wall += EVAL_S
            eval_times.append(1000 * EVAL_S)
    return views


def true_seconds_left(step: int) -> float:
    evals = MAX_STEPS // EVAL_EVERY - step // EVAL_EVERY
    return (MAX_STEPS - step) * STEP_S + evals * (EVAL_S + CHECKPOINT_S)


def test_the_eta_stays_near_the_truth_through_evaluations_and_a_pause():
    for step, _wall, step_times, eval_times in simulated_run():
        if step >= 900:
            break  # a few seconds left: relative errors mean little
        eta = eta_seconds(step, MAX_STEPS, step_times, eval_interval=EVAL_EVERY,
                          eval_s=recent_eval_seconds(eval_times))
        assert eta == pytest.approx(true_seconds_left(step), rel=0.15), step


def test_the_old_elapsed_over_steps_eta_swung_where_this_one_does_not():
    """What the page showed before: elapsed wall time over steps done, times steps to go."""
    old, new = [], []
    for step, wall, step_times, eval_times in simulated_run():
        if 100 <= step < 900:
            old.append((MAX_STEPS - step) * wall / step / true_seconds_left(step))
            new.append(eta_seconds(step, MAX_STEPS, step_times, eval_interval=EVAL_EVERY,
                                   eval_s=recent_eval_seconds(eval_times))
                       / true_seconds_left(step))
    assert max(old) > 5 * min(old)  # from about right to many times too long after the pause
    assert max(new) < 1.2 * min(new)


def test_an_eval_spike_in_one_interval_does_not_move_the_pace():
    steady = [100.0] * 30
    assert recent_seconds_per_step(steady) == pytest.approx(0.1)
    assert recent_seconds_per_step([*steady, 2500.0]) == pytest.approx(0.1)
    assert recent_seconds_per_step([*steady[:-1], 2500.0, 100.0]) == pytest.approx(0.1)


def test_no_pace_yet_means_no_eta():
    assert eta_seconds(0, 100, []) is None
    assert eta_seconds(None, 100, [100.0]) is None
    assert eta_seconds(10, 100, [float("nan")]) is None
    assert eta_seconds(120, 100, [100.0]) == 0.0
    assert recent_eval_seconds([]) is None


@pytest.mark.parametrize("step, max_steps, every, left", [
    (0, 30, 10, 3), (5, 30, 10, 3), (10, 30, 10, 2), (0, 25, 10, 3), (30, 30, 10, 0),
    (29, 30, 10, 1), (3, 30, 0, 0),
])
def test_evals_left_follows_the_trainers_schedule(step, max_steps, every, left):
    assert evals_left(step, max_steps, every) == left
