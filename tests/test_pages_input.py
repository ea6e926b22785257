"""Pages refuse or confirm input a user can get wrong (issue 15): a sweep of more than 100
runs, a run name with a control character."""

from test_app_pages import _open, _texts, empty_app  # noqa: F401 - empty_app is a fixture

LRS_101 = ",".join(f"{i + 10}e-4" for i in range(101))  # all above tiny's min_lr


def test_a_sweep_of_more_than_100_runs_needs_the_confirmation_box(empty_app):  # noqa: F811
    at = empty_app
    at.run()
    _open(at, "app_pages/sweeps.py")
    at.text_area(key="sweep_overrides").input("max_steps=20\nbatch_size=4").run()
    at.text_input(key="sweep_grid_values_0").input(LRS_101).run()
    assert not at.exception and not at.error
    assert {m.label: m.value for m in at.metric}["This sweep makes"] == "101 runs"
    assert "More than 100 runs: tick the box" in _texts(at.warning)
    [start] = [b for b in at.button if b.label == "Start sweep"]
    assert start.disabled

    at.checkbox(key="sweep_confirm").check().run()
    assert not at.exception and not at.error, _texts(at.error)
    assert "tick the box" not in _texts(at.warning)
    [start] = [b for b in at.button if b.label == "Start sweep"]
    assert not start.disabled
    assert {m.label: m.value for m in at.metric}["This sweep makes"] == "101 runs"


def test_new_run_refuses_a_name_with_a_control_character_in_one_message(empty_app, home):  # noqa: F811
    from storage.store import RunStore

    at = empty_app
    at.run()
    at.number_input(key="f0_max_steps").set_value(30)
    [name] = [t for t in at.text_input if t.label == "Run name"]
    name.input("red \x1b[31m").run()
    [start] = [b for b in at.button if b.label == "Start training"]
    start.click().run()
    assert not at.exception
    assert "run name 'red \\x1b[31m' holds a control character" in _texts(at.error)
    store = RunStore()
    assert store.list_runs() == []
    store.close()
