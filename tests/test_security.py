"""Nobody let in: loopback by default, a password otherwise, Host names pinned."""

import os
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from gptcore.errors import GptdashError
from jobs.serve import allowed_hosts, check_bind, is_loopback, password_ok, streamlit_args
from jobs.serve import children as serve_children

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


def test_a_password_is_asked_before_any_page_renders(home, monkeypatch):
    monkeypatch.setenv("GPTDASH_PASSWORD", "s3cret")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    assert [t.value for t in at.title] == ["gptdash"]  # the gate, not the New run page
    at.text_input[0].input("wrong").run()
    assert any("Wrong password" in e.value for e in at.error)
    assert [t.value for t in at.title] == ["gptdash"]
    at.text_input[0].input("s3cret").run()
    assert "New run" in [t.value for t in at.title]
    assert not at.exception


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
