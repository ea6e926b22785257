"""Live run: one run's progress and curves, refreshed every couple of seconds.

Keeping the user's zoom: Streamlit remounts a plotly chart whenever its figure
changes (streamlit#5107), so zoom survives only while the figure stays the same.
With "Follow live" on, charts redraw when new rows arrive and show the newest
window. Turning it off freezes the figures (the data stops moving under the
user), so Plotly's own zoom and pan keep working across refreshes; the step-range
slider zooms on the server and survives anything.
"""

import time

import streamlit as st

from ui.figures import metric_figure
from ui.format import eta_seconds, human_duration, progress_fraction
from ui.live import LiveSeries, view_range
from ui.widgets import empty_state, get_manager, get_store, pick_run, user_errors

store, manager = get_store(), get_manager()
REFRESH_S = 2.0
CHARTS = {  # title -> metric keys
    "Loss": ["train/loss", "val/loss"],
    "Learning rate": ["lr"],
    "Gradient norm": ["grad_norm"],
    "Tokens per second": ["tokens_per_sec"],
}
KEYS = [k for keys in CHARTS.values() for k in keys]
WINDOWS = {"whole run": None, "last 200 steps": 200, "last 1,000 steps": 1000,
           "last 5,000 steps": 5000}
ACTIVE = ("queued", "running")

st.title("Live run")
runs = store.list_runs()
if not runs:
    empty_state("No runs yet: start one on **New run** and it appears here while it trains.")

running = [r.id for r in runs if r.status == "running"]
arrived_for = st.session_state.pop("live_run", None)  # set by Start / Open on other pages
if arrived_for in {r.id for r in runs}:
    st.session_state.live_pick = arrived_for
default_id = manager.current_run or (running[0] if running else runs[0].id)
run = pick_run("Run", runs, key="live_pick", default_id=default_id)
run_id = run.id


def _series() -> LiveSeries:
    """This tab's rows of the chosen run; only newer rows are read on each refresh."""
    key = f"live_series_{run_id}"
    if key not in st.session_state:
        st.session_state[key] = LiveSeries(max_points=4000)
    return st.session_state[key]


def _refresh(series: LiveSeries) -> None:
    if series.cursor is None:
        # First look at a possibly long run: read it downsampled, in SQL.
        for k in KEYS:
            series.append(store.metrics_downsampled([run_id], k, buckets=2000))
    else:
        # Overlap the last read a little: keys of one step can land a moment apart.
        series.append(store.metrics([run_id], KEYS, after_step=series.cursor - 50))


@st.fragment(run_every=REFRESH_S if run.status in ACTIVE else None)
def status_panel() -> None:
    r = store.get_run(run_id)
    if r.status != run.status and r.status not in ACTIVE:
        st.rerun()  # the run ended: redraw the whole page once, without auto-refresh
    # Four tiles, the step on the progress bar: five tiles cut "1,200 / 20,000" to "1,20…".
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Status", r.status)
    elapsed = r.duration_s
    c2.metric("Elapsed", human_duration(elapsed))
    c3.metric("ETA", human_duration(eta_seconds(r.last_step, r.max_steps, elapsed))
              if r.status == "running" else "—")
    tps = store.metrics([run_id], ["tokens_per_sec"], after_step=max(r.last_step - 200, -1))
    c4.metric("Tokens/s", f"{tps['value'].iloc[-1]:,.0f}" if not tps.empty else "—")
    st.progress(progress_fraction(r.last_step, r.max_steps),
                text=f"Step {r.last_step:,} of {r.max_steps:,}")
    if r.status in ACTIVE:
        if st.button("Stop this run", type="secondary",
                     help="Saves a checkpoint and stops within a step; resume it later."):
            with user_errors():
                manager.stop(run_id)
                st.toast("Stop requested")
    if r.status in ("failed", "interrupted", "stopped") and r.error:
        (st.error if r.status == "failed" else st.warning)("Why it ended:")
        st.text(r.error)


status_panel()

# ---- chart controls (server-side, so they survive every refresh) -------------------------------
c1, c2, c3 = st.columns([1, 1, 2])
follow = c1.toggle("Follow live", value=True, key="follow_live",
                   help="On: charts move with new data. Off: charts freeze so you can zoom "
                        "and pan freely with the mouse.")
window_label = c2.selectbox("Show", list(WINDOWS), key="live_window", disabled=not follow)
manual = None
if not follow:
    top = max(run.last_step, 1)
    manual = c3.slider("Step range", 0, top, (0, top), key=f"live_range_{run_id}")


@st.fragment(run_every=REFRESH_S if run.status in ACTIVE else None)
def charts() -> None:
    series = _series()
    with user_errors():
        _refresh(series)
    frozen_key = f"live_frozen_{run_id}"
    # Freeze only once there is something to look at, or the charts would wait forever.
    if follow or st.session_state.get(frozen_key, series.frame).empty:
        st.session_state[frozen_key] = series.frame
    frame = series.frame if follow else st.session_state[frozen_key]
    x_range = view_range(follow, series.cursor, WINDOWS[window_label], manual)
    if frame.empty:
        st.info("Waiting for the first metrics…" if run.status in ACTIVE else
                "This run recorded no metrics.")
        return
    cols = st.columns(2)
    for i, (title, keys) in enumerate(CHARTS.items()):
        part = frame[frame["key"].isin(keys)]
        fig = metric_figure(part, title=title, names={run_id: run.name}, x_range=x_range,
                            uirevision=f"{run_id}")
        fig.update_layout(height=300)
        with cols[i % 2]:
            st.plotly_chart(fig, key=f"live_chart_{i}", config={"displaylogo": False})
    n = len(frame[frame["key"] == "train/loss"])
    st.caption(f"{n:,} train-loss points shown · refreshed {time.strftime('%H:%M:%S')}",
               help="Only rows newer than the last read are fetched each refresh.")


charts()


# ---- samples, config, checkpoint ---------------------------------------------------------------
@st.fragment(run_every=REFRESH_S * 2 if run.status in ACTIVE else None)
def samples_panel() -> None:
    samples = store.samples(run_id)
    st.subheader("Samples")
    if samples.empty:
        st.caption("Samples appear at each evaluation.")
        return
    steps = sorted(int(s) for s in samples["step"].unique())
    chosen = steps[-1]
    if len(steps) > 1:
        # Only the user moves these widgets: a value the page set itself could be undone by
        # an auto-refresh that carries the browser's older value.
        c1, c2 = st.columns([1, 3])
        if not c1.toggle("Follow newest samples", value=True, key=f"sample_follow_{run_id}",
                         help="Off: go back to the samples of an earlier evaluation."):
            chosen = c2.select_slider("Go back to step", options=steps, value=steps[-1],
                                      key=f"sample_step_{run_id}")
    shown = samples[samples["step"] <= chosen].head(3)  # newest first
    for _, row in shown.iterrows():
        st.caption(f"step {row['step']:,}")
        st.code(row["prompt"] + row["text"], language=None, wrap_lines=True)


samples_panel()

with st.expander("Config"):
    st.json(run.config)
if run.checkpoint_path:
    with st.expander("Checkpoint"):
        st.text(run.checkpoint_path)
        path = run.checkpoint_path

        def read_checkpoint() -> bytes:  # only read when the user clicks
            with open(path, "rb") as fh:
                return fh.read()

        st.download_button("Download checkpoint", read_checkpoint, file_name=f"run-{run_id}.pt")
