"""The Plan page in headless chromium against a real server: runs of five sizes written
straight into its database (final losses from a known law, no training), a budget typed
in, the recommendation and the three figures drawn."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_support import (
    ARTIFACTS,
    new_context,
    on_chart,
    rerun,
    screenshot,
    set_field,
    streamlit_server,
    wait_for_chart,
    wait_rendered,
)
from playwright.sync_api import Browser
from test_jobs_planning import seed_many

from storage.store import RunStore

pytestmark = pytest.mark.browser

CHARTS = ("IsoFLOP curves: val loss against model size",
          "Optimal model size and tokens against compute", "Tokens per parameter at the optimum")


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("plan_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GPTDASH_HOME", str(root))
        mp.delenv("GPTDASH_DB_URL", raising=False)
        store = RunStore()
        seed_many(store, noise=0.005)
        store.close()
    return root


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[str]:
    with streamlit_server(home, ARTIFACTS / "streamlit-plan.log") as url:
        yield url


def test_plan_page_recommends_a_run_for_a_flops_budget_and_draws_the_law(
        browser: Browser, server: str) -> None:
    context = new_context(browser)
    page = context.new_page()
    page.goto(f"{server}/plan")
    wait_rendered(page)
    page.get_by_role("heading", name="Plan", level=1).wait_for()
    # Runs that measured their speed: a time budget on cpu is the first choice.
    page.get_by_text("15 run(s) of 5 model size(s)").first.wait_for()
    rerun(page, lambda: page.get_by_text("FLOPs", exact=True).first.click())
    set_field(page, "Budget in FLOPs", "2e14")
    for title in CHARTS:
        wait_for_chart(page, title, "el.data.length > 0")
    # The law's three IsoFLOP curves, and the runs beside them.
    names = on_chart(page, CHARTS[0], "return el.data.map((t) => t.name);")
    assert "your runs" in names and sum((n or "").endswith("FLOPs") for n in names) == 3, names
    main = page.locator('[data-testid="stMain"]').inner_text()
    assert "Recommended runs" in main and "Fitted exponents" in main
    assert page.get_by_role("button", name="Queue the recommended run").count() == 1
    assert page.locator('[data-testid="stAlertContentError"]').count() == 0
    screenshot(page, "plan")
    context.close()
