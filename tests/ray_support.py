"""A throwaway Ray cluster for tests: a real head (``ray start --head``) on 127.0.0.1.

``start_head`` starts a head with 2 CPUs, its own ``--temp-dir`` and free ports for every
service it opens, and waits until its job server answers; ``RayCluster.add_node`` joins
one more node (its own ports and temp dir) for the multi-node tests; ``stop`` stops every
node and removes the folder. Token auth is switched off explicitly on both sides
(``RAY_AUTH_MODE=disabled`` in the environment of the cluster and of the test process):
Ray 2.60 turns it on by itself once ``~/.ray/auth_token`` exists, and job submission then
fails with 401.
"""

from __future__ import annotations

import contextlib
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

RAY = Path(sys.executable).with_name("ray")
AUTH_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
START_TIMEOUT_S = 90


def _free_ports(n: int) -> list[int]:
    """n distinct free ports (held open together, so none repeats)."""
    socks = []
    try:
        for _ in range(n):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def _node_ports() -> list[str]:
    """Flags giving a node free ports for all the services it opens."""
    obj, node, agent_listen, agent_grpc, metrics, runtime_env = _free_ports(6)
    # Workers take a range of their own, below the kernel's ephemeral range (32768 and up,
    # where the free ports above come from) so that it cannot hold any of them.
    lo = random.randrange(10000, 32000, 200)
    return ["--object-manager-port", str(obj), "--node-manager-port", str(node),
            "--dashboard-agent-listen-port", str(agent_listen),
            "--dashboard-agent-grpc-port", str(agent_grpc),
            "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(runtime_env),
            "--min-worker-port", str(lo), "--max-worker-port", str(lo + 200)]


def ray_env() -> dict[str, str]:
    """The environment for ``ray`` commands and for processes that talk to the cluster."""
    return {**os.environ, **AUTH_ENV}


@dataclass
class RayCluster:
    """A running local Ray cluster.

    ``address`` is the dashboard's HTTP address (what ``GPTDASH_RAY_ADDRESS`` and
    ``JobSubmissionClient`` take); ``gcs_address`` is what ``ray start --address`` and
    ``ray.init(address=...)`` take.
    """

    folder: Path
    gcs_port: int
    dashboard_port: int
    nodes: list[Path] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    def add_node(self, num_cpus: int = 2) -> None:
        """Join one more node to the cluster (its own ports and temp dir)."""
        temp = self.folder / f"node{len(self.nodes)}"
        temp.mkdir()
        _run([str(RAY), "start", "--address", self.gcs_address, "--node-ip-address",
              "127.0.0.1", "--num-cpus", str(num_cpus), "--temp-dir", str(temp),
              "--disable-usage-stats", *_node_ports()])
        self.nodes.append(temp)

    def stop(self) -> None:
        """Stop every process of this cluster and remove its folder (best effort).

        Not `ray stop`, which stops every Ray cluster of this user on the machine: the
        processes of this one are those that name its folder on their command line (the
        GCS, raylets, dashboards, log monitors) or its GCS port (the client server), and
        everything they started (agents, workers, jobs), found before any is signalled.
        """
        mine = _with_descendants(_pids_naming(str(self.folder), f":{self.gcs_port}"))
        # A few seconds to go on a SIGTERM: some of Ray's processes let the 10 s this gave
        # them run out every time, and a test worker waited for nothing.
        for sig, grace_s in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):
            for pid in mine:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and any(_alive(p) for p in mine):
                time.sleep(0.2)
            mine = [p for p in mine if _alive(p)]
            if not mine:
                break
        shutil.rmtree(self.folder, ignore_errors=True)


def _pids_naming(*texts: str) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if any(text in cmdline for text in texts):
                pids.append(int(entry.name))
    return pids


def _with_descendants(roots: list[int]) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), list(roots)
    while todo:
        pid = todo.pop()
        if pid not in found and pid != os.getpid():
            found.add(pid)
            todo.extend(children.get(pid, []))
    return sorted(found)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, env=ray_env(), capture_output=True, text=True,
                          timeout=START_TIMEOUT_S, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} failed ({done.returncode}):\n"
                           f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def start_head(num_cpus: int = 2) -> RayCluster:
    """Start a Ray head on 127.0.0.1 and wait until its job server answers."""
    if not RAY.exists():
        raise RuntimeError(f"{RAY} is missing: install the extra, pip install -e '.[ray]' "
                           "(make setup does)")
    # A short path: Ray's socket paths must stay under the 107-byte limit of AF_UNIX.
    folder = Path(tempfile.mkdtemp(prefix="gdray-", dir="/tmp"))
    gcs, dashboard, client = _free_ports(3)
    cluster = RayCluster(folder=folder, gcs_port=gcs, dashboard_port=dashboard)
    try:
        temp = folder / "head"
        temp.mkdir()
        _run([str(RAY), "start", "--head", "--node-ip-address", "127.0.0.1",
              "--port", str(gcs), "--dashboard-host", "127.0.0.1",
              "--dashboard-port", str(dashboard), "--ray-client-server-port", str(client),
              "--num-cpus", str(num_cpus), "--num-gpus", "0", "--temp-dir", str(temp),
              "--include-dashboard", "true", "--disable-usage-stats", *_node_ports()])
        cluster.nodes.append(temp)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                with urllib.request.urlopen(f"{cluster.address}/api/version", timeout=5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the Ray dashboard at {cluster.address} did not "
                                       f"answer within {START_TIMEOUT_S} s") from None
                time.sleep(0.5)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def submit_python(address: str, submission_id: str, code: str, *, wait: bool = True) -> None:
    """Submit a Ray job that runs ``code`` in this venv's Python, taking no CPU from the
    cluster (so it never waits for the runs of other tests); with ``wait``, until it ends."""
    from ray.job_submission import JobSubmissionClient

    from jobs.ray_cluster import submit_job

    client = JobSubmissionClient(address)
    submit_job(client, entrypoint=f"{sys.executable} -c {shlex.quote(code)}",
               submission_id=submission_id, entrypoint_num_cpus=0)
    deadline = time.monotonic() + START_TIMEOUT_S
    while wait and not client.get_job_status(submission_id).is_terminal():
        if time.monotonic() > deadline:
            raise RuntimeError(f"Ray job {submission_id} did not end in {START_TIMEOUT_S} s")
        time.sleep(0.3)
