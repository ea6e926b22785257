"""Starting the dashboard: loopback by default, a password for anything else, and the
training worker running from the first second.

``gptdash serve`` (what ``make run`` calls) checks the address, the port and the TLS
certificate and key (HTTPS through Streamlit's own SSL settings) before anything
starts, then supervises two children (``jobs.supervisor``): a training worker
(``gptdash worker``: it marks orphaned runs ``interrupted`` and drains the queue at once,
with no page open) and the Streamlit server of the pages (``python -m streamlit run``,
with the Host names it accepts pinned, so a web page the user visits cannot reach the
dashboard through DNS rebinding). Training never shares the pages' interpreter: a page
refresh costs the run nothing but a core's share. This process imports neither torch
nor Streamlit.
"""

from __future__ import annotations

import errno
import hmac
import ipaddress
import os
import socket
import ssl
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gptcore.errors import GptdashError
from jobs.ray_cluster import cluster_address
from jobs.ray_executor import StopWatch, reconcile
from jobs.recovery import recover_interrupted
from jobs.supervisor import Child, Periodic, Supervisor
from storage.status import DEFAULT_AUTO_RESUMES

if TYPE_CHECKING:
    from storage.store import RunStore

PASSWORD_ENV = "GPTDASH_PASSWORD"
ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "app.py"
WORKER_STOP_S = 120.0  # a run's last checkpoint may take a while on a big model
RECONCILE_S = 5.0  # how often the runs on Ray are checked against their jobs


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


def password_in_clear(address: str, password: str | None,
                      tls: tuple[Path, Path] | None) -> bool:
    """Whether the password would cross a network unencrypted: set, off loopback, no TLS."""
    return bool(password) and tls is None and not is_loopback(address)


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


def check_tls(cert: str | None, key: str | None) -> tuple[Path, Path] | None:
    """The certificate and private key to serve HTTPS with, made absolute (the server runs
    in the checkout) and loaded once as the server will load them; None for plain HTTP."""
    if not cert and not key:
        return None
    if not cert or not key:
        raise GptdashError("--tls-cert and --tls-key go together: give both the certificate "
                           "and its private key (PEM files), or neither for plain HTTP")
    paths = (Path(cert).resolve(), Path(key).resolve())
    for flag, path in zip(("--tls-cert", "--tls-key"), paths, strict=True):
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise GptdashError(f"cannot read {flag} {path}: {exc.strerror}") from None
    try:
        # No passphrase prompt: the server could not answer one either.
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(*paths, password=b"")
    except ssl.SSLError as exc:
        detail = f" ({exc.reason})" if exc.reason else ""
        raise GptdashError(
            f"--tls-cert {paths[0]} and --tls-key {paths[1]} are not a PEM certificate and "
            f"its unencrypted private key{detail}: check that each file holds what its flag "
            "names and that the key matches the certificate") from None
    return paths


def streamlit_args(address: str, port: int, tls: tuple[Path, Path] | None = None
                   ) -> list[str]:
    """``streamlit run`` arguments: our app, the address, the port, the pinned Host names
    and, for HTTPS, the certificate and key. Every other setting is in
    ``.streamlit/config.toml``, which Streamlit reads from its working folder, the
    checkout (``serve`` starts it there)."""
    args = ["run", str(APP), "--server.address", address, "--server.port", str(port)]
    if tls is not None:
        args += ["--server.sslCertFile", str(tls[0]), "--server.sslKeyFile", str(tls[1])]
    # Only these Host names may open the app's WebSocket: on 0.0.0.0, name the host
    # names you serve under in GPTDASH_ALLOWED_HOSTS.
    for host in allowed_hosts(address):
        args += ["--server.allowedHosts", host]
    return args


def _runs_left_behind(store: RunStore) -> str:
    """After the worker died: its run, now ``interrupted``, and how to continue it."""
    try:
        found = recover_interrupted(store)
    except Exception as exc:  # noqa: BLE001 - the next worker's own recovery marks it
        return f" (could not mark its run interrupted: {exc})"
    if not found:
        return ""
    ids = ", ".join(f"#{i}" for i in found)
    return (f"; run(s) {ids} marked interrupted (each resumes by itself from its last "
            "checkpoint within its limit of automatic resumes; else resume it from the Runs "
            "page or with `gptdash resume RUN`)")


def children(store: RunStore, address: str, port: int,
             tls: tuple[Path, Path] | None = None,
             auto_resume: int = DEFAULT_AUTO_RESUMES) -> list[Child]:
    """The worker, then the server: started in this order and stopped in this order, so
    the run saves its checkpoint while the pages can still show it."""
    worker = Child("training worker", [sys.executable, "-m", "jobs", "worker",
                                       "--auto-resume", str(auto_resume)], cwd=str(ROOT),
                   stop_timeout_s=WORKER_STOP_S, on_death=lambda: _runs_left_behind(store))
    server = Child("dashboard server",
                   [sys.executable, "-m", "streamlit", *streamlit_args(address, port, tls)],
                   cwd=str(ROOT))
    return [worker, server]


def serve(store: RunStore, address: str, port: int, tls_cert: str | None = None,
          tls_key: str | None = None, auto_resume: int = DEFAULT_AUTO_RESUMES) -> int:
    """Supervise the training worker and the pages' server until Ctrl-C, SIGTERM or SIGHUP;
    returns an exit code (0). With ``tls_cert`` and ``tls_key`` (PEM files) the pages are
    served over HTTPS only. ``auto_resume`` is the worker's (and the Ray reconciler's)
    default limit of a run's automatic resumes.

    On the way out the worker stops its run with a checkpoint, so it can be resumed; if
    this process is killed outright, its children die with it.
    """
    password = os.environ.get(PASSWORD_ENV)
    check_bind(address, password)
    tls = check_tls(tls_cert, tls_key)
    check_port_free(address, port)
    if password_in_clear(address, password, tls):
        print("gptdash: warning: without --tls-cert/--tls-key the password crosses the "
              "network in clear text; serve HTTPS, or bind 127.0.0.1 behind a reverse proxy "
              "that does", file=sys.stderr, flush=True)
    scheme = "http" if tls is None else "https"
    print(f"gptdash: serving on {scheme}://{address}:{port}", file=sys.stderr, flush=True)
    return Supervisor(children(store, address, port, tls, auto_resume),
                      periodic=checks(store, auto_resume)).run()


def checks(store: RunStore, auto_resume: int = DEFAULT_AUTO_RESUMES) -> list[Periodic]:
    """What the supervisor checks beside its children: the Ray reconciler, with a cluster."""
    if cluster_address() is None:
        return []
    stops = StopWatch()
    return [Periodic("Ray reconciler", RECONCILE_S,
                     lambda: reconcile(store, stops=stops, auto_resume=auto_resume))]
