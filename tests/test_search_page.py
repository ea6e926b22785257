"""The Sweeps page for a search: the form queues its first trial, and a trained search
shows its best against trials, parallel coordinates, importances and Pareto front."""

from test_app_pages import _open, _plotly_specs, _texts, empty_app  # noqa: F401 - a fixture
from test_jobs import micro
from test_search import drain

from jobs.search import plan_search, submit_search
from storage.store import RunStore


def test_the_search_form_queues_the_first_trial_of_a_study(empty_app, home):  # noqa: F811
    at = empty_app
    at.run()
    _open(at, "app_pages/sweeps.py")
    at.radio(key="sweep_kind").set_value("Search").run()
    at.text_area(key="sweep_overrides").input("max_steps=20\nbatch_size=4").run()
    at.text_input(key="search_range_span_0").input("1e-2:1e-4:log").run()
    assert "LOW must be below HIGH" in _texts(at.error)
    assert [b for b in at.button if b.label == "Start search"][0].disabled
    at.text_input(key="search_range_span_0").input("1e-4:1e-2:log").run()
    at.number_input(key="search_trials").set_value(5).run()
    at.selectbox(key="search_pruner").set_value("none").run()
    assert not at.exception and not at.error
    assert {m.label: m.value for m in at.metric}["This search trains"] == "up to 5 runs"
    [start] = [b for b in at.button if b.label == "Start search"]
    start.click().run()
    assert not at.exception and not at.error
    store = RunStore()
    [sweep] = store.list_sweeps()
    runs = store.list_runs(sweep_id=sweep.id)
    store.close()
    assert sweep.study and sweep.spec["search"]["trials"] == 5
    assert len(runs) == 1 and runs[0].status == "queued"
    assert "1 running of 5 trials" in _texts(at.markdown)  # asked, training next


def test_a_trained_search_shows_its_figures(empty_app, home):  # noqa: F811
    store = RunStore()
    one = plan_search(micro(max_steps=10), ["lr=1e-3:3e-2:log", "n_layers=1:2"], [],
                      trials=3, pruner="none")
    single, _ = submit_search(store, one, name="one objective")
    two = plan_search(micro(max_steps=10), ["lr=1e-3:3e-2:log"], ["n_layers=1,2"], trials=3,
                      objectives="loss,flops")
    double, _ = submit_search(store, two, name="two objectives")
    drain(store)
    store.close()
    at = empty_app
    at.run()
    _open(at, "app_pages/sweeps.py")
    at.selectbox(key="sweep_pick").set_value(single).run()
    assert not at.exception and not at.error
    titles = {spec["layout"]["title"]["text"] for spec in _plotly_specs(at)}
    assert {"Best final val loss against trials", "Which settings mattered",
            "Trials across the settings"} <= titles
    assert "3 complete of 3 trials" in _texts(at.markdown)

    at.selectbox(key="sweep_pick").set_value(double).run()
    assert not at.exception and not at.error
    titles = {spec["layout"]["title"]["text"] for spec in _plotly_specs(at)}
    assert "Pareto front: final val loss against training FLOPs" in titles


def test_a_search_shows_its_next_trials_and_how_many_it_will_still_ask(empty_app, home):  # noqa: F811
    store = RunStore()
    plan = plan_search(micro(max_steps=10), ["lr=1e-3:3e-2:log"], ["activation=gelu,silu"],
                       trials=4, parallel=2, pruner="none")
    sweep_id, run_ids = submit_search(store, plan, name="<b>tune</b>")
    store.update_run(run_ids[0], status="running")
    runs = {r.id: r for r in store.list_runs(sweep_id=sweep_id)}
    store.close()
    at = empty_app
    at.run()
    _open(at, "app_pages/sweeps.py")
    at.selectbox(key="sweep_pick").set_value(sweep_id).run()
    assert not at.exception and not at.error
    [table] = [d.value for d in at.dataframe if "trial" in d.value.columns]
    assert list(table.columns) == ["trial", "state", "run", "lr", "activation", "name"]
    assert list(table["trial"]) == [0, 1]
    assert list(table["state"]) == ["running", "queued"]
    assert list(table["run"]) == run_ids
    assert list(table["name"]) == [runs[i].name for i in run_ids]
    assert table["name"][0].startswith("<b>tune</b> #0 lr=")  # a cell's text, as typed
    assert table["activation"].isin(["gelu", "silu"]).all()
    assert "2 running of 4 trials · 2 more to ask" in _texts(at.markdown)
