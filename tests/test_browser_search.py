"""A search end to end in headless chromium: `gptdash serve`'s worker asks the study for
each trial and trains it, and the Sweeps page draws the search's best against trials, its
trials across the settings and its Pareto front."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser_support import (
    ARTIFACTS,
    assert_no_exception,
    goto_page,
    launch_chromium,
    new_context,
    on_chart,
    readme_server,
    user_home,
    wait_rendered,
)
from playwright.sync_api import sync_playwright
from test_jobs import micro

from jobs.search import plan_search, submit_search
from storage.store import RunStore

pytestmark = pytest.mark.browser

SEARCH_TIMEOUT_MS = 240_000


def test_a_two_objective_search_trains_and_draws_its_front(tmp_path: Path) -> None:
    home = user_home(tmp_path)
    store = RunStore(f"sqlite:///{home / 'gptdash.db'}")
    plan = plan_search(micro(max_steps=10), ["lr=1e-3:3e-2:log"], ["n_layers=1,2"], trials=3,
                       objectives="loss,flops")
    submit_search(store, plan, name="front")  # its first trial; the worker asks the rest
    store.close()
    with (readme_server(home, ARTIFACTS / "streamlit-search.log") as url,
          sync_playwright() as playwright):
        browser = launch_chromium(playwright)
        context = new_context(browser)
        page = context.new_page()
        page.goto(f"{url}/")
        wait_rendered(page)
        goto_page(page, "Sweeps", "/sweeps")
        page.get_by_text("3 complete of 3 trials").wait_for(timeout=SEARCH_TIMEOUT_MS)
        wait_rendered(page)
        best = on_chart(page, "Best final val loss against trials",
                        "return el._fullData.map((t) => [t.name, t._length]);")
        assert dict(best) == {"trial": 3, "best so far": 3}
        front = on_chart(page, "Pareto front: final val loss against training FLOPs",
                         "return el._fullData.map((t) => [t.name, t._length]);")
        assert sum(n for _, n in front) == 3 and dict(front)["Pareto front"] >= 1
        on_chart(page, "Trials across the settings", "return el._fullData.length;")
        assert_no_exception(page)
        context.close()
        browser.close()
