
"""Compute: every finished run's final val loss against the FLOPs it trained for, and the
frontier the best of them trace."""

import pandas as pd
import streamlit as st

from gptcore.metric_keys import VAL_LOSS
from storage.status import RunStatus
from ui.compute import (
    compute_figure,
    compute_frame,
    fit_caption,
    frontier_fit,
    last_values,
)
from ui.format import human_count
from ui.widgets import empty_state, get_store

store = get_store()

st.title("Compute")
st.caption("Each point is a finished run (completed, or stopped with a val loss): its last "
           "val loss against its training compute, FLOPs per token × tokens trained. The "
           "frontier holds the runs no run with less compute beat; the dashed line is "
           "loss = a·C^−b + c fitted to them.")

finished = store.list_runs(status=[RunStatus.COMPLETED, RunStatus.STOPPED])
frame = compute_frame(finished, last_values(store.metrics([r.id for r in finished], [VAL_LOSS])))
if frame.empty:
    empty_state("No finished runs yet: a run shows here once it completes, or is stopped "
                "after its first evaluation.")

fit = frontier_fit(frame)
st.plotly_chart(compute_figure(frame, fit), key="compute_chart", config={"displaylogo": False})
st.caption(fit_caption(fit))

with st.expander(f"The {len(frame)} run(s) plotted"):
    frontier = set(fit.on_frontier)
    table = pd.DataFrame({
        "id": frame["run_id"],
        "name": frame["name"],
        "status": frame["status"],
        "parameters": frame["params"].map(human_count),
        "tokens": frame["tokens"],
        "compute (FLOPs)": frame["compute"].map(lambda c: f"{c:.3g}"),
        "final val loss": frame["val_loss"],
        "on frontier": [i in frontier for i in range(len(frame))],
    }).sort_values("final val loss")
    st.dataframe(table, hide_index=True, placeholder="—", column_config={
        "tokens": st.column_config.NumberColumn(format="compact"),
        "final val loss": st.column_config.NumberColumn(format="%.4f"),
    })
