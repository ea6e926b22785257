"""The pages while PostgreSQL is stopped, in headless chromium against a real `gptdash serve`
(issue 24): one error box, never a traceback, and the page back by itself once the database
answers, with no restart of the server and no reload of the page.

The server is this module's own, so halting it disturbs no other test. One run reads as
training (claimed by this test process, which stays alive), so Live and the sidebar keep
their timed refreshes going through the outage.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from browser_support import ARTIFACTS, new_context, streamlit_process, wait_rendered
from playwright.sync_api import Browser, Page

from gptcore.config import preset
from jobs.recovery import this_host, worker_id
from storage.store import RunStore
from tests.postgres_support import PostgresServer, start_server

pytestmark = pytest.mark.browser

ERROR_BOX = '[data-testid="stAlertContentError"]'
LOG = ARTIFACTS / "streamlit-outage.log"
# A fragment ticks every 2 s; the page looks for the database every 2 s while it is away.
SEEN_WITHIN_S = 30.0


@dataclass
class Dashboard:
    postgres: PostgresServer
    url: str
    run_id: int


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Dashboard]:
    from storage.migrate import upgrade
    from storage.schema import make_engine

    postgres = start_server()
    try:
        db_url = postgres.url(postgres.create_database())
        engine = make_engine(db_url)
        upgrade(engine)
        engine.dispose()
        store = RunStore(db_url)
        run_id = store.create_run("through-the-outage", preset("tiny").to_dict(),
                                  status="queued", max_steps=1000)
        # Owned by this live process: no worker claims it, nobody marks it interrupted.
        store.claim_run(run_id, worker_id(), host=this_host(), pid=os.getpid())
        store.log_metrics(run_id, [("train/loss", step, 5.0 - step / 100, time.time())
                                   for step in range(0, 50, 5)])
        store.close()
        home = tmp_path_factory.mktemp("outage_home")
        with streamlit_process(home, LOG, db_url=db_url) as (_, url):
            yield Dashboard(postgres, url, run_id)
    finally:
        postgres.stop()


@pytest.fixture
def page(browser: Browser, dashboard: Dashboard) -> Iterator[Page]:
    context = new_context(browser)
    yield context.new_page()
    context.close()


def _wait_until(check: Callable[[], bool], what: str, timeout_s: float = SEEN_WITHIN_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout_s:.0f} s: {what}"
        time.sleep(0.25)


def _errors(page: Page) -> list[str]:
    return page.locator(ERROR_BOX).all_inner_texts()


def _no_traceback(page: Page) -> None:
    text = page.locator("body").inner_text()
    assert "Traceback" not in text and 'File "' not in text, text
    assert page.locator('[data-testid="stException"]').count() == 0


def _log_count(phrase: str) -> int:
    return LOG.read_text().count(phrase)


def _through_an_outage(page: Page, postgres: PostgresServer, *, reload: bool,
                       back: Callable[[], bool]) -> None:
    """Halt the database: one error box, no traceback, for several ticks; start it again:
    the box goes and ``back`` holds, with no reload. The serve log says it in two lines."""
    away, returned = _log_count("database unreachable since"), _log_count("database back after")
    postgres.halt()
    try:
        if reload:  # the user presses F5 while it is away
            page.reload()
        _wait_until(lambda: len(_errors(page)) == 1, "one error box while the database is away")
        for _ in range(4):  # several of the page's own looks later: still one box
            time.sleep(1.5)
            assert len(_errors(page)) == 1, _errors(page)
            _no_traceback(page)
        assert "PostgreSQL is running" in _errors(page)[0]
    finally:
        postgres.resume()
    _wait_until(lambda: not _errors(page) and back(), "the page back by itself")
    _no_traceback(page)
    # The serve's worker said the outage in one line and its end in another.
    _wait_until(lambda: _log_count("database back after") == returned + 1,
                "the worker's 'database back' line")
    assert _log_count("database unreachable since") == away + 1
    assert "Traceback" not in LOG.read_text()


def test_live_shows_one_error_box_and_recovers_without_a_reload(page: Page,
                                                                dashboard: Dashboard):
    page.goto(f"{dashboard.url}/live?run={dashboard.run_id}")
    wait_rendered(page)
    page.get_by_text("train-loss points shown").wait_for()
    assert not _errors(page)

    def charts_back() -> bool:
        return page.get_by_text("train-loss points shown").count() == 1

    _through_an_outage(page, dashboard.postgres, reload=False, back=charts_back)


def test_runs_shows_one_error_box_after_a_refresh_and_recovers(page: Page,
                                                               dashboard: Dashboard):
    page.goto(f"{dashboard.url}/runs")
    wait_rendered(page)
    page.get_by_text("through-the-outage").first.wait_for()

    def table_back() -> bool:
        return page.get_by_role("heading", name="Runs", level=1).count() == 1 and \
            page.locator('[data-testid="stDataFrame"]').count() >= 1

    _through_an_outage(page, dashboard.postgres, reload=True, back=table_back)
