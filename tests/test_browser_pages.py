"""Pages that read well and a Delete you can trust (issue 15), in headless chromium.

One server serves a home with runs written straight into its database (no training),
so each test sets up exactly the runs it needs in a second or so.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from browser_support import (
    ARTIFACTS,
    OffHostRequests,
    new_context,
    on_chart,
    rerun,
    screenshot,
    set_field,
    streamlit_server,
    wait_rendered,
)
from playwright.sync_api import Browser, Page

from gptcore.config import preset
from jobs.serve import PASSWORD_ENV
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


def test_a_delete_confirmed_after_the_run_was_resumed_says_it_was_refused(
        page: Page, server: str, store: RunStore) -> None:
    run_id = store.create_run("del-resumed", preset("tiny").to_dict(),
                              status=RunStatus.STOPPED, max_steps=10)
    open_page(page, f"{server}/runs")
    search = page.get_by_role("textbox", name="Search", exact=True)
    search.fill("del-resumed")
    rerun(page, lambda: search.press("Enter"))
    tick_row(page, 0)
    rerun(page, lambda: page.get_by_role("button", name="Delete").click())
    confirm = page.get_by_role("button", name="Yes, delete")
    # Resumed from elsewhere while the confirmation is open (no trainer: nothing moves).
    store.update_run(run_id, status=RunStatus.RUNNING)
    rerun(page, lambda: confirm.click())

    assert store.get_run(run_id).status == RunStatus.RUNNING  # not deleted
    # The refusal stays on the page: it used to be wiped by a rerun, so the click looked
    # like a delete that did nothing.
    page.get_by_text(f"run {run_id} is running: stop it").wait_for(timeout=5_000)
    screenshot(page, "runs_delete_refused")
    store.update_run(run_id, status=RunStatus.STOPPED)


@pytest.fixture(scope="module")
def locked_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server that asks for a password (GPTDASH_PASSWORD), on its own home."""
    home = tmp_path_factory.mktemp("locked_home")
    with ExitStack() as stack:
        # The environment only while the server starts (it copies it), so a server another
        # test starts later has no password.
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("GPTDASH_HOME", str(home))
            mp.delenv("GPTDASH_DB_URL", raising=False)
            run_store = RunStore()
            for name in ("first", "second", "third"):
                run_store.create_run(name, preset("tiny").to_dict(),
                                     status=RunStatus.COMPLETED, max_steps=10)
            run_store.close()
            mp.setenv(PASSWORD_ENV, "open sesame")
            url = stack.enter_context(streamlit_server(home, ARTIFACTS / "streamlit-locked.log"))
        yield url


def test_a_deep_link_survives_the_password_prompt(browser: Browser, locked_server: str) -> None:
    context = new_context(browser)
    page = context.new_page()
    try:
        open_page(page, f"{locked_server}/live?run=2")
        field = page.get_by_label("Password", exact=True)
        field.fill("open sesame")
        rerun(page, lambda: field.press("Enter"))
        page.get_by_role("heading", name="Live run", level=1).wait_for()
        assert "/live" in page.url and "run=2" in page.url
        run_picker = page.get_by_role("combobox", name="Run", exact=True)
        assert run_picker.input_value() == "#2 second"
    finally:
        context.close()


def test_every_bad_field_says_so_at_once_and_the_grid_stays_in_line(
        page: Page, server: str) -> None:
    open_page(page, f"{server}/")
    set_field(page, "lr", "abc")
    set_field(page, "emb_dim", "90")  # tiny has 4 heads
    errors = page.locator('[data-testid="stAlertContentError"]').all_inner_texts()
    assert any("lr must be a number" in e for e in errors), errors
    assert any("not divisible by n_heads" in e for e in errors), errors  # not hidden by lr
    # lr's message sits under lr (middle column); the next row must stay level.
    tops = {name: page.get_by_label(name, exact=True).bounding_box()["y"]
            for name in ("weight_decay", "beta1", "beta2")}
    assert len(set(tops.values())) == 1, f"fields of one row out of line: {tops}"
    screenshot(page, "new_run_two_problems")


TICKS_JS = ("return [...el.querySelectorAll('.xtick text, .ytick text')]"
            ".map((t) => t.textContent);")


def test_a_run_with_one_point_has_sensible_axes_and_says_when_a_chart_is_empty(
        page: Page, server: str, store: RunStore) -> None:
    run_id = store.create_run("one-point", preset("tiny").to_dict(), status=RunStatus.STOPPED,
                              max_steps=60)
    store.log_metrics(run_id, [("train/loss", 0, 5.5123, 0.0),
                               ("tokens_per_sec", 0, 48134.5, 0.0)])
    store.set_status(run_id, RunStatus.STOPPED, error="stopped by the user")
    open_page(page, f"{server}/live?run={run_id}")
    for chart in ("Loss", "Tokens per second"):
        x_low, x_high = on_chart(page, chart, "return el._fullLayout.xaxis.range;")
        y_low, y_high = on_chart(page, chart, "return el._fullLayout.yaxis.range;")
        # Whole steps from 0, padded by less than a step so a marker at 0 is drawn whole.
        assert -0.5 <= x_low <= 0 and x_high >= 5, f"{chart}: x from {x_low} to {x_high}"
        assert y_low > 0, f"{chart}: y from {y_low} to {y_high}"
        for tick in on_chart(page, chart, TICKS_JS):
            assert not re.search(r"\d,\d{3}\.\d|\.\d{3,}k", tick), f"{chart}: tick {tick!r}"
    assert on_chart(page, "Gradient norm", "return el._fullLayout.annotations[0].text;") == (
        "No data yet")
    box = page.locator('[data-testid="stAlert"]').filter(has_text="Why it ended")
    assert "stopped by the user" in box.inner_text()  # the reason inside the box
    screenshot(page, "live_one_point")


def test_a_corpus_uploaded_again_under_its_name_with_other_text_keeps_both(
        page: Page, server: str, home: Path) -> None:
    first, second = b"The text a run trained on.\n" * 300, b"Other text, same name.\n" * 50
    open_page(page, f"{server}/")
    uploader = page.locator('[data-testid="stFileUploader"]').filter(
        has_text="Upload a corpus file").locator('input[type="file"]')
    for raw in (first, second):
        rerun(page, lambda raw=raw: uploader.set_input_files(
            files=[{"name": "big.txt", "mimeType": "text/plain", "buffer": raw}]))
    note = page.locator('[data-testid="stAlert"]').filter(has_text="already holds other text")
    note.wait_for()
    assert "this upload is uploads/big-2.txt" in note.inner_text()
    assert (home / "uploads" / "big.txt").read_bytes() == first  # never overwritten
    assert (home / "uploads" / "big-2.txt").read_bytes() == second
    chosen = page.get_by_role("combobox", name="corpus").input_value()
    assert chosen.startswith("uploads/big-2.txt"), chosen  # the form takes the new one
