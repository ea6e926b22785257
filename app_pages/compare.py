
"""Compare: overlay runs' curves with their events and forecasts, see which
hyperparameters differ and what they did, and read the runs' samples side by side."""

import pandas as pd
import streamlit as st

from analysis.forecast import BAND_LEVEL, Forecast
from gptcore.config import TrainConfig
from gptcore.errors import GptdashError
from gptcore.metric_keys import VAL_LOSS
from gptcore.sampling import MAX_NEW_TOKENS, SamplingConfig
from jobs.forecasting import run_forecast
from storage.names import one_line
from storage.status import RunStatus
from ui.config_diff import differing_params
from ui.defaults import first_differing, newest_finished
from ui.events import CROWDING, event_traces, events_table, is_loss
from ui.figures import X_TITLES, hparam_figure, metric_figure, run_colors, x_axis_frame
from ui.forecast_view import forecast_table, forecast_traces, try_forecast
from ui.groups import grouped_figure, seed_groups
from ui.plain_text import chart_text, no_bidi, plain
from ui.samples import sample_steps, samples_at
from ui.widgets import empty_state, get_store, sample_from_run

store = get_store()
POINTS_PER_CURVE = 2000
SAMPLES_PER_ROW = 3


def forecast_of(run_id: int) -> tuple[Forecast | None, str | None, float | None]:
    """The run's forecast, why there is none, and its last val loss. The forecast is the
    one Live and ``gptdash forecast`` show: ``run_forecast`` keeps it until a new
    evaluation or a finished relative changes it."""
    val = store.metrics([run_id], [VAL_LOSS])
    last_val = float(val["value"].iloc[-1]) if not val.empty else None
    forecast, failure = try_forecast(lambda: run_forecast(store, run_id))
    return forecast, failure, last_val


st.title("Compare")
runs = store.list_runs()
if not runs:
    empty_state("No runs yet: start one on **New run**, then compare runs here.")

by_id = {r.id: r for r in runs}
if "compare_ids" in st.session_state:  # arriving from the Runs page's selection
    st.session_state.compare_pick = [i for i in st.session_state.pop("compare_ids") if i in by_id]
elif "compare_pick" not in st.session_state:
    st.session_state.compare_pick = newest_finished(runs, 2)
else:
    st.session_state.compare_pick = [i for i in st.session_state.compare_pick if i in by_id]
# No status in the chips: the browser keeps a chosen chip's label, which would go stale.
chosen = st.multiselect("Runs", list(by_id), key="compare_pick",
                        format_func=lambda i: f"#{i} {one_line(by_id[i].name)}")
if not chosen:
    st.info("Pick one or more runs to compare.")
    st.stop()

keys = store.metric_keys(chosen)
if not keys:
    st.info("The chosen runs have no metrics yet.")
    st.stop()
c1, c2, c3, c4, c5, c6 = st.columns([2, 2, 1, 1, 1.5, 2])
default_key = VAL_LOSS if VAL_LOSS in keys else keys[0]
metric = c1.selectbox("Metric", keys, index=keys.index(default_key))
x_mode = c2.radio("X axis", list(X_TITLES), format_func=lambda m: X_TITLES[m], horizontal=True)
log_x = c3.toggle("log x")
log_y = c4.toggle("log y")
group_seeds = c5.checkbox("group seeds", key="cmp_group_seeds",
                          help="Runs that differ only in seed as one line: their mean, in a "
                               "band of ±1 standard deviation, on the steps they all have.")
smoothing = c6.slider("Smoothing (EMA)", 0.0, 0.99, 0.0, 0.01,
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
groups = [g for g in seed_groups({i: by_id[i].config for i in chosen}) if len(g) > 1]
if group_seeds and groups:
    # Full resolution: downsampling keeps different steps of each run, and a mean needs
    # the steps every member has.
    members = [i for g in groups for i in g]
    full = x_axis_frame(store.metrics(members, [metric]), x_mode, tokens_per_step)
    fig = grouped_figure(fig, frame, full, groups, names=names, x="x", smoothing=smoothing,
                         max_points=POINTS_PER_CURVE)


forecasts = {i: forecast_of(i) for i in chosen}
if metric == VAL_LOSS and x_mode != "time":
    colors = run_colors(chosen)
    for i in chosen:
        forecast = forecasts[i][0]
        if forecast is not None and by_id[i].status == RunStatus.RUNNING:
            top = frame.loc[frame["run_id"] == i, "value"].max()
            fig.add_traces(forecast_traces(
                forecast, colors[i], name=f"{chart_text(names[i])} · forecast",
                x_per_step=tokens_per_step.get(i, 1) if x_mode == "tokens" else 1,
                clip=(0.0, float(top)) if pd.notna(top) else None))
events = store.events(chosen) if is_loss(metric) else pd.DataFrame()
if not events.empty:
    fig.add_traces(event_traces(events, frame, names=names, x="x", leave_out=CROWDING))
fig.update_layout(height=460)
st.plotly_chart(fig, key="compare_chart", config={"displaylogo": False})
st.caption(f"Up to {POINTS_PER_CURVE:,} points per curve; long series keep each bucket's "
           "minimum and maximum, so spikes survive."
           + (f" {len(groups)} group(s) of runs that differ only in seed: tick *group seeds* "
              "to draw each as its mean and ±1 std band." if groups and not group_seeds else "")
           + (" Dotted: the forecast of each running run, with its band." if metric == VAL_LOSS
              else ""))
if not events.empty:
    listed = events_table(events, {i: plain(n) for i, n in names.items()})  # st.table: Markdown
    with st.expander(f"Events ({len(listed):,})"):
        st.caption("Best checkpoints are not drawn; each run's latest is listed.")
        st.table(listed, hide_index=True, border="horizontal")

st.subheader("Forecast final val loss")
rows = [{"run": plain(f"#{i} {names[i]}"), "status": by_id[i].status, "last_val": forecasts[i][2],
         "forecast": forecasts[i][0]} for i in chosen]
st.table(forecast_table(rows), hide_index=True, border="horizontal")
missing = [plain(f"#{i}: {forecasts[i][1]}") for i in chosen if forecasts[i][1]]
if missing:
    st.caption(" · ".join(missing))
else:
    st.caption("A fit of each run's val-loss curve, aware of its lr schedule; the band holds "
               f"one evaluation at max_steps with {BAND_LEVEL:.0%} probability. Runs with too "
               "few evaluations have none yet.")


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
    # A run a row, a parameter a column: five runs as columns were wider than the page at
    # 1400 px and cut the fifth; rows take any number of runs.
    st.dataframe(diff.T, column_config={
        "_index": st.column_config.TextColumn("run", width="medium")})

st.subheader("Val loss against a hyperparameter")
if diff.empty:
    st.caption("Appears when the chosen runs differ in some setting.")
else:
    with_loss = [f"#{i} {by_id[i].name}" for i in configs if by_id[i].best_val_loss is not None]
    params = list(diff.index)
    # The first setting that tells the plotted runs apart, not one only a run without a
    # loss differs in (the chart would then show one column of points).
    param = st.selectbox("Hyperparameter", params,
                         index=params.index(first_differing(diff, with_loss)))
    which = st.radio("Val loss", ["best", "final"], horizontal=True)
    rows = []
    for i, c in configs.items():
        if which == "best":
            value = by_id[i].best_val_loss
        else:
            last = store.metrics([i], [VAL_LOSS], after_step=max(by_id[i].last_step - 1, 0) - 1)
            value = float(last["value"].iloc[-1]) if not last.empty else None
        rows.append({"name": by_id[i].name, param: c.flat()[param],
                     f"{which} val loss": value})
    points = pd.DataFrame(rows).dropna(subset=[f"{which} val loss"])
    st.plotly_chart(hparam_figure(points, param, f"{which} val loss"), key="hparam_chart")

st.subheader("Samples")
st.caption("Every chosen run continues the same prompt with the same settings and seed.")
prompt = st.text_area("Prompt", value="The ", height=80, key="cmp_prompt")
s1, s2, s3, s4, s5 = st.columns(5)
max_new = s1.number_input("Max new tokens", min_value=1, max_value=MAX_NEW_TOKENS, value=100,
                          key="cmp_max_new")
temperature = s2.slider("Temperature", 0.0, 2.0, 0.8, 0.05, key="cmp_temperature",
                        help="0 always picks the likeliest.")
top_k = s3.number_input("Top-k (0 = off)", min_value=0, max_value=100_000, value=40,
                        key="cmp_top_k")
seed = s4.number_input("Seed", min_value=0, max_value=2**31 - 1, value=0, key="cmp_seed")
which = s5.radio("Checkpoint", ["best", "latest"], horizontal=True, key="cmp_which",
                 help="best: the weights with the lowest val loss so far; latest: the last "
                      "weights saved.")
if st.button("Generate", type="primary", key="cmp_generate"):
    sampling = SamplingConfig(max_new_tokens=int(max_new), temperature=float(temperature),
                              top_k=int(top_k), seed=int(seed))
    for start in range(0, len(chosen), SAMPLES_PER_ROW):
        row = chosen[start:start + SAMPLES_PER_ROW]
        for i, column in zip(row, st.columns(SAMPLES_PER_ROW), strict=False):
            with column:
                sample_from_run(by_id[i], which, prompt, sampling)

st.markdown("**Recorded during training**")
recorded = {i: store.samples(i) for i in chosen}
steps, common = sample_steps(recorded)
if not steps:
    st.caption("The chosen runs recorded no samples.")
else:
    step = steps[-1]
    latest = st.toggle("Each run's latest", key="cmp_sample_latest",
                       help="On: every run's newest samples, whatever their step. Off: all "
                            "runs at one step.")
    if len(steps) > 1 and not latest:
        # Keyed by the runs: another choice of runs has other steps to offer.
        step = st.select_slider("At step", options=steps, value=steps[-1],
                                key=f"cmp_sample_step_{'-'.join(map(str, chosen))}",
                                help="Steps at which every chosen run has samples." if common
                                else "No step is common to all runs: each shows its nearest.")
    for start in range(0, len(chosen), SAMPLES_PER_ROW):
        row = chosen[start:start + SAMPLES_PER_ROW]
        for i, column in zip(row, st.columns(SAMPLES_PER_ROW), strict=False):
            with column:
                st.text(f"#{i} {one_line(names[i])}")
                own = recorded[i]
                newest = int(own["step"].max()) if latest and not own.empty else step
                shown = samples_at(own, newest)
                if shown.empty:
                    st.caption("No samples.")
                for _, sample in shown.iterrows():
                    st.caption(f"step {int(sample['step']):,}")
                    st.code(no_bidi(sample["prompt"] + sample["text"]), language=None,
                            wrap_lines=True)
