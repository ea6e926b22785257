"""A sweep end to end in headless chromium: plan it on the Sweeps page, watch its three runs
train and land in the table and chart, then find them on the Compute page."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser_support import (
    ARTIFACTS,
    OffHostRequests,
    assert_no_exception,
    goto_page,
    launch_chromium,
    new_context,
    on_chart,
    readme_server,
    rerun,
    screenshot,
    set_field,
    user_home,
    wait_rendered,
)
from playwright.sync_api import Page, sync_playwright

pytestmark = pytest.mark.browser

SWEEP_TIMEOUT_MS = 240_000
# Small enough for three runs to finish in well under a minute on two CPU cores, with
# evaluations every 10 steps so each run has a curve and a final val loss.
OVERRIDES = "batch_size=8\neval_interval=10\neval_iters=2\nsample_tokens=16"
STEPS = "20,40,80"  # the swept setting: more steps, more compute, a frontier to fit


def metric_values(page: Page) -> list[str]:
    return [t.strip() for t in page.locator('[data-testid="stMetricValue"]').all_inner_texts()]


def test_a_three_run_sweep_trains_and_shows_on_sweeps_and_compute(tmp_path: Path) -> None:
    with (readme_server(user_home(tmp_path), ARTIFACTS / "streamlit-sweeps.log") as url,
          sync_playwright() as playwright):
        browser = launch_chromium(playwright)
        context = new_context(browser)
        off_host = OffHostRequests(context)
        page = context.new_page()
        page.goto(f"{url}/")
        wait_rendered(page)
        goto_page(page, "Sweeps", "/sweeps")
        page.get_by_text("No sweeps yet").wait_for()

        # Plan: the tiny preset, shrunk, with max_steps swept over three values.
        overrides = page.get_by_label("Overrides", exact=True)
        overrides.fill(OVERRIDES)
        rerun(page, lambda: overrides.press("Control+Enter"))  # a text area commits so
        page.get_by_role("combobox", name="Parameter 1", exact=True).click()
        page.keyboard.type("max_steps")  # the option list is long and drawn lazily: filter it
        rerun(page, lambda: page.get_by_role("option", name="max_steps", exact=True).click())

        # A bad value: one line saying what is wrong, and no Start.
        set_field(page, "Values 1", "20,forty")
        assert "forty" in page.locator('[data-testid="stAlertContentError"]').inner_text()
        assert page.get_by_role("button", name="Start sweep").is_disabled()

        # The count and the time before anything is written.
        set_field(page, "Values 1", STEPS)
        set_field(page, "Sweep name", "steps")
        values = metric_values(page)
        assert values[0] == "3 runs", values
        assert values[1].startswith("about "), values
        assert page.locator('[data-testid="stAlertContentError"]').count() == 0

        # Start: the worker trains the runs one by one while the results refresh on their own.
        start = page.get_by_role("button", name="Start sweep")
        rerun(page, start.click)
        page.get_by_text("3 of 3 runs completed").wait_for(timeout=SWEEP_TIMEOUT_MS)
        wait_rendered(page)
        cells = page.locator('[data-testid="stDataFrame"] [role="gridcell"]')
        # The table's cells live in an a11y grid drawn a moment after the canvas.
        cells.filter(has_text="steps max_steps=80").first.wait_for(state="attached")
        texts = [t.strip() for t in cells.all_text_contents()]
        assert texts.count("completed") == 3, texts
        assert {"steps max_steps=20", "steps max_steps=40", "steps max_steps=80"} <= set(texts)
        traces = on_chart(page, "val loss vs max_steps",
                          "return el._fullData.map((t) => [t.name, t._length]);")
        assert dict(traces) == {"final": 3, "best": 1}
        screenshot(page, "sweeps", readme=True)

        # Every run has ended: the page stops refreshing itself. (The sidebar and the results
        # may each see the end in the same tick and redraw the page once: let that pass.)
        page.wait_for_timeout(2_500)
        wait_rendered(page)
        before = page.evaluate("window.__gptdashRuns")
        page.wait_for_timeout(5_000)
        assert page.evaluate("window.__gptdashRuns") == before

        # Compute: the three runs, their frontier and the fitted law.
        goto_page(page, "Compute", "/compute")
        drawn = on_chart(page, "Val loss vs compute",
                         "return el._fullData.map((t) => [t.name, t.mode, t._length]);")
        points = sum(n for _, mode, n in drawn if mode == "markers")
        assert points == 3, drawn
        assert any(mode == "lines" and name.startswith("fit: ") for name, mode, _ in drawn), drawn
        page.get_by_text("Frontier fitted to").wait_for()
        screenshot(page, "compute", readme=True)
        assert_no_exception(page)

        context.close()
        browser.close()
        assert not off_host.urls, f"the app reached outside 127.0.0.1: {off_host.urls}"
