"""People's text is shown as typed on every page that shows it (issue 23), in headless
chromium: run and sweep names, tags, notes, prompts and worker names written as Markdown,
LaTeX, Streamlit directives, icons and HTML stay text, fetch nothing and draw no markup;
a bidirectional control in an old row is shown escaped, not obeyed.

One server serves a home whose database is written directly (no training).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_support import (
    ARTIFACTS,
    OffHostRequests,
    new_context,
    rerun,
    set_field,
    streamlit_server,
    wait_rendered,
)
from playwright.sync_api import Browser, Page
from sqlalchemy import update
from sqlalchemy.orm import Session

from gptcore.config import preset
from jobs.recovery import this_host
from storage.schema import Run, Sweep
from storage.status import RunStatus
from storage.store import RunStore
from ui.plain_text import WORD_JOINER

pytestmark = pytest.mark.browser

OFF_HOST = "203.0.113.9"
IMAGE = f"![t](http://{OFF_HOST}/t.png)"
HOSTILE = [IMAGE, "$x^2$", ":red[boom]", ":material/home:", "<b>x</b>", "**bold**"]
NAME = " ".join(HOSTILE)
# Written before names were checked: a right-to-left override that would reverse the rest.
OLD_NAME = NAME + " evil\u202egpj.exe"
SHOWN_NAME = NAME + r" evil\u202egpj.exe"  # as every page should show it
WORKER = "w\u202erker <b>x</b> **bold**"
SHOWN_WORKER = r"w\u202erker <b>x</b> **bold**"

# Markup that any of HOSTILE would make if read as Markdown, LaTeX, a directive, an icon or
# HTML (in the page, or in a Plotly chart's SVG): elements pointing at the off-host address,
# KaTeX, bold text "bold" or "x", red "boom", a Material "home" icon.
MARKUP_JS = """(host) => {
  const found = [];
  for (const el of document.querySelectorAll('*')) {
    for (const attr of el.attributes) {
      if (['src', 'href', 'xlink:href', 'srcset', 'style'].includes(attr.name)
          && attr.value.includes(host)) {
        found.push((el.closest('[data-testid^=st]') ?? el).outerHTML.slice(0, 600));
      }
    }
  }
  if (document.querySelector('.katex, math')) found.push('katex');
  for (const el of document.querySelectorAll('b, strong')) {
    if (/bold|^x$/.test(el.textContent.trim())) found.push(el.outerHTML);
  }
  for (const el of document.querySelectorAll('tspan')) {
    if ((el.getAttribute('style') || '').includes('bold') && /bold|^x$/.test(el.textContent)) {
      found.push(el.outerHTML);
    }
  }
  for (const el of document.querySelectorAll('span[style]')) {
    if (el.textContent === 'boom' || el.textContent === 'home') found.push(el.outerHTML);
  }
  return found;
}"""


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("plain_text_home")


@pytest.fixture(scope="module")
def store(home: Path) -> Iterator[RunStore]:
    """The server's database, written directly."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GPTDASH_HOME", str(home))
        mp.delenv("GPTDASH_DB_URL", raising=False)
        run_store = RunStore()
        yield run_store
        run_store.close()


def finished_run(store: RunStore, name: str, **kwargs) -> int:
    """A completed run with a val-loss curve, a sample and a worker that trained it."""
    run_id = store.create_run(name, preset("tiny").to_dict(), status=RunStatus.COMPLETED,
                              max_steps=100, **kwargs)
    store.log_metrics(run_id, [(key, step, 4.0 / (1 + step / 20), float(step))
                               for step in range(0, 101, 10)
                               for key in ("train/loss", "val/loss")])
    store.log_sample(run_id, 100, NAME, " and so on")
    return run_id


def rename(store: RunStore, table, row_id: int, name: str) -> None:
    """Write ``name`` as a row from before names were checked would hold it."""
    with Session(store.engine) as session, session.begin():
        session.execute(update(table).where(table.id == row_id).values(name=name))


@pytest.fixture(scope="module")
def runs(store: RunStore, home: Path) -> dict[str, int]:
    other = finished_run(store, "plain neighbour")
    sweep_id = store.create_sweep(NAME, {"grids": ["lr=0.001"], "ranges": [], "random": 0,
                                         "seed": 0, "seeds": 0, "params": ["lr"],
                                         "runs": [{"lr": 0.001}]})
    rename(store, Sweep, sweep_id, OLD_NAME)
    finished_run(store, f"{NAME} lr=0.001", sweep_id=sweep_id)
    checkpoint = home / "elsewhere.pt"  # listed by Playground, yet no checkpoint of its own
    checkpoint.write_bytes(b"")
    hostile = finished_run(store, NAME, tags=HOSTILE, notes=NAME)
    store.update_run(hostile, worker=WORKER, checkpoint_path=str(checkpoint))
    rename(store, Run, hostile, OLD_NAME)
    # Training now, as far as the sidebar can tell: a running run, its owner this test.
    training = store.create_run(NAME, preset("tiny").to_dict(), status=RunStatus.RUNNING,
                                max_steps=100)
    store.update_run(training, owner_host=this_host(), owner_pid=os.getpid(), worker=WORKER)
    rename(store, Run, training, OLD_NAME)
    store.register_worker(WORKER, host=this_host(), pid=os.getpid(), device="cpu")
    store.worker_beat(WORKER, status="training", current_run_id=training)
    return {"other": other, "hostile": hostile, "training": training}


@pytest.fixture(scope="module")
def server(home: Path, runs: dict[str, int]) -> Iterator[str]:
    with streamlit_server(home, ARTIFACTS / "streamlit-plain-text.log") as url:
        yield url


@pytest.fixture
def page(browser: Browser, server: str) -> Iterator[Page]:
    context = new_context(browser)
    off_host = OffHostRequests(context)
    yield context.new_page()
    context.close()
    assert not off_host.urls, f"the page fetched from outside 127.0.0.1: {off_host.urls}"


def open_page(page: Page, url: str) -> None:
    page.goto(url)
    wait_rendered(page)


def read(page: Page, selector: str = "body") -> str:
    """What a reader sees (Markdown's URLs carry an invisible word joiner)."""
    return page.locator(selector).first.inner_text().replace(WORD_JOINER, "")


def assert_plain(page: Page, *shown: str) -> None:
    """Each of ``shown`` is on the page as typed, and nothing was read as markup."""
    text = read(page)
    for expected in shown:
        assert expected in text, f"{expected!r} not shown as typed"
    assert "\u202e" not in text, "a right-to-left override reached the page unescaped"
    found = page.evaluate(MARKUP_JS, OFF_HOST)
    assert found == [], found


def grid_texts(page: Page) -> list[str]:
    """The cells of the page's dataframes (drawn on a canvas; their text lives in a grid)."""
    cells = page.locator('[data-testid="stDataFrame"] [role="gridcell"]')
    cells.first.wait_for(state="attached")
    return [t.strip() for t in cells.all_text_contents()]


def test_sidebar_shows_a_training_runs_name_as_typed(page: Page, server: str, store: RunStore,
                                                     runs: dict[str, int]) -> None:
    open_page(page, f"{server}/workers")
    sidebar = page.locator('[data-testid="stSidebar"]')
    sidebar.get_by_text("Training now").wait_for()
    assert f"#{runs['training']} {SHOWN_NAME}" in sidebar.inner_text()
    assert_plain(page)
    # Done training: the other pages see finished runs only.
    store.set_status(runs["training"], RunStatus.COMPLETED)
    store.worker_beat(WORKER, status="idle", current_run_id=None)


def test_workers_page_shows_a_workers_name_escaped(page: Page, server: str) -> None:
    open_page(page, f"{server}/workers")
    assert SHOWN_WORKER in grid_texts(page)
    assert_plain(page)


def test_runs_table_shows_names_and_tags_as_typed(page: Page, server: str) -> None:
    open_page(page, f"{server}/runs")
    cells = grid_texts(page)
    assert SHOWN_NAME in cells and ", ".join(HOSTILE) in cells, cells
    assert_plain(page)


def test_live_page_shows_tags_worker_and_name_as_typed(page: Page, server: str,
                                                       runs: dict[str, int]) -> None:
    open_page(page, f"{server}/live?run={runs['hostile']}")
    page.get_by_text("Tags:").wait_for()
    picker = page.get_by_role("combobox", name="Run", exact=True)
    assert picker.input_value() == f"#{runs['hostile']} {SHOWN_NAME}"
    assert_plain(page, f"Tags: {', '.join(HOSTILE)}", f"by worker {SHOWN_WORKER}",
                 f"{NAME} and so on")


def test_compare_shows_names_as_typed_in_chips_and_the_forecast_table(page: Page,
                                                                     server: str) -> None:
    open_page(page, f"{server}/compare")
    page.get_by_role("heading", name="Forecast final val loss").wait_for()
    assert SHOWN_NAME in read(page, '[data-testid="stTable"]')  # st.table reads Markdown
    assert SHOWN_NAME in read(page, '[data-testid="stMultiSelect"]')
    assert_plain(page)


def test_sweeps_shows_the_sweeps_name_and_a_typed_value_in_an_error_as_typed(
        page: Page, server: str) -> None:
    open_page(page, f"{server}/sweeps")
    picker = page.get_by_role("combobox", name="Sweep", exact=True)
    assert picker.input_value().endswith(SHOWN_NAME)
    set_field(page, "Values 1", IMAGE)  # the first grid row sweeps lr: not a number
    error = read(page, '[data-testid="stAlertContentError"]')
    assert f"not '{IMAGE}'" in error, error
    assert_plain(page)


def test_playground_names_a_run_without_a_checkpoint_as_typed(page: Page, server: str,
                                                              runs: dict[str, int]) -> None:
    open_page(page, f"{server}/playground")
    rerun(page, lambda: page.get_by_role("button", name="Generate").click())
    page.get_by_text("has no checkpoint yet").wait_for()
    assert_plain(page, f"#{runs['hostile']} {SHOWN_NAME} has no checkpoint yet.")
