"""Pages that read well and a Delete you can trust (issue 15), in headless chromium.

One server serves a home with runs written straight into its database (no training),
so each test sets up exactly the runs it needs in a second or so.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_support import (
    ARTIFACTS,
    OffHostRequests,
    new_context,
    rerun,
    screenshot,
    streamlit_server,
    wait_rendered,
)
from playwright.sync_api import Browser, Page

from gptcore.config import preset
from storage.status import RunStatus
from storage.store import RunStore

pytestmark = pytest.mark.browser

ROW_PX = 35  # glide-data-grid's row (and header) height in Streamlit's dataframe


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pages_home")


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[str]:
    with streamlit_server(home, ARTIFACTS / "streamlit-pages.log") as url:
        yield url


@pytest.fixture
def store(home: Path) -> Iterator[RunStore]:
    """The server's database, written directly: runs appear without training."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GPTDASH_HOME", str(home))
        mp.delenv("GPTDASH_DB_URL", raising=False)
        run_store = RunStore()
        yield run_store
        run_store.close()


@pytest.fixture
def page(browser: Browser, server: str) -> Iterator[Page]:
    context = new_context(browser)
    off_host = OffHostRequests(context)
    yield context.new_page()
    context.close()
    assert not off_host.urls, f"the app reached outside 127.0.0.1: {off_host.urls}"


def open_page(page: Page, url: str) -> None:
    page.goto(url)
    wait_rendered(page)


def tick_row(page: Page, row: int) -> None:
    """Tick the selection checkbox of the dataframe's ``row`` (0 = first data row)."""
    grid = page.locator('[data-testid="stDataFrame"]').first
    box = grid.bounding_box()
    assert box is not None
    y = box["y"] + ROW_PX * (row + 1) + ROW_PX / 2
    rerun(page, lambda: page.mouse.click(box["x"] + 16, y))


def test_delete_removes_only_the_ticked_run_then_clears_the_selection(
        page: Page, server: str, store: RunStore) -> None:
    config = preset("tiny").to_dict()
    ids = [store.create_run(f"del-{name}", config, status=RunStatus.COMPLETED, max_steps=10)
           for name in ("a", "b", "c")]
    open_page(page, f"{server}/runs")
    search = page.get_by_role("textbox", name="Search", exact=True)
    search.fill("del-")
    rerun(page, lambda: search.press("Enter"))
    # Newest first: del-c, del-b, del-a. Tick the middle one.
    tick_row(page, 1)
    page.get_by_role("heading", name="1 selected").wait_for()
    rerun(page, lambda: page.get_by_role("button", name="Delete").click())
    confirm = page.get_by_role("button", name="Yes, delete")
    assert f"#{ids[1]} del-b" in page.get_by_text("with their metrics").inner_text()
    rerun(page, lambda: confirm.click())

    left = {r.id for r in store.list_runs()}
    assert ids[1] not in left, "the ticked run was not deleted"
    assert {ids[0], ids[2]} <= left, "a run the user did not tick was deleted"
    # The selection is empty (no stale row pointing at another run) and the popover gone.
    assert page.get_by_role("heading", name="selected").count() == 0
    assert page.get_by_role("button", name="Yes, delete").count() == 0
    assert page.get_by_role("button", name="Delete").count() == 0
    screenshot(page, "runs_after_delete")
