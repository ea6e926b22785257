"""Seed groups on Compare and a forecast that turns calibrated on Live (issue 17), in
headless chromium against a real server.

The runs are written straight into the server's database (no training): val-loss curves
that follow the annealing law (``test_calibration.law``), so forecasts fit as they would
on real runs, and train-loss curves a little below them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from browser_support import (
    ARTIFACTS,
    new_context,
    on_chart,
    rerun,
    streamlit_server,
    wait_for_chart,
    wait_rendered,
)
from playwright.sync_api import Browser, Page
from test_calibration import CFG, law

from gptcore.config import TrainConfig, apply_overrides
from gptcore.metric_keys import TRAIN_LOSS, VAL_LOSS
from storage.status import RunStatus
from storage.store import RunStore

pytestmark = pytest.mark.browser

COMPARE_CHART = "val/loss"
# Repeats of one experiment: another batch than CFG's, so no forecast family of CFG's.
SEEDED = apply_overrides(CFG, {"lr": 3e-3, "min_lr": 3e-4, "batch_size": 16})
SEEDS = {1: 0.0, 2: 0.07, 3: -0.06}  # seed -> how far its curve sits from the law's
BAND_JS = "el.data.some((t) => t.fill === 'tonexty')"
# Text cut short: an element that ends its overflow with an ellipsis, and overflows.
CUT_JS = ("(box) => [box, ...box.querySelectorAll('*')].filter((e) => "
          "getComputedStyle(e).textOverflow === 'ellipsis' && e.scrollWidth > e.clientWidth)"
          ".map((e) => e.textContent)")
SHOWN_JS = "return el.data.filter((t) => t.showlegend !== false).map((t) => t.name);"


def curves(cfg: TrainConfig, upto: int, *, level: float = 2.0, seed: int = 0
           ) -> list[tuple[str, int, float, float]]:
    """``law``'s val-loss curve for ``cfg`` to step ``upto``, with a little noise, and a
    train-loss curve just below it; wall times one second a step."""
    noise = np.random.default_rng(seed).normal(0.0, 0.008, size=(2, upto))
    val = [(key, step, value + noise[0, i], float(step))
           for i, (key, step, value, _) in enumerate(law(cfg, upto, level))]
    train = [(TRAIN_LOSS, step, value - 0.05 + noise[1, i], float(step))
             for i, (_, step, value, _) in enumerate(val)]
    return val + train


def add_run(store: RunStore, name: str, cfg: TrainConfig, upto: int, *, status: RunStatus,
            level: float = 2.0) -> int:
    """A run of ``cfg`` with ``curves`` to step ``upto``, left at ``status``."""
    run_id = store.create_run(name, cfg.to_dict(), status=RunStatus.RUNNING,
                              max_steps=cfg.max_steps)
    rows = curves(cfg, upto, level=level, seed=run_id)
    store.log_metrics(run_id, rows)
    store.update_run(run_id, last_step=upto,
                     best_val_loss=min(v for k, _, v, _ in rows if k == VAL_LOSS),
                     last_train_loss=rows[-1][2])
    if status != RunStatus.RUNNING:
        store.set_status(run_id, status)
    return run_id


def add_seed_group(store: RunStore, cfg: TrainConfig = SEEDED) -> list[int]:
    """Three completed runs of ``cfg`` that differ only in seed ("lr=0.003 seed=1", ...)."""
    return [add_run(store, f"lr={cfg.lr:g} seed={seed}", apply_overrides(cfg, {"seed": seed}),
                    cfg.max_steps, status=RunStatus.COMPLETED, level=2.0 + offset)
            for seed, offset in SEEDS.items()]


def add_relative(store: RunStore, of: TrainConfig, name: str, **overrides) -> int:
    """A completed run of ``of``'s forecast family (another schedule, lr or seed)."""
    cfg = apply_overrides(of, {"schedule": "wsd", "max_steps": of.max_steps // 2, **overrides})
    return add_run(store, name, cfg, cfg.max_steps, status=RunStatus.COMPLETED, level=2.05)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("forecast_home")


@pytest.fixture(scope="module")
def server(home: Path) -> Iterator[str]:
    with streamlit_server(home, ARTIFACTS / "streamlit-forecast.log") as url:
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
    yield context.new_page()
    context.close()


def open_page(page: Page, url: str) -> None:
    page.goto(url)
    wait_rendered(page)


def assert_no_error(page: Page) -> None:
    errors = page.locator('[data-testid="stAlertContentError"]')
    assert errors.count() == 0, f"error on {page.url}: {errors.all_inner_texts()}"


def choose_runs(page: Page, labels: Sequence[str]) -> None:
    """Make the Compare multiselect hold exactly ``labels``."""
    picker = page.locator('[data-testid="stMultiSelect"]')
    clear = picker.get_by_role("button", name="Clear all")
    if clear.count():
        rerun(page, lambda: clear.click())
    for label in labels:
        picker.locator("input").click()
        rerun(page, lambda label=label: page.get_by_role("option", name=label, exact=True).click())
    page.keyboard.press("Escape")


def test_compare_draws_three_seeds_as_one_mean_line_in_a_band(
        page: Page, server: str, store: RunStore) -> None:
    ids = add_seed_group(store)
    names = [f"lr=0.003 seed={seed}" for seed in SEEDS]
    open_page(page, f"{server}/compare")
    choose_runs(page, [f"#{i} {name}" for i, name in zip(ids, names, strict=True)])
    wait_for_chart(page, COMPARE_CHART, f"el.data.length === 3 && !({BAND_JS})")
    page.get_by_text("1 group(s) of runs that differ only in seed").wait_for()

    group = page.locator('[data-testid="stCheckbox"]').filter(has_text="group seeds")
    cut = group.evaluate(CUT_JS)
    assert not cut, f"the checkbox's label is cut short: {cut}"
    rerun(page, lambda: group.click())
    assert group.get_by_role("checkbox").is_checked()
    wait_for_chart(page, COMPARE_CHART, BAND_JS)
    shown = on_chart(page, COMPARE_CHART, SHOWN_JS)
    assert shown == ["lr=0.003 (mean of 3 seeds ± std)"], shown
    fills = on_chart(page, COMPARE_CHART, "return el.data.map((t) => t.fill ?? null);")
    assert fills.count("tonexty") == 1, fills
    # The band spans the seeds: mean ± std lies between the lowest and highest curve.
    band = on_chart(page, COMPARE_CHART, "const [up, low, mean] = el._fullData;"
                                         "return [up.y[5], low.y[5], mean.y[5]];")
    assert band[1] < band[2] < band[0], band
    assert_no_error(page)

    rerun(page, lambda: group.click())
    wait_for_chart(page, COMPARE_CHART, f"!({BAND_JS})")
    assert on_chart(page, COMPARE_CHART, SHOWN_JS) == names
    assert_no_error(page)


def test_live_forecast_turns_calibrated_once_a_relative_finishes(
        page: Page, server: str, store: RunStore) -> None:
    # A quarter through a cosine run: ten evaluations, no finished relative.
    run_id = add_run(store, "cosine lr=0.01", CFG, 100, status=RunStatus.RUNNING)
    open_page(page, f"{server}/live?run={run_id}")
    page.get_by_text("uncalibrated: no finished relative yet").first.wait_for()
    assert page.get_by_role("button", name="Queue a calibration run").count() == 1
    wait_for_chart(page, "Loss", "el.data.some((t) => t.name === 'forecast band')")

    add_relative(store, CFG, "wsd lr=0.006", lr=6e-3, seed=7)
    store.heartbeat(run_id)  # its trainer is alive: the server's worker leaves it running
    open_page(page, f"{server}/live?run={run_id}")
    page.get_by_text("calibrated on 1 finished relative").first.wait_for()
    main = page.locator('[data-testid="stMain"]').inner_text()
    assert "uncalibrated" not in main
    assert page.get_by_role("button", name="Queue a calibration run").count() == 0
    wait_for_chart(page, "Loss", "el.data.some((t) => t.name === 'forecast band')")
    assert_no_error(page)
