"""Starting the dashboard safely: loopback by default, a password for anything else.

``gptdash serve`` (what ``make run`` calls) checks the address before Streamlit
starts, and pins the Host names the server accepts, so a web page the user visits
cannot reach the dashboard through DNS rebinding.
"""

from __future__ import annotations

import hmac
import ipaddress
import os
import sys
from pathlib import Path

from gptcore.errors import GptdashError

PASSWORD_ENV = "GPTDASH_PASSWORD"
APP = Path(__file__).resolve().parent.parent / "app.py"


def is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def check_bind(address: str, password: str | None) -> None:
    """Refuse to bind anything but loopback without a password."""
    if not is_loopback(address) and not password:
        raise GptdashError(
            f"refusing to listen on {address or 'every interface'} without a password: anyone "
            f"on that network could train on your GPU and read your runs. Set {PASSWORD_ENV} "
            "to a password (the browser asks for it), or keep the default 127.0.0.1")


def password_ok(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def allowed_hosts(address: str) -> list[str]:
    hosts = ["127.0.0.1", "localhost", "::1"]
    if address and address not in hosts and address not in ("0.0.0.0", "::"):
        hosts.append(address)
    extra = os.environ.get("GPTDASH_ALLOWED_HOSTS", "")
    hosts += [h.strip() for h in extra.split(",") if h.strip()]
    return hosts


def streamlit_command(address: str, port: int) -> list[str]:
    args = [sys.executable, "-m", "streamlit", "run", str(APP),
            "--server.address", address, "--server.port", str(port),
            "--server.headless", "true", "--browser.gatherUsageStats", "false"]
    # Only these Host names may open the app's WebSocket: on 0.0.0.0, name the host
    # names you serve under in GPTDASH_ALLOWED_HOSTS.
    for host in allowed_hosts(address):
        args += ["--server.allowedHosts", host]
    return args


def serve(address: str, port: int) -> int:
    check_bind(address, os.environ.get(PASSWORD_ENV))
    cmd = streamlit_command(address, port)
    print(f"gptdash: serving on http://{address}:{port}", file=sys.stderr)
    os.execv(cmd[0], cmd)  # replace this process, so Ctrl-C and kill reach streamlit directly
    return 0
