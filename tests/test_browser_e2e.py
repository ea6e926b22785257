"""The dashboard end to end: headless chromium against a real `streamlit run`.

One server (with its own empty home folder) serves every test here. Each test
fails on any exception box, and on any request the browser makes to a host other
than 127.0.0.1: the app must work with no network.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from browser_support import (
    ARTIFACTS,
    OffHostRequests,
    goto_page,
    new_context,
    on_chart,
    readme_server,
    rerun,
    screenshot,
    set_field,
    user_home,
    wait_for_chart,
    wait_for_points,
    wait_rendered,
)
from playwright.sync_api import Browser, Page

pytestmark = pytest.mark.browser

TRAINING_TIMEOUT_MS = 180_000
STATUS_JS = """(want) => {
    const value = document.querySelector('[data-testid="stMetricValue"]');
    return value !== null && value.innerText.trim() === want;
}"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = user_home(tmp_path_factory.mktemp("browser_home"))
    with readme_server(home, ARTIFACTS / "streamlit-server.log") as url:
        yield url


@pytest.fixture
def page(browser: Browser, server: str) -> Iterator[Page]:
    """A fresh browser session on New run; after the test, no request may have left 127.0.0.1."""
    context = new_context(browser)
    off_host = OffHostRequests(context)
    page = context.new_page()
    page.goto(f"{server}/")
    wait_rendered(page)
    page.get_by_role("heading", name="New run", level=1).wait_for()
    yield page
    context.close()
    assert not off_host.urls, f"the app reached outside 127.0.0.1: {off_host.urls}"


def start_training(page: Page) -> None:
    """Press Start on New run and land on Live run."""
    start = page.get_by_role("button", name="Start training")
    assert start.is_enabled()
    start.click()
    page.wait_for_url("**/live")
    wait_rendered(page)
    page.get_by_role("heading", name="Live run", level=1).wait_for()


def wait_for_status(page: Page, status: str, timeout_ms: int = TRAINING_TIMEOUT_MS) -> None:
    page.wait_for_function(STATUS_JS, arg=status, timeout=timeout_ms)
    wait_rendered(page)


def selected(page: Page, label: str) -> str:
    """What the selectbox labelled ``label`` shows."""
    return page.get_by_role("combobox", name=label, exact=True).input_value()


def choose(page: Page, label: str, option: str) -> None:
    """Pick ``option`` in the selectbox labelled ``label``."""
    assert selected(page, label) != option, f"{option!r} is already chosen"
    page.get_by_role("combobox", name=label, exact=True).click()
    rerun(page, lambda: page.get_by_role("option", name=option, exact=True).click())
    assert selected(page, label) == option


def grid_cells(page: Page, must_contain: str) -> list[str]:
    """Texts of a dataframe's cells (drawn on a canvas; its cells live in an a11y table)."""
    cells = page.locator('[data-testid="stDataFrame"] [role="gridcell"]')
    cells.filter(has_text=must_contain).first.wait_for(state="attached")
    return [text.strip() for text in cells.all_text_contents()]


def test_train_watch_stop_then_compare_and_sample(page: Page) -> None:
    # New run, tiny preset, long enough to watch it train.
    assert selected(page, "Preset") == "tiny"
    screenshot(page, "new_run_empty")
    set_field(page, "max_steps", "20000")
    set_field(page, "batch_size", "8")
    set_field(page, "Run name", "watch-me")
    start_training(page)

    # Live run: the chart gains points on each refresh (every 2 s).
    assert selected(page, "Run") == "#1 watch-me"
    first = wait_for_points(page, 0)
    second = wait_for_points(page, first)
    third = wait_for_points(page, second)
    assert first < second < third
    wait_for_points(page, 60)  # past the first evaluation (step 50), so val loss has a curve
    wait_for_status(page, "running", timeout_ms=10_000)

    page.get_by_role("button", name="Stop this run").click()
    wait_for_status(page, "stopped")
    assert page.get_by_role("button", name="Stop this run").count() == 0

    # A second run with another learning rate, short enough to finish.
    goto_page(page, "New run", "/")
    set_field(page, "lr", "0.001")
    set_field(page, "max_steps", "150")
    set_field(page, "batch_size", "8")
    set_field(page, "Run name", "short")
    screenshot(page, "new_run", readme=True)
    start_training(page)
    assert selected(page, "Run") == "#2 short"
    wait_for_status(page, "completed")
    assert page.get_by_text("Step 150 of 150").count() == 1
    page.get_by_text("step 150", exact=True).wait_for()  # the last evaluation's sample
    screenshot(page, "live", readme=True)

    # Runs lists both.
    goto_page(page, "Runs", "/runs")
    cells = grid_cells(page, "short")
    assert {"watch-me", "short", "stopped", "completed"} <= set(cells)
    screenshot(page, "runs", readme=True)

    # Compare overlays both runs and names lr among the differences.
    goto_page(page, "Compare", "/compare")
    picked = page.locator('[data-testid="stMultiSelect"]').inner_text()
    assert "watch-me" in picked and "short" in picked
    traces = on_chart(page, "val/loss", "return el.data.map((t) => t.name);")
    assert set(traces) == {"watch-me", "short"}
    drawn = on_chart(page, "val/loss", "return el.querySelectorAll('.scatterlayer .trace').length;")
    assert drawn >= 2
    page.get_by_role("heading", name="Hyperparameters that differ").wait_for()
    # A run a row, a differing setting a column (five runs as columns were cut at 1400 px).
    headers = page.locator('[data-testid="stDataFrame"] [role="columnheader"]')
    headers.filter(has_text="lr").first.wait_for(state="attached")
    assert "lr" in [text.strip() for text in headers.all_text_contents()]
    screenshot(page, "compare", readme=True)

    # Playground: sample from a checkpoint.
    goto_page(page, "Playground", "/playground")
    assert selected(page, "Run") == "#2 short"  # the newest checkpoint first
    choose(page, "Run", "#1 watch-me")
    prompt = page.get_by_label("Prompt").input_value()
    rerun(page, lambda: page.get_by_role("button", name="Generate").click())
    output = page.locator('[data-testid="stCode"] code').first.inner_text()
    assert output.startswith(prompt)
    assert len(output) > len(prompt)
    screenshot(page, "playground", readme=True)


def x_range(page: Page, chart: str) -> list[float]:
    return on_chart(page, chart, "return el._fullLayout.xaxis.range;")


def wait_for_autorange(page: Page, chart: str, autorange: bool) -> None:
    """Wait until ``chart`` is drawn with (or without) plotly's own x-autorange: the
    sign that the figure of the page's new state has replaced the old one."""
    wait_for_chart(page, chart, f"el._fullLayout.xaxis.autorange === {str(autorange).lower()}")


# What the browser does when the user switches to another tab (and back): the Page
# Visibility API reports it; headless chromium never hides a page on its own.
SET_VISIBILITY_JS = """(state) => {
    Object.defineProperty(document, 'visibilityState', {value: state, configurable: true});
    document.dispatchEvent(new Event('visibilitychange'));
}"""


def assert_no_script_runs(page: Page, for_ms: int) -> None:
    """No rerun of any kind (page or fragment) starts within ``for_ms``."""
    before = page.evaluate("window.__gptdashRuns")
    page.wait_for_timeout(for_ms)
    after = page.evaluate("window.__gptdashRuns")
    assert after == before, f"{after - before} script run(s) in {for_ms} ms"


def test_live_zoom_survives_refreshes_unless_following_and_hidden_or_ended_costs_none(
        page: Page) -> None:
    """One run watched three ways (one run: each start costs the box a form, a run and a
    page): zoomed with Follow live off, in a hidden tab, and once it has ended."""
    set_field(page, "max_steps", "20000")
    set_field(page, "batch_size", "8")
    set_field(page, "Run name", "zoom")
    start_training(page)
    wait_for_points(page, 40)
    wait_for_autorange(page, "Loss", True)

    # Follow live off: the charts hold still, so a zoom must survive the refreshes.
    follow = page.get_by_role("switch", name="Follow live")
    rerun(page, lambda: follow.click(force=True))
    page.get_by_text("Step range").wait_for()
    assert not follow.is_checked()
    wait_for_autorange(page, "Loss", False)  # the frozen figure, on the step-range slider
    full = x_range(page, "Loss")
    zoom = [round(full[1] * 0.2, 3), round(full[1] * 0.5, 3)]
    # What a mouse drag on the chart does, without depending on pixel positions.
    on_chart(page, "Loss", f"return Plotly.relayout(el, {{'xaxis.range': {zoom}}})"
                           ".then(() => true);")
    before = page.evaluate("window.__gptdashRuns")
    page.wait_for_timeout(5_000)
    page.wait_for_function(f"() => window.__gptdashRuns >= {before} + 2")  # >= 2 refreshes
    wait_rendered(page)
    wait_for_status(page, "running", timeout_ms=10_000)
    kept = x_range(page, "Loss")
    assert kept == pytest.approx(zoom), f"zoom {zoom} became {kept} across refreshes"
    screenshot(page, "live_zoomed")

    # Follow live on: the x-axis moves with the new steps.
    rerun(page, lambda: follow.click(force=True))
    assert follow.is_checked()
    wait_for_autorange(page, "Loss", True)
    start = x_range(page, "Loss")
    wait_for_points(page, wait_for_points(page, 0) + 20)
    wait_rendered(page)
    moved = x_range(page, "Loss")
    assert moved[1] > start[1] > zoom[1], f"range {start} -> {moved} did not follow new data"

    # Hidden: one rerun drops the timers (the Live page's and the sidebar's), then nothing.
    shown = wait_for_points(page, 0)
    rerun(page, lambda: page.evaluate(SET_VISIBILITY_JS, "hidden"))
    assert_no_script_runs(page, 6_000)  # three Live ticks and a sidebar tick would fall here

    # Shown again: the page catches up at once and goes on refreshing.
    rerun(page, lambda: page.evaluate(SET_VISIBILITY_JS, "visible"))
    caught_up = wait_for_points(page, shown)
    wait_for_points(page, caught_up)
    wait_for_status(page, "running", timeout_ms=10_000)

    # A run that ends while watched stops the refreshes too.
    page.get_by_role("button", name="Stop this run").click()
    wait_for_status(page, "stopped")
    page.wait_for_timeout(1_000)  # the one rerun that drops the timers
    wait_rendered(page)
    assert_no_script_runs(page, 6_000)
