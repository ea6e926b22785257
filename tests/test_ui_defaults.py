import pandas as pd

from gptcore.config import preset
from storage.status import RunStatus
from ui.config_diff import differing_params
from ui.defaults import first_differing, newest_finished, other_run


def _runs(store, *specs):
    """Runs created oldest first from (name, status, last_step); listed newest first."""
    for name, status, step in specs:
        run_id = store.create_run(name, preset("tiny").to_dict(), status=status, max_steps=100)
        store.update_run(run_id, last_step=step)
    return store.list_runs()


def test_compare_and_clone_start_from_the_newest_completed_runs_not_a_failed_one(store):
    runs = _runs(store, ("old-done", RunStatus.COMPLETED, 100),
                 ("mid-done", RunStatus.COMPLETED, 100), ("stopped", RunStatus.STOPPED, 40),
                 ("broken", RunStatus.FAILED, 0),
                 ("waiting", RunStatus.QUEUED, 0))
    ids = {r.name: r.id for r in runs}
    assert newest_finished(runs, 2) == [ids["mid-done"], ids["old-done"]]
    assert newest_finished(runs, 1) == [ids["mid-done"]]
    # Fewer completed runs than asked: topped up with one that trained, before step-0 ones.
    assert newest_finished(runs, 3)[-1] == ids["stopped"]


def test_the_second_run_defaults_to_another_run_than_the_first(store):
    runs = _runs(store, ("a", RunStatus.COMPLETED, 100), ("b", RunStatus.COMPLETED, 100))
    first = newest_finished(runs, 1)[0]
    second = other_run(runs, first)
    assert second is not None and second != first
    assert other_run(runs[:1], runs[0].id) is None


def test_the_hyperparameter_default_is_the_first_that_differs_among_plotted_runs():
    flat = {"#1 a": {"corpus": "x.txt", "lr": 0.001},
            "#2 b": {"corpus": "builtin", "lr": 0.003},
            "#3 c": {"corpus": "builtin", "lr": 0.01}}
    diff = differing_params(flat)
    assert list(diff.index) == ["corpus", "lr"]
    # Run #1 has no loss to plot: among #2 and #3 only lr differs.
    assert first_differing(diff, ["#2 b", "#3 c"]) == "lr"
    assert first_differing(diff, ["#1 a", "#2 b", "#3 c"]) == "corpus"
    assert first_differing(pd.DataFrame(), []) is None
