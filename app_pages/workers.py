"""Workers: every process that trains queued runs, with its device, run and heartbeat."""

import streamlit as st

from jobs.recovery import DEFAULT_DEAD_AFTER_S
from storage.schema import utcnow
from ui.widgets import get_store
from ui.workers import workers_table

store = get_store()

st.title("Workers")
st.caption("The dashboard's own worker thread and every `gptdash worker` that reaches this "
           "database. A worker silent for over a minute is shown as lost; its run becomes "
           "interrupted and can be resumed on any worker.")


@st.fragment(run_every=5.0)
def workers_panel() -> None:
    table = workers_table(store.workers(), utcnow(), DEFAULT_DEAD_AFTER_S)
    if table.empty:
        st.info("No worker has started yet: `gptdash serve` starts one, and "
                "`gptdash worker` starts more on any machine.")
        return
    st.dataframe(table, hide_index=True, width="stretch", placeholder="—")
    queued = store.queued_ids()
    st.caption(f"Queue: {', '.join(f'#{i}' for i in queued)}" if queued else "Queue: empty")


workers_panel()
