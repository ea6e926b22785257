"""The Workers view's Ray tables: the cluster's nodes, and the gptdash jobs on them linked to
their runs (records from ``jobs.ray_cluster``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pandas as pd

from ui.format import DASH, human_duration

NODE_COLUMNS = ["node", "role", "state", "CPUs", "GPUs", "gptdash jobs"]
JOB_COLUMNS = ["run", "attempt", "status", "node", "started", "ran for", "Ray says"]
ACTIVE_JOB = ("PENDING", "RUNNING")  # Ray's JobStatus values of a job not yet ended


def node_label(node: Any) -> str:
    """A node's address and the start of its id: nodes of one machine share the address."""
    return f"{node.name} · {node.node_id[:8]}"


def run_link(run_id: int) -> str:
    """The Live page of a run, relative to the app's own address."""
    return f"live?run={run_id}"


def _count(x: float) -> str:
    return f"{x:g}"


def ray_says(message: str) -> str:
    """Ray's word on a job, its first line: a failed job's message goes on with its logs."""
    return (message or "").strip().split("\n", 1)[0] or DASH


def job_summary(job: Any) -> str:
    """One line on a run's Ray job for the Live page: which, how it is doing, and why."""
    line = f"Ray job `{job.submission_id}` (attempt {job.attempt}): {job.status.lower()}"
    says = ray_says(job.message)
    return line if says == DASH else f"{line} · {says}"


def nodes_table(nodes: Sequence[Any], jobs: Sequence[Any]) -> pd.DataFrame:
    """One row per node (records with node_id, name, alive, is_head, cpus, gpus), with the
    runs whose job is pending or running there."""
    active: dict[str, list[str]] = {}
    for job in jobs:
        if job.status in ACTIVE_JOB and job.node_id:
            active.setdefault(job.node_id, []).append(f"#{job.run_id}")
    rows = [{"node": node_label(n), "role": "head" if n.is_head else "worker",
             "state": "alive" if n.alive else "dead", "CPUs": _count(n.cpus),
             "GPUs": _count(n.gpus), "gptdash jobs": ", ".join(active.get(n.node_id, [])) or DASH}
            for n in nodes]
    return pd.DataFrame(rows, columns=NODE_COLUMNS)


def jobs_table(jobs: Sequence[Any], nodes: Sequence[Any], now: datetime) -> pd.DataFrame:
    """One row per gptdash job (records from ``jobs.ray_cluster.jobs``), in the order given;
    ``run`` holds the link to the run's Live page."""
    names = {n.node_id: node_label(n) for n in nodes}
    rows = []
    for job in jobs:
        end = job.ended_at or (now if job.status in ACTIVE_JOB else None)
        rows.append({
            "run": run_link(job.run_id), "attempt": job.attempt, "status": job.status.lower(),
            "node": names.get(job.node_id, job.node_id[:8] if job.node_id else DASH),
            "started": job.started_at.astimezone().strftime("%Y-%m-%d %H:%M:%S")
            if job.started_at else DASH,
            "ran for": human_duration((end - job.started_at).total_seconds())
            if end and job.started_at else DASH,
            "Ray says": ray_says(job.message),
        })
    return pd.DataFrame(rows, columns=JOB_COLUMNS)
