"""The README's Ray recipe, tried on one machine: a head, one more node, one PostgreSQL, one
shared artifacts folder, and two runs submitted ``--on ray`` that land one on each node.

What it does, in the recipe's order:

1. a PostgreSQL server (a throw-away one, as the tests start it) and ``gptdash db upgrade``;
2. ``ray start --head`` (1 CPU) and ``ray start --address HEAD`` for a second node (1 CPU),
   each with its own ports and ``--temp-dir``, started with ``GPTDASH_DB_URL`` and
   ``GPTDASH_ARTIFACTS`` in their environment as the recipe's service files set them;
3. two ``gptdash submit --on ray`` of a short ``tiny`` run, one after the other: each job
   asks for one CPU, so the second can only go to the node the first left free;
4. waits for both to complete and prints, for each run, its status and the node its job
   ran on (from the cluster's dashboard, as the Workers page shows it); then stops only
   this cluster and this server.

    .venv/bin/python bench/ray_two_nodes.py [--steps 60] [--spread]

``--spread`` then trains one more run with ``nodes=2`` (Ray Train, gloo) and says on which
nodes its two workers ran.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from jobs import ray_cluster  # noqa: E402
from storage.status import FINISHED  # noqa: E402
from tests.postgres_support import start_server  # noqa: E402
from tests.ray_support import AUTH_ENV, start_head  # noqa: E402
from ui.ray_cluster import jobs_table, nodes_table  # noqa: E402

TIMEOUT_S = 600


def _gptdash(env: dict[str, str], *args: str) -> str:
    entry = Path(sys.executable).parent / "gptdash"
    cmd = [str(entry)] if entry.is_file() else [sys.executable, "-m", "jobs"]
    print("$ gptdash", " ".join(args), flush=True)
    done = subprocess.run([*cmd, *args], env=env, cwd=ROOT, capture_output=True, text=True,
                          check=False)
    out = (done.stdout + done.stderr).strip()
    print(out, flush=True)
    if done.returncode != 0:
        raise RuntimeError(f"gptdash {args[0]} failed ({done.returncode})")
    return done.stdout


def spread(store, env: dict[str, str], address: str, role: dict[str, str], steps: int) -> None:
    """One run over both nodes (``nodes=2``, one process each, gloo): where its Ray Train
    workers ran, from the cluster's actors."""
    from ray.util.state import list_actors

    run_id = int(_gptdash(env, "submit", "--on", "ray", "--preset", "tiny", "--set",
                          f"max_steps={steps}", "--set", "device=cpu", "--set", "nodes=2",
                          "--name", "across two nodes").split()[0])
    deadline = time.monotonic() + TIMEOUT_S
    while (run := store.get_run(run_id)).status not in FINISHED:
        if time.monotonic() > deadline:
            raise RuntimeError(f"run {run_id} did not end within {TIMEOUT_S} s")
        time.sleep(1)
    workers = [a for a in list_actors(address=address, detail=True, limit=1000)
               if "TrainWorker" in a.class_name]
    where = sorted(role.get(a.node_id, a.node_id) for a in workers)
    print(f"run {run_id} (nodes=2) {run.status} at step {run.last_step}: Ray Train workers "
          f"({', '.join(sorted({a.class_name for a in workers}))}) on {where}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--spread", action="store_true",
                        help="then one run with nodes=2: a Ray Train worker on each node")
    args = parser.parse_args()

    artifacts = Path(tempfile.mkdtemp(prefix="gptdash-shared-"))
    pg = start_server()
    url = pg.url(pg.create_database())
    # What every machine's environment holds (the recipe's /etc/gptdash.env); the Ray nodes
    # are started with it, and their jobs inherit it.
    os.environ.update({**AUTH_ENV, "GPTDASH_DB_URL": url, "GPTDASH_ARTIFACTS": str(artifacts),
                       "PYTHONPATH": str(ROOT)})
    cluster = None
    try:
        cluster = start_head(num_cpus=1)
        print(f"head: {cluster.address} (ray start --head), GCS {cluster.gcs_address}")
        cluster.add_node(num_cpus=1)
        print(f"second node: ray start --address {cluster.gcs_address}")
        env = {**os.environ, "GPTDASH_RAY_ADDRESS": cluster.address}
        _gptdash(env, "db", "upgrade")
        ids = [int(_gptdash(env, "submit", "--on", "ray", "--preset", "tiny", "--set",
                            f"max_steps={args.steps}", "--set", "device=cpu", "--name",
                            f"two nodes {i}").split()[0]) for i in (1, 2)]
        deadline = time.monotonic() + TIMEOUT_S
        from storage.store import RunStore

        store = RunStore()
        while any(store.get_run(i).status not in FINISHED for i in ids):
            if time.monotonic() > deadline:
                raise RuntimeError(f"runs {ids} did not end within {TIMEOUT_S} s")
            time.sleep(1)
        _gptdash(env, "list")
        nodes = ray_cluster.nodes(cluster.address)
        jobs = [j for j in ray_cluster.jobs(cluster.address) if j.run_id in ids]
        print(nodes_table(nodes, jobs).to_string(index=False))
        print(jobs_table(jobs, nodes, datetime.now(UTC)).to_string(index=False))
        role = {n.node_id: "head" if n.is_head else "second node" for n in nodes}
        for job in sorted(jobs, key=lambda j: j.run_id):
            run = store.get_run(job.run_id)
            print(f"run {run.id} {run.status} at step {run.last_step}: Ray job "
                  f"{job.submission_id} ran on the {role.get(job.node_id, job.node_id)}")
        landed = {role.get(j.node_id) for j in jobs}
        print("a run landed on each node" if landed == {"head", "second node"} else
              f"the runs did not spread: {sorted(map(str, landed))}")
        if args.spread:
            spread(store, env, cluster.address, role, args.steps)
        store.close()
    finally:
        if cluster is not None:
            cluster.stop()
        pg.stop()


if __name__ == "__main__":
    main()
