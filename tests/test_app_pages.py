"""Every dashboard page through Streamlit's AppTest: no browser, a real SQLite home.

The store is an ``st.cache_resource`` object shared by every AppTest in this
process, so each test closes it and clears the caches afterwards; the next test
then gets a store on its own home folder. The pages hold no worker: a run they
queue stays queued unless a test trains it itself.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import streamlit as st
import torch
from markdown_support import shown
from streamlit.testing.v1 import AppTest

from gptcore.config import apply_overrides, preset
from gptcore.data import builtin_text
from jobs import runner
from jobs.recovery import worker_id
from storage.store import RunStore

APP = str(Path(__file__).resolve().parent.parent / "app.py")
PAGES = ["app_pages/new_run.py", "app_pages/runs.py", "app_pages/live.py", "app_pages/compare.py",
         "app_pages/sweeps.py", "app_pages/compute.py", "app_pages/plan.py",
         "app_pages/playground.py"]
# Small enough to train 20 steps on a CPU in a few seconds, with evals, samples and checkpoints.
MICRO = {"context_length": 16, "emb_dim": 32, "n_heads": 4, "n_layers": 2, "max_steps": 20,
         "eval_interval": 10, "eval_iters": 2, "batch_size": 8, "device": "cpu",
         "warmup_steps": 2, "log_interval": 2, "checkpoint_interval": 10, "sample_tokens": 16}


@contextmanager
def _app_test() -> Iterator[AppTest]:
    """An AppTest of the whole app; afterwards the process is as it was before.

    The cached store is forgotten, so the next app starts fresh. AppTest leaves app.py
    installed as ``__main__``; left there, any later ``multiprocessing`` spawn (in any
    test) would run the app again in its child.
    """
    from ui.widgets import get_store

    main = sys.modules["__main__"]
    st.cache_resource.clear()
    try:
        yield AppTest.from_file(APP, default_timeout=60)
    finally:
        get_store().close()
        st.cache_resource.clear()
        sys.modules["__main__"] = main


def _train(store: RunStore, name: str, **overrides: object) -> int:
    """Create and train a run to its end, the way the job manager's worker does."""
    cfg = apply_overrides(preset("tiny"), {**MICRO, **overrides})
    run_id = runner.create_run(store, cfg, name=name)
    store.set_status(run_id, "running")
    runner.execute_run(store, run_id)
    return run_id


def _train_without_its_corpus(store: RunStore, name: str, corpus: Path) -> int:
    """A run whose corpus file is deleted while it waits in the queue: it fails, with a reason."""
    corpus.write_text(builtin_text()[:20_000], encoding="utf-8")
    cfg = apply_overrides(preset("tiny"), {**MICRO, "corpus": str(corpus)})
    run_id = runner.create_run(store, cfg, name=name)
    corpus.unlink()
    store.set_status(run_id, "running")
    runner.execute_run(store, run_id)
    return run_id


def _running_run(store: RunStore, name: str) -> int:
    """A run that reads as training in this (live) process, so the app does not mark it
    interrupted; the test writes its metrics and samples itself."""
    run_id = store.create_run(name, preset("tiny").to_dict(), status="running", max_steps=100)
    store.update_run(run_id, worker=worker_id())
    return run_id


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Train on one thread: on a busy two-core machine, torch's spinning threads cost 50x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def trained_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    """One home folder with two completed runs (differing in lr) and one failed run."""
    root = tmp_path_factory.mktemp("trained_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GPTDASH_HOME", str(root))
        mp.delenv("GPTDASH_DB_URL", raising=False)
        store = RunStore()
        ids = {
            "alpha": _train(store, "alpha", lr=3e-3),
            "beta": _train(store, "beta", lr=1e-3),
            "broken": _train_without_its_corpus(store, "broken", root / "missing.txt"),
        }
        for name in ("alpha", "beta"):
            assert store.get_run(ids[name]).status == "completed"
        assert store.get_run(ids["broken"]).status == "failed"
        store.close()
        yield ids


@pytest.fixture
def empty_app(home: Path) -> Iterator[AppTest]:
    """The app on a fresh, empty home folder."""
    with _app_test() as at:
        yield at


@pytest.fixture
def trained_app(trained_home: dict[str, int]) -> Iterator[tuple[AppTest, dict[str, int]]]:
    """The app on the home folder of ``trained_home``, with its run ids by name."""
    with _app_test() as at:
        yield at, trained_home


def _open(at: AppTest, page: str) -> AppTest:
    at.switch_page(page)
    at.run()
    assert not at.exception, f"{page}: {[e.value for e in at.exception]}"
    return at


def _texts(elements) -> str:
    """What the elements show (people's text reaches them escaped)."""
    return "\n".join(shown(str(e.value)) for e in elements)


def _values(data) -> list:
    """A trace's values as a list: plotly sends a numpy array as base64 bytes."""
    if isinstance(data, dict) and "bdata" in data:
        return np.frombuffer(base64.b64decode(data["bdata"]), dtype=data["dtype"]).tolist()
    return list(data)


def _plotly_specs(at: AppTest) -> list[dict]:
    return [json.loads(el.proto.spec) for el in at.get("plotly_chart")]


# ---- an empty database: every page says what to do next -------------------------------------

def test_every_page_renders_on_an_empty_database_and_says_what_to_do(empty_app):
    at = empty_app
    at.run()
    assert not at.exception
    assert at.title[0].value == "New run"
    captions = _texts(at.caption)
    assert "Clone a run: no runs yet." in captions
    assert "Estimated duration appears once a run has finished" in captions

    expected = {"app_pages/runs.py": "No runs yet", "app_pages/live.py": "No runs yet",
                "app_pages/compare.py": "No runs yet",
                "app_pages/compute.py": "No finished runs yet",
                "app_pages/playground.py": "No checkpoints yet"}
    for page, message in expected.items():
        _open(at, page)
        assert message in _texts(at.info), page
        links = at.get("page_link")
        assert links and "New run" in links[0].proto.label, f"{page} links to New run"


def test_workers_page_says_a_lost_workers_run_resumes_by_itself(empty_app):
    # It said the run "can be resumed on any worker", as before runs resumed themselves.
    captions = _texts(_open(empty_app, "app_pages/workers.py").caption)
    assert "resumes by itself from its last checkpoint" in captions
    assert "can be resumed on any worker" not in captions


# ---- pages with runs in the database ----------------------------------------------------------

def test_every_page_renders_with_runs_present(trained_app):
    at, _ = trained_app
    at.run()
    assert not at.exception
    for page in PAGES:
        _open(at, page)
        assert at.title, page


def test_runs_page_lists_every_run_with_its_status(trained_app):
    at, ids = trained_app
    at.run()
    _open(at, "app_pages/runs.py")
    table = at.dataframe[0].value
    assert set(table["id"]) == set(ids.values())
    statuses = dict(zip(table["name"], table["status"], strict=True))
    assert statuses == {"alpha": "completed", "beta": "completed", "broken": "failed"}
    assert "3 run(s)" in _texts(at.caption)
    # One worker trained them all: its column would say nothing row by row, and pushed
    # the table past the page at 1400 px.
    assert "worker" not in table.columns


def test_live_page_explains_why_a_failed_run_ended(trained_app):
    at, ids = trained_app
    at.run()
    _open(at, "app_pages/live.py")
    at.selectbox(key="live_pick").set_value(ids["broken"]).run()
    assert not at.exception
    # The reason sits inside the box, not as loose text after it.
    [box] = [e for e in at.error if "Why it ended" in e.value]
    assert "missing.txt" in box.value
    assert "This run recorded no metrics." in _texts(at.info)


def test_live_page_charts_a_completed_run_with_samples(trained_app):
    at, ids = trained_app
    at.run()
    _open(at, "app_pages/live.py")
    at.selectbox(key="live_pick").set_value(ids["alpha"]).run()
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Status"] == "completed"
    assert at.progress[0].value == 100
    assert at.progress[0].text == "Step 20 of 20"
    titles = {spec["layout"]["title"]["text"] for spec in _plotly_specs(at)}
    assert titles == {"Loss", "Learning rate", "Gradient norm", "Tokens per second"}
    store = RunStore()
    logged = len(store.metrics([ids["alpha"]], ["train/loss"]))
    store.close()
    assert logged > 0
    assert f"{logged} train-loss points shown" in _texts(at.caption)
    assert "Samples" in _texts(at.subheader)
    assert at.code, "samples are shown as code blocks"
    assert not [b for b in at.button if b.label == "Stop this run"], "a finished run has no Stop"


def test_live_samples_follow_new_evaluations_until_the_user_goes_back(empty_app, home):
    store = RunStore()
    run_id = _running_run(store, "sampling")
    for step in (0, 10):
        store.log_sample(run_id, step, "The ", f"text at {step}")
    at = empty_app
    at.run()
    _open(at, "app_pages/live.py")
    assert at.code[0].value == "The text at 10"

    store.log_sample(run_id, 20, "The ", "text at 20")  # a new evaluation while watching
    at.run()
    assert at.code[0].value == "The text at 20"

    at.toggle(key=f"sample_follow_{run_id}").set_value(False).run()  # the user goes back
    at.select_slider(key=f"sample_step_{run_id}").set_value(10).run()
    assert at.code[0].value == "The text at 10"
    store.log_sample(run_id, 30, "The ", "text at 30")
    at.run()
    slider = at.select_slider(key=f"sample_step_{run_id}")
    assert slider.value == 10 and "30" in slider.options
    assert at.code[0].value == "The text at 10"

    at.toggle(key=f"sample_follow_{run_id}").set_value(True).run()
    assert at.code[0].value == "The text at 30"
    store.close()


def test_live_eta_is_steps_to_go_at_the_runs_wall_time_per_step_plus_evaluations(empty_app,
                                                                                   home):
    store = RunStore()
    run_id = _running_run(store, "eta")  # tiny: max_steps 100, eval_interval from the preset
    every = store.get_run(run_id).config["eval_interval"]
    # Reports every 2 steps, 0.5 s of wall time a step of which the steps' own timing saw
    # 0.2 s (the rest: writes between steps), then an interval stalled for an hour.
    start = time.time() - 3600 - 21
    rows = [("step_time_ms", s, 200.0, start + 0.5 * s) for s in range(2, 41, 2)]
    rows += [("step_time_ms", 42, 1.8e6, start + 3621), ("eval_time_ms", 0, 4000.0, start)]
    store.log_metrics(run_id, rows)
    store.update_run(run_id, last_step=42)
    at = empty_app
    at.run()
    _open(at, "app_pages/live.py")
    since_report = time.time() - (start + 3621)  # the page counts down from the last report
    evals = (99 // every - 41 // every) + 1  # from step 42 on, and one at step 100
    eta = next(m for m in at.metric if m.label == "ETA")
    expected = 58 * 0.5 + evals * 4.0
    assert expected - since_report - 1 <= int(eta.value.removesuffix(" s")) <= expected, eta.value
    store.close()


def test_live_page_shows_tags_as_everywhere_else(empty_app, home):
    store = RunStore()
    run_id = _running_run(store, "tagged")
    store.update_run(run_id, tags=["baseline", "lr sweep"])
    at = empty_app
    at.run()
    _open(at, "app_pages/live.py")
    assert "Tags: baseline, lr sweep" in _texts(at.caption)
    store.close()


def test_live_page_says_which_attempt_a_run_that_resumed_itself_is(empty_app, home):
    store = RunStore()
    run_id = _running_run(store, "resumed")
    store.update_run(run_id, attempts=2, auto_resumes=1, max_auto_resumes=3)
    at = empty_app
    at.run()
    _open(at, "app_pages/live.py")
    assert "Attempt 2 (automatic resumes: 1 of at most 3)" in _texts(at.caption)
    store.close()


def test_live_charts_turned_off_before_the_first_metrics_still_show_them(empty_app, home):
    store = RunStore()
    run_id = _running_run(store, "slow start")
    at = empty_app
    at.run()
    _open(at, "app_pages/live.py")
    at.toggle(key="follow_live").set_value(False).run()
    assert "Waiting for the first metrics…" in _texts(at.info)

    store.log_metrics(run_id, [("train/loss", step, 5.0 - step / 10, 0.0) for step in range(5)])
    at.run()
    assert "5 train-loss points shown" in _texts(at.caption)
    store.close()


def test_live_shows_how_far_a_running_runs_corpus_is_tokenized_before_its_first_metrics(
        empty_app, home):
    import os
    from dataclasses import asdict

    from gptcore.tokens import Progress
    from storage.home import cache_dir

    store = RunStore()
    _running_run(store, "big corpus")  # tiny: the built-in text, byte tokenizer
    folder = cache_dir() / "tokens-0123-byte.1-x.tmp"  # a preparation under way, by pid
    folder.mkdir(parents=True)
    state = Progress("builtin", "byte", 450, 1000, 3_100_000, 7, time.time() - 10, os.getpid())
    (folder / "progress.json").write_text(json.dumps(asdict(state)))
    at = empty_app
    at.run()
    _open(at, "app_pages/live.py")
    bars = [shown(p.proto.text) for p in at.get("progress")]
    assert any(b.startswith("tokenizing corpus: 45% (") for b in bars), bars
    assert "Waiting for the first metrics…" not in _texts(at.info)
    # How much of its corpus the run sees: tiny's 400 steps of 2,048 tokens, estimated.
    assert "Data: ~2.0 epochs, 819 k tokens trained on, of ~420 k" in _texts(at.caption)
    store.close()


def test_compare_page_overlays_runs_and_lists_the_differing_lr(trained_app):
    at, ids = trained_app
    at.run()
    _open(at, "app_pages/compare.py")
    at.multiselect(key="compare_pick").set_value([ids["alpha"], ids["beta"]]).run()
    assert not at.exception
    curves = _plotly_specs(at)[0]
    assert {trace["name"] for trace in curves["data"]} == {"alpha", "beta"}
    assert curves["layout"]["title"]["text"] == "val/loss"
    diff = at.dataframe[0].value
    # A run a row, a differing parameter a column: five runs as columns were wider than the
    # page at 1400 px and cut the fifth.
    assert list(diff.index) == [f"#{ids['alpha']} alpha", f"#{ids['beta']} beta"]
    assert "lr" in diff.columns
    assert "emb_dim" not in diff.columns  # only what differs is listed


def test_compute_page_plots_the_finished_runs_and_says_why_no_law_fits(trained_app):
    at, _ = trained_app
    at.run()
    _open(at, "app_pages/compute.py")
    [fig] = _plotly_specs(at)
    names = sorted(row[0] for trace in fig["data"] for row in trace["customdata"])
    assert names == ["alpha", "beta"]  # the failed run has no point
    assert fig["layout"]["xaxis"]["type"] == "log"
    # Same shape, same steps: one compute, so no law can be fitted.
    assert "No frontier fitted: need at least two runs with different compute" in _texts(
        at.caption)


def test_plan_page_on_an_empty_database_proposes_the_ladder_and_queues_it(empty_app):
    at = _open(empty_app, "app_pages/plan.py")
    assert "No finished runs of this corpus and tokenizer yet" in _texts(at.info)
    assert len(_plotly_specs(at)) == 3
    [ladder] = [b for b in at.button if b.label.startswith("Queue the IsoFLOP ladder")]
    ladder.click().run()
    assert not at.exception and not at.error
    assert "Sweep 1 queued" in _texts(at.success)


def test_plan_page_fits_runs_of_many_sizes_and_queues_the_recommended_run(home):
    from test_jobs_planning import seed_many

    store = RunStore()
    seed_many(store)
    store.close()
    with _app_test() as at:
        _open(at, "app_pages/plan.py")
        at.radio(key="plan_kind").set_value("FLOPs").run()
        at.text_input(key="plan_amount").input("2e14").run()
        assert not at.exception and not at.error
        table = at.dataframe[0].value
        assert list(table["budget"]) == ["0.5×", "1×", "2×"] and table["val loss"].notna().all()
        exponents = at.dataframe[1].value
        assert "alpha (N)" in set(exponents["constant"])
        [queue] = [b for b in at.button if b.label == "Queue the recommended run"]
        queue.click().run()
        assert not at.exception
        from ui.widgets import get_store

        [queued] = get_store().list_runs(status="queued")
        assert queued.config["model"]["n_layers"] == int(table["n_layers"][1])


def test_playground_generates_text_from_a_checkpoint(trained_app):
    at, ids = trained_app
    at.run()
    _open(at, "app_pages/playground.py")
    at.selectbox(key="play_a").set_value(ids["beta"])
    at.text_area[0].input("The ")
    at.number_input[1].set_value(30)  # max new tokens
    [generate] = [b for b in at.button if b.label == "Generate"]
    generate.click().run()
    assert not at.exception
    assert not at.error
    output = at.code[0].value
    assert output.startswith("The ")
    assert len(output) > len("The ")


def test_playground_shows_a_prompts_bidirectional_control_escaped(trained_app):
    # "The \u202erev" came back as "The ver…": the rest of the sample read backwards.
    at, ids = trained_app
    at.run()
    _open(at, "app_pages/playground.py")
    at.selectbox(key="play_a").set_value(ids["beta"])
    at.text_area[0].input("The \u202erev")
    at.number_input[1].set_value(5)  # max new tokens
    [generate] = [b for b in at.button if b.label == "Generate"]
    generate.click().run()
    assert not at.exception and not at.error
    output = at.code[0].value
    assert output.startswith("The \\u202erev") and "\u202e" not in output


def test_playground_samples_on_its_share_of_the_cores(trained_app, monkeypatch):
    """In the script's own thread, on jobs.threads' share of the cores (nothing trains here),
    not on the count this process last set (one, by this module's fixture)."""
    from gptcore import generate
    from gptcore.device import cpu_threads, usable_cores
    from jobs.threads import omp_limit

    seen, real = [], generate.stream_text

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(generate, "stream_text", spy)
    at, ids = trained_app
    at.run()
    _open(at, "app_pages/playground.py")
    at.selectbox(key="play_a").set_value(ids["beta"])
    at.text_area[0].input("The ")
    before = torch.get_num_threads()
    try:
        [b for b in at.button if b.label == "Generate"][0].click().run()
    finally:
        torch.set_num_threads(before)  # the threads this module's training starts with
    assert not at.exception and not at.error
    assert seen == [cpu_threads(usable_cores(), 1, omp_limit())]


def test_pages_start_from_the_newest_completed_runs_and_two_different_runs(trained_app):
    at, ids = trained_app  # alpha, beta completed; broken (the newest) failed at step 0
    at.run()
    clone = at.selectbox(key="clone_pick")
    assert clone.value == ids["beta"]
    _open(at, "app_pages/compare.py")
    assert at.multiselect(key="compare_pick").value == [ids["beta"], ids["alpha"]]
    _open(at, "app_pages/playground.py")
    [second_too] = [t for t in at.toggle if t.label == "Compare with a second run"]
    second_too.set_value(True).run()
    assert not at.exception
    first, second = at.selectbox(key="play_a").value, at.selectbox(key="play_b").value
    assert first == ids["beta"] and second == ids["alpha"]


def test_new_run_page_offers_clone_finetune_and_estimates_duration(trained_app):
    at, ids = trained_app
    at.run()
    assert not at.exception
    clone = at.selectbox(key="clone_pick")
    assert set(clone.options) >= {f"#{ids['alpha']} alpha · completed"}
    finetune = at.selectbox(key="ft_pick")
    assert len(finetune.options) == 2  # both completed runs have checkpoints; the failed one not
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Estimated duration"] != "—"
    assert "Duration estimated from run #" in _texts(at.caption)


# ---- the New run form ------------------------------------------------------------------------

def _start_button(at: AppTest):
    [button] = [b for b in at.button if b.label == "Start training"]
    return button


def test_form_refuses_emb_dim_not_divisible_by_n_heads(empty_app):
    at = empty_app
    at.run()
    at.number_input(key="f0_emb_dim").set_value(100)
    at.number_input(key="f0_n_heads").set_value(12)
    at.run()
    assert any("not divisible by n_heads" in shown(e.value) for e in at.error)
    assert _start_button(at).disabled
    assert "setting(s) need a change" in _texts(at.warning)


def test_form_refuses_a_learning_rate_that_is_not_a_number(empty_app):
    at = empty_app
    at.run()
    at.text_input(key="f0_lr").input("abc")
    at.run()
    errors = _texts(at.error)
    assert "lr" in errors and "'abc'" in errors
    assert _start_button(at).disabled


def test_form_refuses_an_absurd_number_of_layers(empty_app):
    at = empty_app
    at.run()
    at.number_input(key="f0_n_layers").set_value(10000)
    at.run()
    assert any("n_layers must be at most" in shown(e.value) for e in at.error)
    assert _start_button(at).disabled


def test_valid_form_enables_start_and_summarises_the_cost(empty_app):
    at = empty_app
    at.run()
    assert not at.error
    assert not _start_button(at).disabled
    metrics = {m.label: m.value for m in at.metric}
    assert set(metrics) == {"Parameters", "FLOPs per token", "Memory estimate", "Tokens per step",
                            "Estimated duration", "Epochs"}
    assert metrics["Tokens per step"] == "2,048"  # tiny preset: batch 32 x context 64
    assert metrics["Epochs"] == "~2.0 epochs"  # of the built-in text, not tokenized yet
    assert metrics["Estimated duration"] == "—"  # nothing has run on this machine yet
    [lr_chart] = _plotly_specs(at)
    assert lr_chart["layout"]["title"]["text"].startswith("Learning rate")


def test_form_offers_wsd_with_its_decay_fraction_and_previews_it(empty_app, home):
    at = empty_app
    at.run()
    at.selectbox(key="f0_schedule").set_value("wsd")
    at.text_input(key="f0_decay_fraction").input("0")
    at.run()
    assert "decay_fraction must be greater than 0" in _texts(at.error)
    at.text_input(key="f0_decay_fraction").input("0.25").run()
    assert not at.error
    [lr_chart] = _plotly_specs(at)
    assert lr_chart["layout"]["title"]["text"] == "Learning rate (wsd)"
    lrs = dict(zip(lr_chart["data"][0]["x"], lr_chart["data"][0]["y"], strict=True))
    assert lrs[100] == lrs[299] == 3e-3 > lrs[350] > lrs[399]  # tiny: 400 steps, lr 3e-3
    _start_button(at).click().run()
    store = RunStore()
    [run] = store.list_runs()
    store.close()
    assert (run.config["schedule"], run.config["decay_fraction"]) == ("wsd", 0.25)


def test_start_training_queues_the_form_config_and_opens_live_run(empty_app, home):
    at = empty_app
    at.run()
    at.number_input(key="f0_max_steps").set_value(30)
    at.text_input(key="f0_lr").input("0.002")
    [name] = [t for t in at.text_input if t.label == "Run name"]
    name.input("from the form")
    at.run()
    _start_button(at).click().run()
    assert not at.exception
    assert at.title[0].value == "Live run"
    store = RunStore()
    [run] = store.list_runs()
    store.close()
    assert run.name == "from the form"
    assert run.config["max_steps"] == 30 and run.config["lr"] == 0.002
    assert run.status in ("queued", "running", "completed")


def test_start_with_three_seeds_queues_three_runs_that_differ_only_in_seed(empty_app, home):
    at = empty_app
    at.run()
    at.number_input(key="f0_max_steps").set_value(30)
    at.number_input(key="f0_seed").set_value(5)
    [name] = [t for t in at.text_input if t.label == "Run name"]
    name.input("repeat me")
    at.number_input(key="repeat_seeds").set_value(3)
    at.run()
    _start_button(at).click().run()
    assert not at.exception
    assert at.title[0].value == "Live run"
    store = RunStore()
    [sweep] = store.list_sweeps()
    runs = store.list_runs(sweep_id=sweep.id)
    store.close()
    assert sweep.name == "repeat me"
    assert sorted((r.name, r.config["seed"]) for r in runs) == [
        ("repeat me seed=5", 5), ("repeat me seed=6", 6), ("repeat me seed=7", 7)]
    assert len({str({**r.config, "seed": 0}) for r in runs}) == 1
    assert all(r.config["max_steps"] == 30 for r in runs)


def test_sweep_form_counts_runs_refuses_bad_values_and_queues_a_sweep(empty_app, home):
    at = empty_app
    at.run()
    _open(at, "app_pages/sweeps.py")
    assert "No sweeps yet" in _texts(at.info)
    at.text_area(key="sweep_overrides").input("max_steps=20\nbatch_size=4").run()
    at.text_input(key="sweep_grid_values_0").input("1e-3,3e-3,1e-2").run()
    assert not at.exception and not at.error
    assert {m.label: m.value for m in at.metric}["This sweep makes"] == "3 runs"

    at.text_input(key="sweep_grid_values_0").input("1e-3,fast").run()
    assert "fast" in _texts(at.error)
    assert [b for b in at.button if b.label == "Start sweep"][0].disabled

    at.text_input(key="sweep_grid_values_0").input("1e-3,3e-3").run()
    at.text_input(key="sweep_name").input("two lrs").run()
    [start] = [b for b in at.button if b.label == "Start sweep"]
    start.click().run()
    assert not at.exception and not at.error
    store = RunStore()
    [sweep] = store.list_sweeps()
    runs = store.list_runs(sweep_id=sweep.id)
    store.close()
    assert sweep.name == "two lrs"
    assert sorted(r.config["lr"] for r in runs) == [1e-3, 3e-3]
    assert all(r.config["max_steps"] == 20 for r in runs)
    assert "of 2 runs completed" in _texts(at.markdown)


def test_a_planned_sweep_shows_each_runs_epochs_and_warns_past_four(empty_app, home):
    at = empty_app
    at.run()
    _open(at, "app_pages/sweeps.py")
    # tiny: 2,048 tokens a step on the built-in text's ~420 k training tokens (estimated).
    at.text_area(key="sweep_overrides").input("max_steps=100").run()
    at.text_input(key="sweep_grid_values_0").input("1e-3,3e-3").run()
    assert {m.label: m.value for m in at.metric}["Epochs per run"] == "~0.49 epochs"
    assert not [w for w in at.warning if "repeat" in w.value]
    at.text_area(key="sweep_overrides").input("max_steps=1000").run()
    assert "lr=0.001 · ~4.9 epochs" in at.text[0].value
    assert "2 of 2 runs repeat their training data more than 4 times" in _texts(at.warning)
    assert not [b for b in at.button if b.label == "Start sweep"][0].disabled


def test_sweep_form_repeats_each_point_with_seeds_and_charts_their_means(empty_app, home):
    at = empty_app
    at.run()
    _open(at, "app_pages/sweeps.py")
    at.text_area(key="sweep_overrides").input("max_steps=20\nbatch_size=4\nseed=7").run()
    at.text_input(key="sweep_grid_values_0").input("1e-3,3e-3").run()
    at.number_input(key="sweep_seeds").set_value(3).run()
    assert not at.exception and not at.error
    assert {m.label: m.value for m in at.metric}["This sweep makes"] == "6 runs"
    [start] = [b for b in at.button if b.label == "Start sweep"]
    start.click().run()
    assert not at.exception and not at.error
    store = RunStore()
    [sweep] = store.list_sweeps()
    runs = store.list_runs(sweep_id=sweep.id)
    assert sweep.name == "sweep lr x 3 seeds" and sweep.spec["seeds"] == 3
    assert sorted((r.config["lr"], r.config["seed"]) for r in runs) == [
        (lr, seed) for lr in (1e-3, 3e-3) for seed in (7, 8, 9)]
    for r in runs:  # as if trained: a final val loss each, spread by seed
        store.set_status(r.id, "completed")
        store.log_metrics(r.id, [("val/loss", 20, r.config["lr"] * 100 + r.config["seed"] / 10,
                                  0.0)])
    store.close()
    at.run()
    assert not at.exception
    [chart] = _plotly_specs(at)
    [mean] = [t for t in chart["data"] if t["name"] == "mean of seeds ± std"]
    assert sorted(_values(mean["y"])) == pytest.approx([0.9, 1.1])
    assert _values(mean["error_y"]["array"]) == pytest.approx([0.1, 0.1])
    assert "seed" in at.dataframe[0].value.columns


def test_compare_shows_recorded_samples_at_one_step_or_each_runs_latest(home):
    store = RunStore()
    config = preset("tiny").to_dict()
    short = store.create_run("short", config, status="completed", max_steps=100)
    long = store.create_run("long", config, status="running", max_steps=1000)
    for run_id, steps in ((short, (50, 100)), (long, (50, 100, 600))):
        store.log_metrics(run_id, [("val/loss", s, 3.0 - s / 1000, 0.0) for s in steps])
        for s in steps:
            store.log_sample(run_id, s, "The ", f"text of run {run_id} at step {s}")
    store.close()
    with _app_test() as at:
        at.run()
        at.session_state["compare_ids"] = [short, long]
        _open(at, "app_pages/compare.py")
        codes = _texts(at.code)
        # One step for all: the newest step both runs have.
        assert f"text of run {short} at step 100" in codes
        assert f"text of run {long} at step 100" in codes
        assert "at step 600" not in codes
        at.toggle(key="cmp_sample_latest").set_value(True).run()
        assert not at.exception
        codes = _texts(at.code)
        assert f"text of run {short} at step 100" in codes
        assert f"text of run {long} at step 600" in codes


def test_compare_draws_three_seeds_as_one_mean_line_in_a_band(home):
    store = RunStore()
    seeds = [store.create_run(f"tiny seed={seed}", apply_overrides(preset("tiny"), {
        "seed": seed}).to_dict(), status="completed", max_steps=100) for seed in (1, 2, 3)]
    other = store.create_run("wider", apply_overrides(preset("tiny"), {"emb_dim": 128})
                             .to_dict(), status="completed", max_steps=100)
    for offset, run_id in enumerate([*seeds, other]):
        store.log_metrics(run_id, [("val/loss", s, 3.0 - s / 100 + offset / 10, 0.0)
                                   for s in (0, 50, 100)])
    store.close()
    with _app_test() as at:
        at.run()
        at.session_state["compare_ids"] = [*seeds, other]
        _open(at, "app_pages/compare.py")
        assert len(_plotly_specs(at)[0]["data"]) == 4  # one line per run until grouped
        assert "1 group(s) of runs that differ only in seed" in _texts(at.caption)
        at.checkbox(key="cmp_group_seeds").check().run()
        assert not at.exception
        traces = _plotly_specs(at)[0]["data"]
    named = [t["name"] for t in traces if t.get("showlegend", True)]
    assert named == ["wider", "tiny (mean of 3 seeds ± std)"]
    [band] = [t for t in traces if t.get("fill") == "tonexty"]
    [mean] = [t for t in traces if t.get("name") == named[1]]
    assert _values(mean["y"]) == pytest.approx([3.1, 2.6, 2.1])  # offsets 0, 0.1, 0.2
    assert _values(band["y"]) == pytest.approx([3.0, 2.5, 2.0])  # minus one sample std, 0.1


def test_a_sweep_without_results_says_so_instead_of_drawing_empty_axes(home):
    store = RunStore()
    sweep_id = store.create_sweep("nothing yet", {"params": ["lr"]})
    for lr in (1e-3, 3e-3):
        cfg = apply_overrides(preset("tiny"), {"lr": lr})
        run_id = store.create_run(f"lr={lr}", cfg.to_dict(), status="queued",
                                  max_steps=cfg.max_steps, sweep_id=sweep_id)
        store.set_status(run_id, "cancelled", error="cancelled before it started")
    store.close()
    with _app_test() as at:
        at.run()
        _open(at, "app_pages/sweeps.py")
        assert not at.get("plotly_chart")  # no empty axes
        assert "nothing to chart" in _texts(at.info)
        assert "2 cancelled" in _texts(at.markdown)


def test_the_pages_train_on_no_file_outside_the_corpora_they_offer(empty_app, home, tmp_path):
    # Any file the server can read, named in a sweep's settings (or an uploaded config),
    # would be trained on and could be sampled back by whoever reaches the pages.
    secret = tmp_path.parent / f"{tmp_path.name}-secret.txt"
    secret.write_text("the server's own text, not the user's\n" * 400)
    at = empty_app
    at.run()
    _open(at, "app_pages/sweeps.py")
    at.text_area(key="sweep_overrides").input(f"max_steps=20\ncorpus={secret}").run()
    at.text_input(key="sweep_grid_values_0").input("1e-3,3e-3").run()
    assert "is not one the pages offer" in _texts(at.error)
    assert [b for b in at.button if b.label == "Start sweep"][0].disabled
    # A file put in the home's data folder is offered, and so is the sweep.
    data = home / "data"
    data.mkdir(exist_ok=True)
    (data / "mine.txt").write_text(secret.read_text())
    at.text_area(key="sweep_overrides").input(f"max_steps=20\ncorpus={data / 'mine.txt'}").run()
    assert not at.error
    assert not [b for b in at.button if b.label == "Start sweep"][0].disabled
