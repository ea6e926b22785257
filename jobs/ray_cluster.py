"""Read-only views of the Ray cluster for the pages: its nodes, the gptdash jobs on it, and
a run's latest job with its log tail.

Everything goes through the cluster's dashboard address (``GPTDASH_RAY_ADDRESS``, e.g.
http://head:8265), as ``JobSubmissionClient`` and the state API read it. Ray's HTTP clients
wait without a limit, so each read first opens a plain TCP connection to the address with a
short timeout: a head that is down or unreachable costs the page a second at most and
becomes one readable line (a ``GptdashError``), never a traceback. Ray is imported only
here and only when asked, so pages without a cluster never pay for it (nor for torch).

A gptdash job's submission id is ``gptdash-run-{run_id}-{attempt}`` (one per submission of
the run); that is how a job is tied to its run, with no column in the database.
"""

from __future__ import annotations

import os
import re
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from gptcore.errors import GptdashError

RAY_ADDRESS_ENV = "GPTDASH_RAY_ADDRESS"
CONNECT_TIMEOUT_S = 1.5  # the TCP probe before any Ray call
READ_TIMEOUT_S = 5  # the state API's own limit for listing nodes
LOG_TAIL_LINES = 40
# How long a submission waits for a node's job agent: a busy head's dashboard can answer
# "No available agent to submit job, please try again later" for a while (seen on a loaded
# two-core box), and Ray itself says to try again.
AGENT_WAIT_S = 60.0
_JOB_ID = re.compile(r"^gptdash-run-(\d+)-(\d+)$")
INSTALL_HINT = "pip install 'gptdash[ray]' (make setup does)"
AUTH_HINT = ("RAY_AUTH_MODE=token and RAY_AUTH_TOKEN (or ~/.ray/auth_token) to the cluster's "
             "token (`ray get-auth-token` on its head)")


@dataclass(frozen=True)
class RayNode:
    """One node of the cluster as the dashboard reports it."""

    node_id: str
    name: str  # its IP or host name
    alive: bool
    is_head: bool
    cpus: float
    gpus: float


@dataclass(frozen=True)
class RayJob:
    """One gptdash job: which run and attempt it trains, and how it is doing."""

    submission_id: str
    run_id: int
    attempt: int
    status: str  # Ray's JobStatus value: PENDING RUNNING STOPPED SUCCEEDED FAILED
    node_id: str | None  # where its entrypoint (the driver) runs
    started_at: datetime | None
    ended_at: datetime | None
    message: str  # Ray's own word on it, e.g. why it failed


def cluster_address() -> str | None:
    """The Ray dashboard address the dashboard and CLI use, or None when none is set."""
    return os.environ.get(RAY_ADDRESS_ENV, "").strip() or None


def parse_submission_id(submission_id: str) -> tuple[int, int] | None:
    """(run id, attempt) of a gptdash job's submission id; None for any other job."""
    match = _JOB_ID.match(submission_id or "")
    return (int(match[1]), int(match[2])) if match else None


def check_reachable(address: str) -> str:
    """The dashboard's URL (http:// added when the address has no scheme); a one-line
    GptdashError unless something listens there."""
    url = address if "://" in address else f"http://{address}"
    parts = urlsplit(url)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(address)
    except ValueError:
        raise GptdashError(f"{RAY_ADDRESS_ENV}={address!r} is not a Ray dashboard address: "
                           "give one like http://head:8265") from None
    try:
        with socket.create_connection((parts.hostname, port), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise GptdashError(f"No Ray cluster answers at {address} ({reason}): start its head "
                           f"(ray start --head) or correct {RAY_ADDRESS_ENV}") from None
    return url.rstrip("/")


def submit_job(client: Any, *, wait_s: float = AGENT_WAIT_S, **job: Any) -> str:
    """``client.submit_job(**job)``, tried again while Ray says no job agent is available
    (nothing was submitted then, so the same submission id is safe), for ``wait_s`` at
    most; any other refusal, or the last one, is raised as Ray raised it."""
    deadline = time.monotonic() + wait_s
    pause = 0.5
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(2 * pause, 4.0)


def _client(address: str) -> Any:
    url = check_reachable(address)
    try:
        from ray.job_submission import JobSubmissionClient
    except ImportError:
        raise GptdashError(f"Ray is not installed here: {INSTALL_HINT}") from None
    try:
        return JobSubmissionClient(url)
    except Exception as exc:  # Ray's many error types all mean "not usable" here
        raise _unusable(address, exc) from None


def _unusable(address: str, exc: Exception) -> GptdashError:
    text = str(exc)
    if "Authentication required" in text or "Authentication failed" in text \
            or "authentication token" in text:  # Ray's words for a 401 and a 403
        got = "refused the token given" if "Authentication failed" in text else "got no token"
        return GptdashError(f"The Ray cluster at {address} uses token authentication and "
                            f"{got}: set {AUTH_HINT}")
    first = (text.strip().splitlines() or [type(exc).__name__])[0][:200]
    return GptdashError(f"The Ray cluster at {address} did not answer as a Ray dashboard "
                        f"({first}): check {RAY_ADDRESS_ENV}")


def _time(ms: int | None) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, tz=UTC) if ms else None


def nodes(address: str) -> list[RayNode]:
    """Every node the cluster knows, dead ones included, the head first."""
    url = check_reachable(address)
    try:
        from ray.util.state import list_nodes
    except ImportError:
        raise GptdashError(f"Ray is not installed here: {INSTALL_HINT}") from None
    try:
        found = list_nodes(address=url, detail=True, timeout=READ_TIMEOUT_S,
                           raise_on_missing_output=False)
    except Exception as exc:
        raise _unusable(address, exc) from None
    result = [RayNode(node_id=n.node_id, name=n.node_name or n.node_ip or n.node_id[:8],
                      alive=n.state == "ALIVE", is_head=bool(n.is_head_node),
                      cpus=float(n.resources_total.get("CPU", 0)),
                      gpus=float(n.resources_total.get("GPU", 0)))
              for n in found]
    return sorted(result, key=lambda n: (not n.is_head, not n.alive, n.name, n.node_id))


def jobs(address: str, run_id: int | None = None) -> list[RayJob]:
    """The gptdash jobs on the cluster (only run ``run_id``'s when given), newest first."""
    client = _client(address)
    try:
        details = client.list_jobs()
    except Exception as exc:
        raise _unusable(address, exc) from None
    found = []
    for job in details:
        ids = parse_submission_id(job.submission_id)
        if ids is None or (run_id is not None and ids[0] != run_id):
            continue
        found.append(RayJob(submission_id=job.submission_id, run_id=ids[0], attempt=ids[1],
                            status=str(getattr(job.status, "value", job.status)),
                            node_id=job.driver_node_id or None,
                            started_at=_time(job.start_time), ended_at=_time(job.end_time),
                            message=job.message or ""))
    return sorted(found, key=lambda j: (j.run_id, j.attempt), reverse=True)


def latest_job(address: str, run_id: int) -> RayJob | None:
    """The run's job of its latest attempt, or None when the run never went to Ray."""
    found = jobs(address, run_id)
    return found[0] if found else None


def log_tail(address: str, submission_id: str, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a job's log (its entrypoint's stdout and stderr)."""
    client = _client(address)
    try:
        text = client.get_job_logs(submission_id)
    except Exception as exc:
        raise _unusable(address, exc) from None
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])
