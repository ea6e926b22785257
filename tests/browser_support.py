"""Helpers for the browser tests: a real `gptdash serve` (the pages' server and a training
worker) and headless chromium.

A page has finished rendering when the app says its script is not running and no
widget still shows its loading skeleton; text on the page alone can be stale.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from urllib.parse import urlsplit

from playwright.sync_api import Browser, BrowserContext, Page, Playwright, Request
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
README_SCREENSHOTS = REPO / "docs" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]
VIEWPORT = {"width": 1400, "height": 900}
RENDER_TIMEOUT_MS = 90_000

_RENDERED_JS = """() => !!document.querySelector(
    '[data-testid="stApp"][data-test-script-state="notRunning"]')
    && !document.querySelector('[data-testid="stSkeleton"]')"""
# Counts script runs (full reruns and fragment reruns) as they start, so a test can wait
# for the rerun its own click caused instead of guessing how long it takes to begin.
_COUNT_RUNS_JS = """
window.__gptdashRuns = 0;
new MutationObserver((changes) => {
  for (const change of changes) {
    if (change.target.getAttribute('data-test-script-state') === 'running') {
      window.__gptdashRuns += 1;
    }
  }
}).observe(document, {attributes: true, subtree: true,
                      attributeFilter: ['data-test-script-state']});
"""
_POINTS_RE = re.compile(r"([\d,]+) train-loss points shown")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def streamlit_process(home: Path, log_path: Path, *, prefix: Sequence[str] = (),
                      db_url: str | None = None) -> Iterator[tuple[subprocess.Popen, str]]:
    """Run ``gptdash serve`` on a free local port with ``home`` as GPTDASH_HOME: the pages'
    Streamlit server and a training worker beside it, as a user runs the dashboard.

    ``prefix`` goes before the command (``taskset -c 0`` pins it and its children to a
    core; taskset execs, so the process is still the supervisor). Yields the supervisor's
    process and the base URL once the server answers its health check; stops it after
    (the worker stops its run with a checkpoint first). ``db_url`` is its GPTDASH_DB_URL
    (default: none, the home folder's SQLite file).
    """
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "GPTDASH_DB_URL"}
    if db_url is not None:
        env["GPTDASH_DB_URL"] = db_url
    # One torch thread: on a small machine shared with the browser, spinning
    # intra-op threads make every training step many times slower.
    env.update(GPTDASH_HOME=str(home), OMP_NUM_THREADS="1")
    cmd = [*prefix, str(REPO / ".venv" / "bin" / "python"), "-m", "jobs", "serve",
           "--port", str(port), "--address", "127.0.0.1"]
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_health(url, proc, log_path)
        yield proc, url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def streamlit_server(home: Path, log_path: Path) -> Iterator[str]:
    """The base URL of a ``streamlit_process`` (see there)."""
    with streamlit_process(home, log_path) as (_, url):
        yield url


def _wait_for_health(url: str, proc: subprocess.Popen, log_path: Path,
                     timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"gptdash serve exited with {proc.returncode}:\n"
                               f"{log_path.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as response:
                if response.read() == b"ok":
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"gptdash serve did not answer within {timeout_s:.0f} s:\n"
                       f"{log_path.read_text()[-3000:]}")


def launch_chromium(playwright: Playwright) -> Browser:
    """The system chromium, headless. A missing chromium is a failure, never a skip."""
    assert Path(CHROMIUM).is_file(), (
        f"chromium not found at {CHROMIUM}: install it (apt-get install chromium); "
        "the browser tests need it")
    return playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


class OffHostRequests:
    """Records every request a browser context makes to anything but 127.0.0.1."""

    def __init__(self, context: BrowserContext) -> None:
        self.urls: list[str] = []
        context.on("request", self._seen)

    def _seen(self, request: Request) -> None:
        parts = urlsplit(request.url)
        if parts.scheme in ("data", "blob", "about"):
            return
        if parts.hostname != "127.0.0.1":
            self.urls.append(request.url)


def new_context(browser: Browser, **options) -> BrowserContext:
    """A browser context that counts script runs (``rerun``); ``options`` go to
    playwright's ``new_context`` (``ignore_https_errors`` for a self-signed certificate)."""
    context = browser.new_context(viewport=VIEWPORT, **options)
    context.add_init_script(_COUNT_RUNS_JS)
    return context


def wait_rendered(page: Page, timeout_ms: int = RENDER_TIMEOUT_MS) -> None:
    """Wait until the script is not running and no skeleton remains, then check for errors."""
    page.wait_for_function(_RENDERED_JS, timeout=timeout_ms)
    assert_no_exception(page)


def assert_no_exception(page: Page) -> None:
    boxes = page.locator('[data-testid="stException"]')
    if boxes.count():
        texts = "\n---\n".join(boxes.all_inner_texts())
        raise AssertionError(f"exception on {page.url}:\n{texts}")


def rerun(page: Page, action: Callable[[], object], timeout_ms: int = RENDER_TIMEOUT_MS) -> None:
    """Do ``action`` (a click, an Enter) and wait for the script run it starts to finish."""
    before = page.evaluate("window.__gptdashRuns")
    action()
    try:
        page.wait_for_function(f"() => window.__gptdashRuns > {before}", timeout=10_000)
    except PlaywrightTimeoutError:
        pass  # a run quick enough to start and end within one frame leaves no trace
    wait_rendered(page, timeout_ms)


def set_field(page: Page, label: str, value: str) -> None:
    """Type into a text or number input (found by its label) and commit it with Enter."""
    field = page.get_by_label(label, exact=True)
    field.fill(value)
    rerun(page, lambda: field.press("Enter"))
    assert field.input_value() == value, f"{label} shows {field.input_value()!r}, not {value!r}"


def goto_page(page: Page, title: str, url_part: str) -> None:
    """Open a page through the sidebar navigation, as a user would."""
    link = page.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=title)
    link.click()
    page.wait_for_url(f"**{url_part}")
    wait_rendered(page)
    page.get_by_role("heading", name=title, level=1).wait_for()


def train_loss_points(page: Page) -> int | None:
    """N from the Live run caption "N train-loss points shown", or None while it is absent."""
    match = _POINTS_RE.search(page.locator("body").inner_text())
    return int(match.group(1).replace(",", "")) if match else None


def wait_for_points(page: Page, more_than: int, timeout_ms: int = 90_000) -> int:
    """Wait until the Live run caption shows more than ``more_than`` train-loss points."""
    page.wait_for_function(
        """(n) => {
            const m = document.body.innerText.match(/([\\d,]+) train-loss points shown/);
            return m !== null && parseInt(m[1].replace(/,/g, ''), 10) > n;
        }""", arg=more_than, timeout=timeout_ms)
    points = train_loss_points(page)
    assert points is not None
    return points


def screenshot(page: Page, name: str, *, readme: bool = False) -> Path:
    """A full-page PNG in test-artifacts/; with ``readme`` and GPTDASH_SCREENSHOTS=1 it is
    also written to docs/screenshots/ for the README.

    Streamlit scrolls inside its main block, not the document, so the viewport is
    stretched to the content's height for the shot and put back after. A README
    picture must show no error message.
    """
    if readme:
        errors = page.locator('[data-testid="stAlertContentError"]')
        assert errors.count() == 0, f"error on {page.url}: {errors.all_inner_texts()}"
    height = page.evaluate(
        "() => document.querySelector('[data-testid=\"stMain\"]').scrollHeight")
    page.set_viewport_size({"width": VIEWPORT["width"],
                            "height": max(VIEWPORT["height"], min(int(height), 6000))})
    try:
        page.evaluate("() => document.activeElement?.blur()")  # no focus ring in the picture
        page.wait_for_timeout(500)  # plotly charts redraw for the new size
        wait_rendered(page)
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / f"{name}.png"
        page.screenshot(path=str(path), full_page=True)
    finally:
        page.set_viewport_size(VIEWPORT)
    if readme and os.environ.get("GPTDASH_SCREENSHOTS") == "1":
        README_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, README_SCREENSHOTS / f"{name}.png")
    return path


def _find_chart(title: str) -> str:
    """A JS expression for the plotly chart titled ``title`` (undefined until it is drawn)."""
    return (f"[...document.querySelectorAll('.js-plotly-plot')].find((p) => "
            f"(p._fullLayout?.title?.text ?? '').replace(/<[^>]+>/g, '') === {title!r})")


def on_chart(page: Page, title: str, body: str, timeout_ms: int = 30_000):
    """Run the JS ``body`` with ``el`` bound to the chart titled ``title``, once it is drawn."""
    page.wait_for_function(f"() => !!{_find_chart(title)}", timeout=timeout_ms)
    return page.evaluate(f"() => {{ const el = {_find_chart(title)}; {body} }}")


def wait_for_chart(page: Page, title: str, condition: str, timeout_ms: int = 30_000) -> None:
    """Wait until the JS ``condition`` (on ``el``) holds for the chart titled ``title``."""
    page.wait_for_function(
        f"() => {{ const el = {_find_chart(title)}; return !!el && ({condition}); }}",
        timeout=timeout_ms)


def user_home(root: Path) -> Path:
    """``<root>/ada/.gptdash``, created: a gptdash home where a person's would be."""
    home = root / "ada" / ".gptdash"
    home.mkdir(parents=True, exist_ok=True)
    return home


@contextmanager
def readme_server(home: Path, log_path: Path) -> Iterator[str]:
    """A ``streamlit_server`` on a ``user_home``, started with HOME set to the folder that
    holds it, so pages (and the README's screenshots) show ``~/.gptdash/...``, not a
    test's temporary path. HOME is put back once the server has started."""
    with ExitStack() as stack:
        saved = os.environ.get("HOME")
        os.environ["HOME"] = str(home.parent)
        try:
            url = stack.enter_context(streamlit_server(home, log_path))
        finally:
            if saved is None:
                os.environ.pop("HOME", None)
            else:
                os.environ["HOME"] = saved
        yield url
