"""New run's corpora and epochs in headless chromium: the corpora table (tokenized, being
tokenized, not yet) and the warning before a run that would repeat its data too often.

The home is prepared before the server starts: a JSON Lines corpus tokenized into the
shared cache, a folder not tokenized yet, and a corpus that a live process (this test's)
is "tokenizing", as its progress file says. Nothing trains.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest
from browser_support import (
    ARTIFACTS,
    new_context,
    screenshot,
    set_field,
    streamlit_server,
    wait_rendered,
)
from playwright.sync_api import Browser, Page

from gptcore.tokens import Progress, prepare

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("corpora_home")
    data = root / "data"
    (data / "owt").mkdir(parents=True)
    for i in range(3):
        (data / "owt" / f"part-{i}.txt").write_text(f"Folder document {i}.\n" * 400)
    docs = data / "docs.jsonl"
    docs.write_text("".join(json.dumps({"text": f"Document number {i}. " * 40}) + "\n"
                            for i in range(25)))
    prepare(str(docs), "byte", root / "cache", 0.1)
    big = data / "big.txt"
    big.write_text("A corpus being tokenized.\n" * 2000)
    under_way = root / "cache" / "tokens-0123-gpt2.1-x.tmp"
    under_way.mkdir()
    state = Progress(str(big), "gpt2", 20_000, 52_000, 3_000, 1, time.time() - 5, os.getpid())
    (under_way / "progress.json").write_text(json.dumps(asdict(state)))
    return root


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[str]:
    with streamlit_server(home, ARTIFACTS / "streamlit-corpora.log") as url:
        yield url


@pytest.fixture
def page(browser: Browser, server: str) -> Iterator[Page]:
    context = new_context(browser)
    yield context.new_page()
    context.close()


def test_new_run_lists_corpora_with_their_state_and_warns_of_too_many_epochs(
        page: Page, server: str) -> None:
    page.goto(f"{server}/")
    wait_rendered(page)
    table = page.locator('[data-testid="stTable"]').filter(has_text="documents")
    table.filter(has_text="tokenized: byte").wait_for()
    assert table.locator("th").all_inner_texts() == ["corpus", "state", "size", "documents",
                                                     "tokens", "kind"]
    by_corpus = {row.locator("td").first.inner_text(): row.locator("td").all_inner_texts()
                 for row in table.locator("tbody tr").all()}
    assert list(by_corpus) == ["built-in: Python reference docs", "data/big.txt",
                               "data/docs.jsonl", "data/owt"]
    assert by_corpus["data/docs.jsonl"] == ["data/docs.jsonl", "tokenized: byte", "0.02 MB",
                                            "25", "19.6 k (byte)", "JSON Lines"]
    assert by_corpus["data/big.txt"][1] == "tokenizing 38% (gpt2)"
    assert by_corpus["data/owt"][1] == "not tokenized yet"
    body = page.locator("body")
    assert "put it in" in body.inner_text() and "data" in body.inner_text()
    # The tiny preset on the built-in text: about 2 epochs, no warning.
    assert "819 k tokens trained on, of ~420 k training tokens" in body.inner_text()
    warnings = page.locator('[data-testid="stAlert"]').filter(has_text="repeats its training")
    assert warnings.count() == 0
    set_field(page, "max_steps", "20000")
    warnings.first.wait_for()
    text = warnings.first.inner_text()
    assert "This run repeats its training data ~98 times, more than 4" in text
    assert "Muennighoff et al. 2023" in text
    start = page.get_by_role("button", name="Start training")
    assert start.is_enabled()  # a warning, not a refusal
    screenshot(page, "new_run_corpora")
