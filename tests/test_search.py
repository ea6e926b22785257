"""Search sweeps on Optuna: a real study in the database, asked and told from the run rows.

Trials are micro runs trained by a real worker (in this process, or `gptdash worker`
processes for the tests that need several or kill one).
"""

from __future__ import annotations

import signal
import threading
from concurrent.futures import ThreadPoolExecutor

import optuna
import pytest
from optuna.trial import TrialState
from test_jobs import micro
from worker_support import MICRO, end_workers, start_worker, wait_for

from gptcore.config import TrainConfig, apply_overrides
from gptcore.errors import GptdashError
from gptcore.estimate import training_flops
from gptcore.metric_keys import VAL_LOSS
from jobs import actions, runner
from jobs.manager import JobManager, claim_here
from jobs.pruners import open_study
from jobs.search import (
    advance,
    advance_searches,
    create_search,
    has_news,
    plan_search,
    submit_search,
)
from jobs.sweeps import stop_sweep
from storage.status import RunStatus
from storage.store import RunStore

# An evaluation every step: 6 of them by the first cut point (step 6 of 24).
FAST = dict(max_steps=24, eval_interval=1, sample_tokens=0, checkpoint_interval=1000,
            warmup_steps=2, schedule="constant")


def study_of(store: RunStore, sweep_id: int) -> optuna.Study:
    return open_study(store, store.get_sweep(sweep_id))


def by_run(study: optuna.Study) -> dict[int, optuna.trial.FrozenTrial]:
    return {t.user_attrs["run_id"]: t for t in study.trials if "run_id" in t.user_attrs}


def final_val_loss(store: RunStore, run_id: int) -> float:
    losses = store.metrics([run_id], [VAL_LOSS])
    return float(losses.sort_values("step")["value"].iloc[-1])


def drain(store: RunStore) -> None:
    """A worker in this process trains the queue (and the searches' next trials) empty."""
    manager = JobManager(store, exit_when_idle=True)
    manager.wait()
    manager.shutdown()


def train(store: RunStore, run_id: int):
    claim_here(store, run_id)
    return runner.execute_run(store, run_id)


@pytest.mark.backends("sqlite", "postgresql")
def test_a_search_trains_its_trials_and_tells_the_study_their_final_val_loss(store):
    plan = plan_search(micro(), ["lr=1e-3:1e-2:log", "n_layers=1:2"],
                       ["activation=gelu,silu"], trials=3, pruner="none")
    sweep_id, first = submit_search(store, plan, name="s")
    assert len(first) == 1 and store.get_run(first[0]).status == RunStatus.QUEUED
    sweep = store.get_sweep(sweep_id)
    assert sweep.study and sweep.spec["search"]["trials"] == 3

    drain(store)  # the worker asks each next trial as it frees up

    runs = store.list_runs(sweep_id=sweep_id)
    assert len(runs) == 3 and {r.status for r in runs} == {RunStatus.COMPLETED}
    trials = by_run(study_of(store, sweep_id))
    assert sorted(trials) == sorted(r.id for r in runs)
    for run in runs:
        trial = trials[run.id]
        assert trial.state == TrialState.COMPLETE
        assert trial.value == pytest.approx(final_val_loss(store, run.id))
        cfg = TrainConfig.from_dict(run.config)
        assert (cfg.lr, cfg.model.n_layers, cfg.model.activation) == (
            trial.params["lr"], trial.params["n_layers"], trial.params["activation"])
        assert run.name.startswith(f"s #{trial.number} lr=")
    assert not has_news(store, store.get_sweep(sweep_id))  # everything told, trials spent


@pytest.mark.parametrize("ranges, choices, objective, message", [
    (["lr=1e-2:1e-4:log"], [], "loss", "LOW must be below HIGH"),
    (["lr=0:1e-2:log"], [], "loss", "a log range needs LOW above 0"),
    (["lrr=1e-4:1e-2:log"], [], "loss", "unknown setting 'lrr'"),
    ([], ["activation=gelu"], "loss", "--choice activation has one value"),
    (["lr=1e-4:1e-2:log"], [], "loss,accuracy", "objectives are loss, flops, time"),
])
def test_bad_input_is_refused_in_one_line_with_nothing_queued(store, ranges, choices,
                                                              objective, message):
    with pytest.raises(GptdashError, match=message) as caught:
        plan_search(micro(), ranges, choices, trials=4, objectives=objective, pruner="none")
    assert "\n" not in str(caught.value)
    assert store.list_sweeps() == [] and store.list_runs() == []


def test_a_pruner_on_several_objectives_one_seed_and_a_forecast_too_early_are_refused():
    with pytest.raises(GptdashError, match="--pruner median judges one objective"):
        plan_search(micro(), ["lr=1e-4:1e-2:log"], [], trials=4, objectives="loss,flops",
                    pruner="median")
    with pytest.raises(GptdashError, match="--seeds 1: give 2 or more"):
        plan_search(micro(), ["lr=1e-4:1e-2:log"], [], trials=4, pruner="none", seeds=1)
    with pytest.raises(GptdashError, match="set eval_interval to"):
        plan_search(micro(max_steps=20, eval_interval=10), ["lr=1e-4:1e-2:log"], [],
                    trials=4, pruner="forecast")


def test_a_trial_of_seeds_is_scored_by_the_mean_of_its_runs(store):
    plan = plan_search(micro(max_steps=10, seed=5), ["lr=1e-3:1e-2:log"], [], trials=2,
                       seeds=2, pruner="none")
    sweep_id, first = submit_search(store, plan)
    assert len(first) == 2  # one trial: its two seeds
    drain(store)
    runs = {r.id: r for r in store.list_runs(sweep_id=sweep_id)}
    assert len(runs) == 4 and {r.status for r in runs.values()} == {RunStatus.COMPLETED}
    study = study_of(store, sweep_id)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    for trial in study.trials:
        ids = trial.user_attrs["run_ids"]
        configs = [runs[i].config for i in ids]
        assert sorted(c["seed"] for c in configs) == [5, 6]
        assert configs[0]["lr"] == configs[1]["lr"] == trial.params["lr"]
        assert trial.value == pytest.approx(sum(final_val_loss(store, i) for i in ids) / 2)
        assert runs[ids[1]].name.endswith(" seed=6")


def test_a_diverged_trial_is_told_fail_and_a_stopped_search_asks_no_more(store):
    # SGD with momentum at lr 5, no clipping and no guard: NaN within ten steps.
    base = micro(optimizer="sgd", momentum=0.9, grad_clip=0.0, warmup_steps=0,
                 schedule="constant", guard=False)
    plan = plan_search(base, [], ["lr=5,6"], trials=5, parallel=2, pruner="none")
    sweep_id, (a, b) = submit_search(store, plan)
    assert train(store, a).status == RunStatus.FAILED
    assert "NaN" in store.get_run(a).error
    created = advance(store, sweep_id)
    assert len(created) == 1  # a new trial takes the failed one's place
    assert by_run(study_of(store, sweep_id))[a].state == TrialState.FAIL  # not a loss

    stop_sweep(store, sweep_id)
    assert advance(store, sweep_id) == []
    assert {store.get_run(i).status for i in (b, *created)} == {RunStatus.CANCELLED}
    states = {t.state for t in study_of(store, sweep_id).trials}
    assert states == {TrialState.FAIL}  # cancelled trials are told as failed


def test_a_trial_a_person_stopped_waits_and_is_told_once_resumed_to_its_end(store):
    plan = plan_search(micro(), ["lr=1e-3:1e-2:log"], [], trials=1, pruner="none")
    sweep_id, (run_id,) = submit_search(store, plan)
    claim_here(store, run_id)
    assert actions.stop(store, run_id) == actions.Stop.REQUESTED
    assert runner.execute_run(store, run_id).status == RunStatus.STOPPED
    advance_searches(store)  # as an idle worker does
    assert by_run(study_of(store, sweep_id))[run_id].state == TrialState.RUNNING  # not a loss

    actions.resume(store, run_id)
    assert train(store, run_id).status == RunStatus.COMPLETED
    assert has_news(store, store.get_sweep(sweep_id))  # ended again, with one more claim
    advance_searches(store)
    trial = by_run(study_of(store, sweep_id))[run_id]
    assert trial.state == TrialState.COMPLETE
    assert trial.value == pytest.approx(final_val_loss(store, run_id))


def test_a_clearly_bad_trial_is_pruned_by_the_forecast_like_the_cut(store):
    plan = plan_search(micro(**FAST), [], ["lr=3e-2,1e-6"], trials=2, pruner="forecast")
    sweep_id = create_search(store, plan, name="prune")
    study = study_of(store, sweep_id)
    study.enqueue_trial({"lr": 3e-2})
    study.enqueue_trial({"lr": 1e-6})  # learns nothing in 24 steps
    (good,) = advance(store, sweep_id)
    assert train(store, good).status == RunStatus.COMPLETED
    (bad,) = advance(store, sweep_id)
    assert train(store, bad).status == RunStatus.STOPPED
    advance(store, sweep_id)

    run = store.get_run(bad)
    events = store.events([bad])
    cut = events[events["kind"] == "early_stop"]
    assert len(cut) == 1 and int(cut["step"].iloc[0]) in (6, 12)
    assert run.error.startswith(f"stopped at step {int(cut['step'].iloc[0])}: forecast ")
    trials = by_run(study_of(store, sweep_id))
    assert trials[good].state == TrialState.COMPLETE
    assert trials[bad].state == TrialState.PRUNED
    # Every evaluation before the cut was reported to the study.
    assert sorted(trials[bad].intermediate_values)[:3] == [1, 2, 3]


def test_optunas_median_pruner_stops_a_clearly_bad_trial(store):
    plan = plan_search(micro(**FAST), [], ["lr=3e-2,1e-6"], trials=3, pruner="median")
    sweep_id = create_search(store, plan)
    study = study_of(store, sweep_id)
    for lr in (3e-2, 3e-2, 1e-6):
        study.enqueue_trial({"lr": lr})
    ids = []
    for _ in range(3):
        (run_id,) = advance(store, sweep_id)
        ids.append(run_id)
        train(store, run_id)
    advance(store, sweep_id)
    states = [by_run(study_of(store, sweep_id))[i].state for i in ids]
    assert states == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED]
    assert "pruned by the search's median pruner" in store.get_run(ids[2]).error


def test_two_objectives_make_a_pareto_front_of_loss_and_flops(store):
    plan = plan_search(micro(max_steps=12), ["lr=1e-3:1e-2:log"], ["n_layers=1,2"],
                       trials=3, objectives="loss,flops")
    assert plan.pruner == "none"
    sweep_id, _ = submit_search(store, plan)
    drain(store)
    study = study_of(store, sweep_id)
    assert len(study.directions) == 2
    runs = {r.id: r for r in store.list_runs(sweep_id=sweep_id)}
    for run_id, trial in by_run(study).items():
        assert trial.values == pytest.approx([
            final_val_loss(store, run_id),
            training_flops(TrainConfig.from_dict(runs[run_id].config), 12)])
    front = study.best_trials
    assert front
    for best in front:  # nothing on the front is beaten on both objectives
        assert not any(o.values[0] < best.values[0] and o.values[1] < best.values[1]
                       for o in study.trials if o.state == TrialState.COMPLETE)


def test_two_workers_take_trials_at_once_and_no_trial_is_asked_twice(home, tmp_path):
    store = RunStore()
    base = apply_overrides(TrainConfig(), {**MICRO, "max_steps": 80, "eval_interval": 20})
    plan = plan_search(base, ["lr=1e-3:1e-2:log"], [], trials=4, parallel=2, pruner="none")
    sweep_id, first = submit_search(store, plan)
    assert len(first) == 2
    log = tmp_path / "workers.log"
    workers = [start_worker(f"w{i}", home, log) for i in (1, 2)]
    try:
        def done():
            runs = store.list_runs(sweep_id=sweep_id)
            return len(runs) == 4 and all(r.status == RunStatus.COMPLETED for r in runs)
        wait_for(done, 240, "four trials trained", log)
    finally:
        end_workers(workers)
    runs = store.list_runs(sweep_id=sweep_id)
    assert {r.worker for r in runs} == {"w1", "w2"}
    first_two = sorted(runs, key=lambda r: r.id)[:2]  # both queued at once, both trained at once
    assert first_two[0].started_at < first_two[1].finished_at
    assert first_two[1].started_at < first_two[0].finished_at
    study = study_of(store, sweep_id)
    assert len(study.trials) == 4 and {t.state for t in study.trials} == {TrialState.COMPLETE}
    store.close()


def test_a_search_survives_its_worker_being_killed_mid_trial(home, tmp_path):
    store = RunStore()
    base = apply_overrides(TrainConfig(), {**MICRO, "max_steps": 200, "eval_interval": 20})
    plan = plan_search(base, ["lr=1e-3:1e-2:log"], [], trials=2, pruner="none")
    sweep_id, (first,) = submit_search(store, plan)
    log = tmp_path / "workers.log"
    worker = start_worker("w1", home, log)
    try:
        wait_for(lambda: store.get_run(first).last_step >= 20, 120, "a trial under way", log)
        worker.send_signal(signal.SIGKILL)  # a crash: no checkpoint, no goodbye
        worker.wait(timeout=30)
        worker = start_worker("w2", home, log)  # a restart: resumes the trial, then the next

        def done():
            runs = store.list_runs(sweep_id=sweep_id)
            return len(runs) == 2 and all(r.status == RunStatus.COMPLETED for r in runs)
        wait_for(done, 240, "the search finished after the restart", log)
    finally:
        end_workers([worker])
    assert store.get_run(first).attempts == 2
    study = study_of(store, sweep_id)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.COMPLETE]
    store.close()


@pytest.mark.backends("sqlite", "postgresql")
def test_advancing_from_two_processes_at_once_asks_each_trial_once(store):
    plan = plan_search(micro(), ["lr=1e-3:1e-2:log"], [], trials=3, parallel=3, pruner="none")
    sweep_id = create_search(store, plan)
    others = [RunStore(store.url) for _ in range(2)]  # two processes' own connections
    barrier = threading.Barrier(2)

    def go(own: RunStore) -> list[int]:
        barrier.wait()
        return advance(own, sweep_id)
    try:
        with ThreadPoolExecutor(2) as pool:
            made = [f.result() for f in [pool.submit(go, own) for own in others]]
    finally:
        for own in others:
            own.close()
    assert sorted(len(m) for m in made) == [0, 3]  # one asked all three, the other none
    assert len(store.list_runs(sweep_id=sweep_id)) == 3
    assert len(study_of(store, sweep_id).trials) == 3
