"""Workers: every process that trains queued runs, with its device, run and heartbeat; and,
when GPTDASH_RAY_ADDRESS names a Ray cluster, its nodes and the gptdash jobs on them."""

import streamlit as st

from jobs import ray_cluster
from jobs.errors import USER_ERRORS
from jobs.recovery import DEFAULT_DEAD_AFTER_S
from storage.schema import utcnow
from ui.ray_cluster import jobs_table, nodes_table
from ui.widgets import get_store, rerun_if_database_away
from ui.workers import ENDED_STATES, workers_table

store = get_store()
JOBS_SHOWN = 50  # a long-lived cluster keeps every job it ever ran

st.title("Workers")
st.caption("The worker process that `gptdash serve` starts beside the dashboard, and every "
           "`gptdash worker` that reaches this database. A worker whose process is gone, or "
           "that falls silent, is lost; its run becomes interrupted and resumes by itself "
           "from its last checkpoint on a free worker, up to its limit of automatic resumes "
           "(else resume it from Runs).")


@st.fragment(run_every=5.0)
def workers_panel() -> None:
    with rerun_if_database_away():
        workers = store.workers()
        queued = store.queued_ids()
    table = workers_table(workers, utcnow(), DEFAULT_DEAD_AFTER_S)
    gone = table["state"].isin(ENDED_STATES)
    if gone.all():
        st.info(f"{'No worker is running' if len(table) else 'No worker has started yet'}: "
                "`gptdash serve` starts one, and `gptdash worker` starts more on any machine.")
    # Every worker that ever ran keeps its row: the ones gone are shown only on request.
    show_gone = gone.any() and st.toggle(f"Show stopped and lost workers ({int(gone.sum())})",
                                         key="workers_show_gone")
    shown = table if show_gone else table[~gone]
    if not shown.empty:
        st.dataframe(shown, hide_index=True, width="stretch", placeholder="—")
    st.caption(f"Queue: {', '.join(f'#{i}' for i in queued)}" if queued else "Queue: empty")


workers_panel()


@st.fragment(run_every=5.0)
def ray_panel(address: str) -> None:
    try:
        nodes = ray_cluster.nodes(address)
        jobs = ray_cluster.jobs(address)
    except USER_ERRORS as exc:  # the cluster is down or the address wrong: say so, in a line
        st.warning(str(exc))
        return
    alive = [n for n in nodes if n.alive]
    st.caption(f"{len(alive)} of {len(nodes)} node(s) alive · "
               f"{sum(n.cpus for n in alive):g} CPUs · {sum(n.gpus for n in alive):g} GPUs")
    st.dataframe(nodes_table(nodes, jobs), hide_index=True, width="stretch")
    if not jobs:
        st.caption("No gptdash job on this cluster yet.")
        return
    if len(jobs) > JOBS_SHOWN:
        st.caption(f"The {JOBS_SHOWN} newest of {len(jobs)} gptdash jobs:")
    st.dataframe(jobs_table(jobs[:JOBS_SHOWN], nodes, utcnow()), hide_index=True,
                 width="stretch",
                 column_config={"run": st.column_config.LinkColumn(
                     "run", display_text=r"run=(\d+)", help="Opens the run on Live run")})


ray_address = ray_cluster.cluster_address()
if ray_address:
    st.subheader("Ray cluster")
    st.caption(f"Runs started with Run on: Ray cluster (`--on ray`) are Ray jobs on the cluster at "
               f"{ray_address}; each job trains one run and records it in the database like any "
               "worker. A run's link opens it on Live run.")
    ray_panel(ray_address)
