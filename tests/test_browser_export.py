"""Models in and out in the browser (issue 28): the Runs page's Export writes a folder that
transformers loads and downloads it as a zip; New run starts from a GPT-2 folder, taking
its shape. One server on a home with one tiny trained run (trained before it starts)."""

from __future__ import annotations

import zipfile
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
from hf_support import make_pretrained, micro, write_corpus
from playwright.sync_api import Browser, Page
from transformers import AutoModelForCausalLM

from jobs import runner
from jobs.manager import claim_here
from storage.store import RunStore

pytestmark = pytest.mark.browser

ROW_PX = 35  # glide-data-grid's row (and header) height in Streamlit's dataframe


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("export_home")


@pytest.fixture(scope="module")
def run_id(home: Path) -> int:
    """A tiny run trained to the end in this process, before the server starts."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GPTDASH_HOME", str(home))
        mp.delenv("GPTDASH_DB_URL", raising=False)
        store = RunStore()
        try:
            created = runner.create_run(store, micro(corpus=str(write_corpus(home / "c.txt"))),
                                        name="to-export")
            claim_here(store, created)
            assert runner.execute_run(store, created).status == "completed"
        finally:
            store.close()
    return created


@pytest.fixture(scope="module")
def server(home: Path, run_id: int) -> Iterator[str]:
    with streamlit_server(home, ARTIFACTS / "streamlit-export.log") as url:
        yield url


@pytest.fixture
def page(browser: Browser, server: str) -> Iterator[Page]:
    context = new_context(browser)
    off_host = OffHostRequests(context)
    yield context.new_page()
    context.close()
    assert not off_host.urls, f"the app reached outside 127.0.0.1: {off_host.urls}"


def test_export_button_writes_a_folder_transformers_loads_and_a_zip(
        page: Page, server: str, home: Path, run_id: int) -> None:
    page.goto(f"{server}/runs")
    wait_rendered(page)
    grid = page.locator('[data-testid="stDataFrame"]').first
    box = grid.bounding_box()
    assert box is not None
    rerun(page, lambda: page.mouse.click(box["x"] + 16, box["y"] + ROW_PX * 1.5))
    page.get_by_role("heading", name="1 selected").wait_for()
    page.get_by_text("Export for Hugging Face transformers").click()
    rerun(page, lambda: page.get_by_role("button", name="Export to the home folder").click())
    folder = home / "exports" / f"run-{run_id}-best"
    page.get_by_text(f"Exported to {folder}").wait_for()
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.n_layer == 2 and model.config.vocab_size == 256

    with page.expect_download() as download:
        page.get_by_role("button", name="Download as a zip").click()
    assert download.value.suggested_filename == f"run-{run_id}-best.zip"
    with zipfile.ZipFile(download.value.path()) as archive:
        names = set(archive.namelist())
    assert {f"run-{run_id}-best/{name}" for name in ("config.json", "model.safetensors",
                                                     "vocab.json", "README.md")} <= names


def test_new_run_starts_from_a_gpt2_folder_and_takes_its_shape(
        page: Page, server: str, home: Path) -> None:
    folder = home / "gpt2-tiny"
    make_pretrained(folder)
    page.goto(server)
    wait_rendered(page)
    page.get_by_text("Start from GPT-2 weights").click()
    field = page.get_by_label("Or a folder", exact=True)
    field.fill(str(folder))
    rerun(page, lambda: field.press("Enter"))
    rerun(page, lambda: page.get_by_role("button", name="Use these weights").click())
    note = page.locator('[data-testid="stAlertContentInfo"]').first.inner_text()
    assert "the model's shape comes from" in note and "n_layers" not in note  # both 2
    assert "emb_dim 32 (not 96)" in note and "tokenizer gpt2 (not byte)" in note
    assert page.get_by_label("emb_dim", exact=True).input_value() == "32"
    assert page.get_by_label("context_length", exact=True).input_value() == "32"
    page.get_by_text("Fine-tuning", exact=True).click()
    init_from = page.locator('[data-testid="stSelectbox"]').filter(has_text="init_from")
    assert init_from.locator("input").input_value() == f"hf:{folder}"
    # A shape changed by hand afterwards is named under init_from, and Start waits for it.
    set_field(page, "emb_dim", "64")
    page.get_by_text("emb_dim 32 (not 64); set these to the folder's").wait_for()
    assert page.get_by_role("button", name="Start training").is_disabled()


def test_the_runs_own_live_page_exports_it_too(page: Page, server: str, home: Path,
                                               run_id: int) -> None:
    page.goto(f"{server}/live?run={run_id}")
    wait_rendered(page)
    page.get_by_text("Export for Hugging Face transformers").click()
    page.get_by_text("latest", exact=True).click()
    rerun(page, lambda: page.get_by_role("button", name="Export to the home folder").click())
    folder = home / "exports" / f"run-{run_id}-latest"
    page.get_by_text(f"Exported to {folder}").wait_for()
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.n_layer == 2 and model.config.vocab_size == 256
