"""Compare: overlay runs' curves, see which hyperparameters differ and what they did."""

import pandas as pd
import streamlit as st

from gptcore.config import TrainConfig
from gptcore.errors import GptdashError
from ui.config_diff import differing_params
from ui.figures import X_TITLES, hparam_figure, metric_figure, x_axis_frame
from ui.widgets import empty_state, get_store

store = get_store()
POINTS_PER_CURVE = 2000

st.title("Compare")
runs = store.list_runs()
if not runs:
    empty_state("No runs yet: start one on **New run**, then compare runs here.")

by_id = {r.id: r for r in runs}
if "compare_ids" in st.session_state:  # arriving from the Runs page's selection
    st.session_state.compare_pick = [i for i in st.session_state.pop("compare_ids") if i in by_id]
elif "compare_pick" not in st.session_state:
    st.session_state.compare_pick = [r.id for r in runs[:2]]
else:
    st.session_state.compare_pick = [i for i in st.session_state.compare_pick if i in by_id]
# No status in the chips: the browser keeps a chosen chip's label, which would go stale.
chosen = st.multiselect("Runs", list(by_id), key="compare_pick",
                        format_func=lambda i: f"#{i} {by_id[i].name}")
if not chosen:
    st.info("Pick one or more runs to compare.")
    st.stop()

keys = store.metric_keys(chosen)
if not keys:
    st.info("The chosen runs have no metrics yet.")
    st.stop()
c1, c2, c3, c4, c5 = st.columns([2, 2, 1, 1, 2])
default_key = "val/loss" if "val/loss" in keys else keys[0]
metric = c1.selectbox("Metric", keys, index=keys.index(default_key))
x_mode = c2.radio("X axis", list(X_TITLES), format_func=lambda m: X_TITLES[m], horizontal=True)
log_x = c3.toggle("log x")
log_y = c4.toggle("log y")
smoothing = c5.slider("Smoothing (EMA)", 0.0, 0.99, 0.0, 0.01,
                      help="0 shows the raw curve; higher smooths more. The raw curve stays as "
                           "a faint shadow.")

configs: dict[int, TrainConfig] = {}
for i in chosen:
    try:
        configs[i] = TrainConfig.from_dict(by_id[i].config)
    except GptdashError:
        pass  # a config from an older version; the run still plots, it just has no diff row
frame = store.metrics_downsampled(chosen, metric, buckets=POINTS_PER_CURVE // 2)
tokens_per_step = {i: c.tokens_per_step for i, c in configs.items()}
frame = x_axis_frame(frame, x_mode, tokens_per_step)
names = {i: by_id[i].name for i in chosen}
fig = metric_figure(frame, title=metric, names=names, x="x", log_x=log_x, log_y=log_y,
                    smoothing=smoothing, x_title=X_TITLES[x_mode],
                    uirevision=f"{metric}-{x_mode}")
fig.update_layout(height=460)
st.plotly_chart(fig, key="compare_chart", config={"displaylogo": False})
st.caption(f"Up to {POINTS_PER_CURVE:,} points per curve; long series keep each bucket's "
           "minimum and maximum, so spikes survive.")


def export_csv() -> bytes:
    full = store.metrics(chosen, [metric])
    full.insert(1, "run_name", full["run_id"].map(names))
    return full.to_csv(index=False).encode("utf-8")


st.download_button("Export these series as CSV (full resolution)", export_csv,
                   file_name=f"gptdash-{metric.replace('/', '_')}.csv", mime="text/csv")

st.subheader("Hyperparameters that differ")
flat = {f"#{i} {by_id[i].name}": c.flat() for i, c in configs.items()}
diff = differing_params(flat) if len(flat) > 1 else pd.DataFrame()
if diff.empty:
    st.caption("Pick at least two runs with different settings to see what differs.")
else:
    st.dataframe(diff)

st.subheader("Val loss against a hyperparameter")
if diff.empty:
    st.caption("Appears when the chosen runs differ in some setting.")
else:
    param = st.selectbox("Hyperparameter", list(diff.index))
    which = st.radio("Val loss", ["best", "final"], horizontal=True)
    rows = []
    for i, c in configs.items():
        if which == "best":
            value = by_id[i].best_val_loss
        else:
            last = store.metrics([i], ["val/loss"], after_step=max(by_id[i].last_step - 1, 0) - 1)
            value = float(last["value"].iloc[-1]) if not last.empty else None
        rows.append({"name": by_id[i].name, param: c.flat()[param],
                     f"{which} val loss": value})
    points = pd.DataFrame(rows).dropna(subset=[f"{which} val loss"])
    st.plotly_chart(hparam_figure(points, param, f"{which} val loss"), key="hparam_chart")
