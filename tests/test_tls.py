"""The dashboard as it should be opened to a network: `gptdash serve --tls-cert/--tls-key`
serves HTTPS and nothing in clear, refuses TLS files it cannot use in one line, and a
browser at its password gate is slowed down after two wrong passwords."""

from __future__ import annotations

import http.client
import os
import re
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser_support import ARTIFACTS, free_port, new_context, wait_rendered
from playwright.sync_api import Browser, expect

from gptcore.errors import GptdashError
from jobs.serve import PASSWORD_ENV, check_tls, password_in_clear, streamlit_args

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "open sesame"


def _self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and its key, made with Debian's openssl."""
    cert, key = folder / f"{name}.crt", folder / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return _self_signed(tmp_path_factory.mktemp("tls"), "server")


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "GPTDASH_DB_URL"}
    env.update(GPTDASH_HOME=str(home), OMP_NUM_THREADS="1")
    return env


@pytest.fixture(scope="module")
def server(tls_files: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[str, Path]]:
    """``gptdash serve`` with a password and TLS, given the files by relative paths from
    another folder than the checkout the server runs in; its URL and its log."""
    cert, key = tls_files
    port = free_port()
    log = ARTIFACTS / "streamlit-tls.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**_env(tmp_path_factory.mktemp("tls_home")), PASSWORD_ENV: PASSWORD}
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jobs", "serve", "--port", str(port),
             "--tls-cert", cert.name, "--tls-key", key.name],
            cwd=cert.parent, env={**env, "PYTHONPATH": str(ROOT)}, stdout=out,
            stderr=subprocess.STDOUT)
    url = f"https://127.0.0.1:{port}"
    try:
        _wait_for_health(url, cert, proc, log)
        yield url, log
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def _wait_for_health(url: str, cert: Path, proc: subprocess.Popen, log: Path) -> None:
    trusting = ssl.create_default_context(cafile=str(cert))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2,
                                        context=trusting) as response:
                if response.read() == b"ok":
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.25)
    raise AssertionError(f"the server did not answer over HTTPS:\n{log.read_text()}")


def test_the_pages_are_served_over_https_with_the_given_certificate(server, tls_files):
    url, log = server
    trusting = ssl.create_default_context(cafile=str(tls_files[0]))
    with urllib.request.urlopen(f"{url}/", timeout=10, context=trusting) as response:
        assert response.status == 200
        assert b"<html" in response.read().lower()
    assert f"gptdash: serving on {url}" in log.read_text()


def test_plain_http_is_not_served(server):
    url, _ = server
    plain = url.replace("https://", "http://")
    with pytest.raises((http.client.HTTPException, ConnectionError, urllib.error.URLError)):
        urllib.request.urlopen(f"{plain}/_stcore/health", timeout=10)


def _failures_logged(log: Path, count: int) -> None:
    """Wait until the server's log holds ``count`` wrong passwords (from loopback, which
    Streamlit gives no address), and no more."""
    deadline = time.monotonic() + 30
    while (logged := log.read_text().count("wrong dashboard password from localhost (")) < count:
        assert time.monotonic() < deadline, f"{logged} wrong passwords logged, not {count}"
        time.sleep(0.1)
    assert logged == count


@pytest.mark.browser
def test_two_wrong_passwords_make_the_third_try_wait(browser: Browser, server):
    """In a browser, over HTTPS: the third try, even the right password, is refused with
    the wait, and each wrong one is in the server's log with where it came from. (Each
    step waits for what it changes: the gate's runs are too quick for ``rerun``.)"""
    url, log = server
    context = new_context(browser, ignore_https_errors=True)
    page = context.new_page()
    try:
        page.goto(url)
        wait_rendered(page)
        field = page.get_by_label("Password", exact=True)
        errors = page.locator('[data-testid="stAlertContentError"]')
        for count, guess in enumerate(("guess one", "guess two"), start=1):
            field.fill(guess)
            field.press("Enter")
            _failures_logged(log, count)
            expect(errors).to_have_text(["Wrong password."])
        field.fill(PASSWORD)
        field.press("Enter")
        expect(errors).to_have_text([re.compile(r"^Too many wrong passwords; try again in "
                                                r"[1-5] s\.$")])
        wait_rendered(page)
        assert page.get_by_role("heading", name="New run").count() == 0
        _failures_logged(log, 2)  # the refused try was not checked, so not a failure
    finally:
        context.close()


def test_streamlit_gets_the_files_through_its_own_ssl_settings(tls_files):
    cert, key = tls_files
    args = streamlit_args("0.0.0.0", 8501, (cert, key))
    assert args[args.index("--server.sslCertFile") + 1] == str(cert)
    assert args[args.index("--server.sslKeyFile") + 1] == str(key)
    assert "--server.sslCertFile" not in streamlit_args("0.0.0.0", 8501)


def test_tls_files_that_cannot_serve_are_refused_in_one_line(tls_files, tmp_path):
    cert, key = tls_files
    assert check_tls(None, None) is None
    assert check_tls(str(cert), str(key)) == (cert, key)
    _, other_key = _self_signed(tmp_path, "other")
    encrypted = tmp_path / "encrypted.key"
    subprocess.run(["openssl", "pkey", "-in", str(key), "-aes256", "-passout", "pass:x",
                    "-out", str(encrypted)], check=True, capture_output=True)
    refused = {
        (str(cert), None): "--tls-cert and --tls-key go together",
        (None, str(key)): "--tls-cert and --tls-key go together",
        (str(tmp_path / "missing.crt"), str(key)): "cannot read --tls-cert .*missing.crt: No "
                                                   "such file",
        (str(cert), str(tmp_path)): "cannot read --tls-key .*: Is a directory",
        (str(key), str(cert)): "are not a PEM certificate and its unencrypted private key",
        (str(cert), str(other_key)): "KEY_VALUES_MISMATCH",
        (str(cert), str(encrypted)): "its unencrypted private key",
    }
    for (given_cert, given_key), message in refused.items():
        with pytest.raises(GptdashError, match=message) as caught:
            check_tls(given_cert, given_key)
        assert "\n" not in str(caught.value)


def test_serve_refuses_a_certificate_without_its_key_before_starting(tls_files, tmp_path):
    out = subprocess.run([sys.executable, "-m", "jobs", "serve", "--port", str(free_port()),
                          "--tls-cert", str(tls_files[0])], cwd=ROOT, env=_env(tmp_path),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "gptdash: --tls-cert and --tls-key go together: give both the certificate and its "
        "private key (PEM files), or neither for plain HTTP"]


def test_a_password_off_loopback_without_tls_is_said_to_cross_in_clear(tls_files):
    assert password_in_clear("0.0.0.0", "s3cret", None)
    assert not password_in_clear("0.0.0.0", "s3cret", tls_files)
    assert not password_in_clear("127.0.0.1", "s3cret", None)
    assert not password_in_clear("0.0.0.0", None, None)  # refused anyway, by check_bind
