"""Nobody let in: loopback by default, a password otherwise, Host names pinned."""

import logging
import os
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from streamlit.runtime.context import ContextProxy
from streamlit.testing.v1 import AppTest

from gptcore.errors import GptdashError
from jobs.serve import allowed_hosts, check_bind, is_loopback, password_ok, streamlit_args
from jobs.serve import children as serve_children
from ui import login_throttle
from ui.login_throttle import FORGET_S, Attempt, Backoff, LoginThrottle

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("address", ["127.0.0.1", "localhost", "::1", "127.0.0.5"])
def test_loopback_needs_no_password(address):
    assert is_loopback(address)
    check_bind(address, None)


@pytest.mark.parametrize("address", ["0.0.0.0", "192.168.1.10", "::", "example.com"])
def test_any_other_address_needs_a_password(address):
    with pytest.raises(GptdashError, match="GPTDASH_PASSWORD"):
        check_bind(address, None)
    check_bind(address, "s3cret")


def test_password_comparison():
    assert password_ok("s3cret", "s3cret")
    assert not password_ok("s3cre", "s3cret")
    assert not password_ok("", "s3cret")


def test_streamlit_is_started_headless_with_pinned_hosts_and_no_telemetry():
    cmd = streamlit_args("127.0.0.1", 8501)
    joined = " ".join(cmd)
    assert "--server.address 127.0.0.1" in joined
    assert "evil.example" not in allowed_hosts("0.0.0.0")
    # Every other setting is written once, in the config file Streamlit reads from the
    # checkout, where serve starts it.
    options = {arg for arg in cmd if arg.startswith("--")}
    assert options == {"--server.address", "--server.port", "--server.allowedHosts"}
    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["headless"] is True
    assert config["browser"]["gatherUsageStats"] is False
    assert config["server"]["fileWatcherType"] == "none"
    assert config["runner"]["postScriptGC"] is False
    assert {Path(child.cwd) for child in serve_children(None, "127.0.0.1", 8501)} == {ROOT}


def test_serve_refuses_to_start_on_all_interfaces_without_a_password(tmp_path):
    env = {**os.environ, "GPTDASH_HOME": str(tmp_path)}
    env.pop("GPTDASH_PASSWORD", None)
    out = subprocess.run([sys.executable, "-m", "jobs", "serve", "--address", "0.0.0.0"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "refusing to listen on 0.0.0.0 without a password" in out.stderr


CLIENT = "203.0.113.7"


@pytest.fixture
def gate(home, monkeypatch) -> LoginThrottle:
    """A password for the app, a throttle of its own (the server's is process-wide), and
    every session from one address (AppTest's stand-in runtime has none)."""
    monkeypatch.setenv("GPTDASH_PASSWORD", "s3cret")
    throttle = LoginThrottle()
    monkeypatch.setattr(login_throttle, "THROTTLE", throttle)
    monkeypatch.setattr(ContextProxy, "ip_address", property(lambda self: CLIENT))
    return throttle


def _session() -> AppTest:
    """One browser session of the app, at its password prompt."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    assert [t.value for t in at.title] == ["gptdash"]  # the gate, not the New run page
    return at


def _try(at: AppTest, password: str) -> list[str]:
    """Submit ``password`` at the gate; the error lines it shows."""
    at.text_input[0].input(password)
    at.button[0].click().run()
    assert not at.exception
    return [e.value for e in at.error]


def test_a_password_is_asked_before_any_page_renders(gate):
    at = _session()
    assert _try(at, "wrong") == ["Wrong password."]
    assert [t.value for t in at.title] == ["gptdash"]
    assert _try(at, "s3cret") == []
    assert "New run" in [t.value for t in at.title]


def test_two_wrong_passwords_make_the_next_session_wait(gate, caplog):
    """A script opening a new session per guess is throttled all the same: the third try,
    even the right password, is refused unchecked until the wait is over."""
    first = _session()
    with caplog.at_level(logging.WARNING, logger="ui.login_throttle"):
        assert _try(first, "guess1") == ["Wrong password."]
        assert _try(first, "guess2") == ["Wrong password."]
    assert [r.getMessage().split(" (")[0] for r in caplog.records
            if r.name == "ui.login_throttle"] == [f"wrong dashboard password from {CLIENT}"] * 2
    second = _session()
    [error] = _try(second, "s3cret")
    assert error.startswith("Too many wrong passwords; try again in ")
    assert [t.value for t in second.title] == ["gptdash"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ws_handshake(port: int, host: str) -> str:
    request = (f"GET /_stcore/stream HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request.encode())
        return s.recv(200).decode(errors="replace").splitlines()[0]


def test_a_foreign_host_header_cannot_open_the_app(tmp_path):
    """DNS rebinding: a page on evil.example resolving to 127.0.0.1 must be refused."""
    port = _free_port()
    env = {**os.environ, "GPTDASH_HOME": str(tmp_path)}
    env.pop("GPTDASH_PASSWORD", None)
    proc = subprocess.Popen([sys.executable, "-m", "jobs", "serve", "--port", str(port)],
                            cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                status = _ws_handshake(port, f"127.0.0.1:{port}")
                break
            except OSError:
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.3)
        assert " 101 " in status  # the app's own address opens the socket
        assert " 101 " not in _ws_handshake(port, f"evil.example:{port}")
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def test_no_page_renders_html_from_strings():
    for path in [ROOT / "app.py", *(ROOT / "app_pages").glob("*.py"), ROOT / "ui" / "widgets.py"]:
        assert "unsafe_allow_html" not in path.read_text(), path


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _checks(answer: bool) -> tuple[list[int], Callable[[], bool]]:
    """A password check that answers ``answer``, and the list its calls append to."""
    calls: list[int] = []

    def check() -> bool:
        calls.append(1)
        return answer

    return calls, check


def test_the_wait_doubles_after_the_free_failures_up_to_a_cap():
    backoff = Backoff(free=2, first_s=5.0, max_s=30.0)
    assert [backoff.wait_s(n) for n in range(7)] == [0, 0, 5, 10, 20, 30, 30]


def test_a_try_too_soon_is_refused_without_looking_at_the_password():
    clock = Clock()
    throttle = LoginThrottle(clock=clock)
    wrong_calls, wrong = _checks(False)
    assert throttle.attempt("198.51.100.1", wrong) == Attempt(accepted=False)
    assert throttle.attempt("198.51.100.1", wrong) == Attempt(accepted=False)
    right_calls, right = _checks(True)
    clock.now += 1
    assert throttle.attempt("198.51.100.1", right) == Attempt(accepted=False, wait_s=4.0)
    assert right_calls == []  # the right password tells a guesser nothing while it waits
    assert throttle.attempt("198.51.100.2", right).accepted  # another address: no wait
    clock.now += 4
    assert throttle.attempt("198.51.100.1", wrong) == Attempt(accepted=False)
    assert throttle.attempt("198.51.100.1", right).wait_s == 10.0  # the wait doubled
    clock.now += 10
    assert throttle.attempt("198.51.100.1", right).accepted
    # A success starts the address afresh: its next two mistakes are free again.
    assert throttle.attempt("198.51.100.1", wrong) == Attempt(accepted=False)
    assert throttle.attempt("198.51.100.1", wrong) == Attempt(accepted=False)
    assert len(wrong_calls) == 5


def test_guesses_spread_over_many_addresses_make_everyone_wait():
    throttle = LoginThrottle(overall=Backoff(free=10, first_s=1.0, max_s=60.0), clock=Clock())
    _, wrong = _checks(False)
    for i in range(10):
        assert throttle.attempt(f"198.51.100.{i}", wrong) == Attempt(accepted=False)
    calls, right = _checks(True)
    assert throttle.attempt("192.0.2.1", right) == Attempt(accepted=False, wait_s=1.0)
    assert calls == []


def test_failures_are_forgotten_after_a_quiet_while():
    clock = Clock()
    throttle = LoginThrottle(clock=clock)
    _, wrong = _checks(False)
    for _ in range(2):
        throttle.attempt("198.51.100.1", wrong)
    clock.now += FORGET_S + 1
    throttle.attempt("198.51.100.1", wrong)  # the first of a new series: free
    assert throttle.attempt("198.51.100.1", wrong) == Attempt(accepted=False)


def test_sessions_guessing_at_the_same_instant_cannot_all_slip_through():
    """Twenty sessions at once: only the first two guesses are looked at, however long
    looking takes."""
    throttle = LoginThrottle()
    calls, wrong = _checks(False)
    start = threading.Barrier(20)

    def slow_wrong() -> bool:
        time.sleep(0.05)
        return wrong()

    def guess() -> Attempt:
        start.wait()
        return throttle.attempt("198.51.100.1", slow_wrong)

    with ThreadPoolExecutor(20) as pool:
        attempts = list(pool.map(lambda _: guess(), range(20)))
    assert len(calls) == 2
    assert sum(a.wait_s > 0 for a in attempts) == 18
