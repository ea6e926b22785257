"""Starting the dashboard: loopback by default, a password for anything else, and the
training worker running from the first second.

``gptdash serve`` (what ``make run`` calls) checks the address and the port before
anything starts, pins the Host names the server accepts (so a web page the user
visits cannot reach the dashboard through DNS rebinding), then starts this
process's training worker (which marks orphaned runs ``interrupted`` and starts
draining the queue at once, with no page open) and runs Streamlit in the same
process, so the pages share that worker.
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import os
import socket
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


def check_port_free(address: str, port: int) -> None:
    """Refuse a port something already listens on, before printing or starting anything."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As the server will bind: SO_REUSEADDR ignores sockets only lingering in TIME_WAIT.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise GptdashError(f"port {port} on {address} is busy (another gptdash or "
                                   "program listens there): stop it, or pick another port "
                                   "with --port") from None
            raise GptdashError(f"cannot listen on {address}:{port}: {exc.strerror}") from None


def streamlit_args(address: str, port: int) -> list[str]:
    """``streamlit run`` arguments: our app, headless, no telemetry, pinned Host names, and
    neither a file watcher nor a forced garbage collection after each script run (both cost
    the training thread CPU); whatever folder it is started from."""
    args = ["run", str(APP), "--server.address", address, "--server.port", str(port),
            "--server.headless", "true", "--browser.gatherUsageStats", "false",
            "--server.fileWatcherType", "none", "--runner.postScriptGC", "false"]
    # Only these Host names may open the app's WebSocket: on 0.0.0.0, name the host
    # names you serve under in GPTDASH_ALLOWED_HOSTS.
    for host in allowed_hosts(address):
        args += ["--server.allowedHosts", host]
    return args


def serve(address: str, port: int) -> int:
    """Start the worker, then serve the dashboard until Ctrl-C / SIGTERM; returns an exit code.

    On the way out the worker stops its run with a checkpoint, so it can be resumed.
    """
    from streamlit.web import cli as streamlit_cli

    from jobs.manager import process_worker

    check_bind(address, os.environ.get(PASSWORD_ENV))
    check_port_free(address, port)
    worker = process_worker()
    print(f"gptdash: serving on http://{address}:{port}", file=sys.stderr)
    try:
        streamlit_cli.main.main(args=streamlit_args(address, port), prog_name="streamlit",
                                standalone_mode=False)
    finally:
        worker.shutdown()
    return 0
