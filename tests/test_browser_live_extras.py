"""Events, the forecast and cross-run samples in headless chromium against a real server.

The home folder is prepared before the server starts: two short completed runs (the
first with a spike, a roll-back and an lr cut recorded on it). A long run is queued
only by the first test that watches it train; the server's worker trains it at full
speed, a whole core on CI's two-core box, until the Compare test stops it, so nothing
else in this module shares the box with it. What is read on a still page (the ETA to
a target) is checked once it has stopped: a page that redraws four charts every tick
gave a starved browser no quiet moment to take a click.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from browser_support import (
    ARTIFACTS,
    goto_page,
    new_context,
    on_chart,
    readme_server,
    rerun,
    screenshot,
    set_field,
    user_home,
    wait_for_chart,
    wait_rendered,
)
from playwright.sync_api import Browser, Page
from test_app_pages import MICRO, _train
from test_jobs import wait_for

from gptcore.config import apply_overrides, preset
from jobs import runner
from jobs.forecasting import run_forecast
from storage.status import ACTIVE, RunStatus
from storage.store import RunStore
from ui.forecast_view import eta_text

pytestmark = pytest.mark.browser

# test_app_pages' micro model, evaluating often enough to forecast from the first 40% of
# a 60-step run (five evaluations after step 0).
SHORT = {"max_steps": 60, "eval_interval": 4, "checkpoint_interval": 20}
SPIKE = "loss 9.12 at step 25 is 8.4σ above the recent mean 4.10"
ROLLBACK = "rolled back to step 20 and skipped the batch"
TRAINING_TIMEOUT_MS = 120_000
TRAINING_S = TRAINING_TIMEOUT_MS / 1000
# The run watched while it trains; stopped long before its end. It trains in a worker
# process of its own, at full speed: 2,000 steps ended before the last test looked.
LONG_STEPS = 20_000


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, int]]:
    root = user_home(tmp_path_factory.mktemp("extras_home"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GPTDASH_HOME", str(root))
        mp.delenv("GPTDASH_DB_URL", raising=False)
        mp.delenv("GPTDASH_ARTIFACTS", raising=False)
        store = RunStore()
        ids = {"bumpy": _train(store, "bumpy", lr=3e-3, **SHORT),
               "calm": _train(store, "calm", lr=1e-3, **SHORT)}
        assert all(store.get_run(i).status == "completed" for i in ids.values())
        store.log_event(ids["bumpy"], 25, "spike", SPIKE)
        store.log_event(ids["bumpy"], 25, "rollback", ROLLBACK)
        store.log_event(ids["bumpy"], 20, "lr_reduced", "lr scaled by 0.5 after a repeat spike")
        store.close()
        torch.set_num_threads(threads)
        yield {"root": root, **ids}


@pytest.fixture(scope="module")
def long_run(home: dict) -> int:
    """The long run's id, queued (from this process, as `gptdash submit` would) and training."""
    store = open_store(home)
    # Logged every 10 steps: at full speed, every 2 steps gave the page's charts (and
    # this two-core box's software-rendered browser) thousands of new points a minute.
    cfg = apply_overrides(preset("tiny"), {**MICRO, "max_steps": LONG_STEPS, "eval_interval": 5,
                                           "log_interval": 10, "lr": 2e-3})
    run_id = runner.create_run(store, cfg, name="long")
    try:
        assert wait_for(lambda: store.get_run(run_id).status == RunStatus.RUNNING,
                        TRAINING_S), f"the server's worker did not start run {run_id}"
    finally:
        store.close()
    return run_id


def stop_and_wait(home: dict, run_id: int) -> None:
    """Stop the run (a no-op once it has ended) and wait until its worker has let it go."""
    store = open_store(home)
    try:
        store.request_stop(run_id)
        assert wait_for(lambda: store.get_run(run_id).status not in ACTIVE,
                        TRAINING_S), f"run {run_id} did not stop"
    finally:
        store.close()


@pytest.fixture(scope="module")
def server(home: dict) -> Iterator[str]:
    with readme_server(Path(home["root"]), ARTIFACTS / "extras-server.log") as url:
        yield url


@pytest.fixture
def page(browser: Browser, server: str) -> Iterator[Page]:
    context = new_context(browser)
    page = context.new_page()
    page.goto(f"{server}/")
    wait_rendered(page)
    yield page
    context.close()


def pick(page: Page, label: str, option: str) -> None:
    page.get_by_role("combobox", name=label, exact=True).click()
    rerun(page, lambda: page.get_by_role("option", name=option, exact=True).click())


def add_to_multiselect(page: Page, option: str) -> None:
    page.locator('[data-testid="stMultiSelect"] input').click()
    rerun(page, lambda: page.get_by_role("option", name=option, exact=True).click())
    page.keyboard.press("Escape")


def chart_traces(page: Page, title: str) -> list[str]:
    return on_chart(page, title, "return el.data.map((t) => t.name);")


def test_live_marks_a_rolled_back_run_and_lists_its_events(page: Page, home: dict) -> None:
    goto_page(page, "Live run", "/live")
    pick(page, "Run", f"#{home['bumpy']} bumpy")
    wait_for_chart(page, "Loss", "el.data.some((t) => t.name === 'roll-back')")
    names = chart_traces(page, "Loss")
    assert {"spike", "roll-back", "lr reduced", "best checkpoint"} <= set(names)
    hover = on_chart(page, "Loss", "return el.data.find((t) => t.name === 'spike').text[0];")
    assert SPIKE in hover
    table = page.locator('[data-testid="stTable"]').inner_text()
    assert ROLLBACK in table and "spike" in table
    # A finished run: its forecast from what it saw, and the check made at 40% of it.
    page.get_by_text("Forecast final val loss").wait_for()
    page.get_by_text("the last evaluation gave").wait_for()
    page.get_by_text("Trained on cpu").wait_for()  # trained here, by no worker
    wait_rendered(page)
    screenshot(page, "live_events")


def test_live_forecast_band_while_a_run_trains(page: Page, home: dict, long_run: int) -> None:
    goto_page(page, "Live run", "/live")
    assert page.get_by_role("combobox", name="Run", exact=True).input_value() == "#3 long"
    # Five evaluations (every 5 steps) and the forecast is drawn past the curve.
    wait_for_chart(page, "Loss", "el.data.some((t) => t.name === 'forecast band')",
                   timeout_ms=TRAINING_TIMEOUT_MS)
    band_end = on_chart(page, "Loss", "const t = el._fullData.find((t) => t.name === 'forecast');"
                                      "return [t.x[0], t.x[t.x.length - 1]];")
    # From the last evaluation, as far ahead as the run has come, never past max_steps.
    assert band_end[0] < band_end[1] <= LONG_STEPS
    page.get_by_text("Forecast final val loss").wait_for()
    page.get_by_text("Trained by worker").wait_for()
    # An event while it trains: drawn at the step it names once new rows arrive.
    store = open_store(home)
    step = store.get_run(long_run).last_step
    store.log_event(long_run, step, "spike", f"loss 8.00 at step {step} is 7.1σ above")
    store.close()
    wait_for_chart(page, "Loss", "el.data.some((t) => t.name === 'spike')", timeout_ms=30_000)


def open_store(home: dict) -> RunStore:
    """The prepared home's store, opened from this (the test's) process."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GPTDASH_HOME", str(home["root"]))
        mp.delenv("GPTDASH_DB_URL", raising=False)
        return RunStore()


def test_compare_generates_samples_side_by_side(page: Page, home: dict, long_run: int) -> None:
    goto_page(page, "Compare", "/compare")
    # Compare starts from the newest completed runs; the one still training is added.
    for name, run_id in (("bumpy", home["bumpy"]), ("calm", home["calm"]), ("long", long_run)):
        if name not in page.locator('[data-testid="stMultiSelect"]').inner_text():
            add_to_multiselect(page, f"#{run_id} {name}")
    names = chart_traces(page, "val/loss")
    assert {"bumpy", "calm"} <= set(names)
    page.get_by_role("heading", name="Forecast final val loss").wait_for()
    forecasts = page.locator('[data-testid="stTable"]').last.inner_text()
    assert "bumpy" in forecasts and "calm" in forecasts
    rerun(page, lambda: page.get_by_role("button", name="Generate").click())
    texts = page.locator('[data-testid="stCode"] code').all_inner_texts()
    generated = [t for t in texts if t.startswith("The ")]
    assert len(generated) >= 2
    heads = page.locator('[data-testid="stText"]').all_inner_texts()
    assert any("bumpy" in h and "best.pt" in h for h in heads)
    assert any("calm" in h for h in heads)
    page.get_by_text("Recorded during training").wait_for()
    # The long run still trains: its forecast continues its curve.
    assert "long · forecast" in chart_traces(page, "val/loss")
    screenshot(page, "compare_samples", readme=True)
    stop_and_wait(home, long_run)


def test_live_eta_to_a_target_from_the_forecast(page: Page, home: dict, long_run: int) -> None:
    goto_page(page, "Live run", "/live")
    pick(page, "Run", f"#{long_run} long")
    page.get_by_text("Forecast final val loss").wait_for(timeout=TRAINING_TIMEOUT_MS)
    # Stopped (by Compare's test before, or here): the page stops refreshing and is at rest.
    stop_and_wait(home, long_run)
    page.get_by_text("stopped on request at step").wait_for(timeout=30_000)
    wait_rendered(page)
    set_field(page, "ETA to val loss", "1.000")
    # The line the page must show: the run's forecast (the one it draws, made from the same
    # rows) asked for val loss 1; a stopped run has no pace, so no time is promised.
    store = open_store(home)
    try:
        forecast = run_forecast(store, long_run)
        run = store.get_run(long_run)
    finally:
        store.close()
    expected = eta_text(forecast, 1.0, last_step=run.last_step, seconds_per_step=None)
    page.get_by_text(expected, exact=True).wait_for()
    screenshot(page, "live_forecast_events", readme=True)
