
"""Live run: one run's progress and curves, refreshed every couple of seconds.

One fragment refreshes the status, charts and samples together, so each tick is one
script run. A tick reads only rows newer than the last, and rebuilds the four
figures only when those brought something new (or the view changed); otherwise it
sends the figures it built before. A run that has ended, or a tab that is hidden,
gets no ticks at all. The Loss chart's extras follow the same rule: events (markers
on the curve, a table below) are read only when their count moved (one COUNT a tick:
a roll-back rewrites old steps, so new rows alone would show its marker late), and the val-loss
forecast (a dotted curve with its band, as far ahead as the run has come, to
max_steps at most) is refitted only when a new
evaluation arrived.

Keeping the user's zoom: Streamlit remounts a plotly chart whenever its figure
changes (streamlit#5107), so zoom survives only while the figure stays the same.
With "Follow live" on, charts redraw when new rows arrive and show the newest
window. Turning it off freezes the figures (the data stops moving under the
user), so Plotly's own zoom and pan keep working across refreshes; the step-range
slider zooms on the server and survives anything.
"""

import time
from collections.abc import Hashable

import pandas as pd
import streamlit as st

from analysis.forecast import Forecast, eta_to_loss
from gptcore.config import TrainConfig
from gptcore.errors import GptdashError
from gptcore.metric_keys import (
    GRAD_NORM,
    LR,
    TOKENS_PER_SEC,
    TRAIN_LOSS,
    VAL_LOSS,
)
from gptcore.tokens import in_progress
from jobs import actions, ray_cluster
from jobs.calibration import submit_calibration
from jobs.errors import USER_ERRORS
from jobs.forecasting import run_forecast
from jobs.recovery import attempt_summary
from storage import home
from storage.status import ACTIVE, Executor, RunStatus
from storage.store import RunRecord
from storage.tags import format_tags
from ui.corpora import look_all, progress_for
from ui.ended import ENDED_BY, why_it_ended
from ui.epochs import epochs_short, epochs_text, run_epochs
from ui.eta import run_eta, run_pace
from ui.events import event_traces, events_table
from ui.figures import PALETTE
from ui.forecast_view import (
    eta_text,
    forecast_summary,
    forecast_traces,
    try_forecast,
)
from ui.format import human_duration, progress_fraction
from ui.live import (
    LastBuilt,
    LiveCharts,
    LiveSeries,
    refresh_every,
    trained_by,
    view_range,
)
from ui.paths import shown_path
from ui.plain_text import no_bidi, plain
from ui.ray_cluster import job_summary
from ui.widgets import (
    empty_state,
    export_panel,
    get_store,
    pick_run,
    rerun_if_database_away,
    tab_visible,
    user_errors,
)

store = get_store()
CHARTS = {  # title -> metric keys
    "Loss": [TRAIN_LOSS, VAL_LOSS],
    "Learning rate": [LR],
    "Gradient norm": [GRAD_NORM],
    "Tokens per second": [TOKENS_PER_SEC],
}
KEYS = [k for keys in CHARTS.values() for k in keys]
WINDOWS = {"whole run": None, "last 200 steps": 200, "last 1,000 steps": 1000,
           "last 5,000 steps": 5000}
CHART_HEIGHT = 300
# Points kept per series (up to twice as many between two thinnings): more than a half-width
# chart has pixels. The browser redraws every chart at each tick; at 2,000 (4,000 before a
# thinning) a software-rendered tab on a busy two-core box took seconds a tick.
LIVE_POINTS = 1000
SAMPLES_EVERY_S = 4.0  # samples come with evaluations, far apart: no need to look each tick
LOSS_KEYS = CHARTS["Loss"]
EVENTS_SHOWN, EVENTS_HEIGHT = 6, 260  # a longer list scrolls
CHECK_AT = 0.4  # an ended run's forecast made from this fraction of it, beside what happened
FAMILY_CHECK_S = 30  # how often a shown forecast looks again for finished relatives
RAY_JOB_EVERY_S = 10.0  # a Ray job's log changes little between two looks

st.title("Live run")
runs = store.list_runs()
if not runs:
    empty_state("No runs yet: start one on **New run** and it appears here while it trains.")

running = [r.id for r in runs if r.status == RunStatus.RUNNING]
arrived_for = st.session_state.pop("live_run", None)  # set by Start / Open on other pages
# A link to /live?run=3 opens run 3, once: after that the picker follows the user.
asked = st.query_params.get("run", "")
if arrived_for is None and asked.isdigit() and st.session_state.get("live_asked") != asked:
    arrived_for = int(asked)
st.session_state.live_asked = asked
if arrived_for in {r.id for r in runs}:
    st.session_state.live_pick = arrived_for
default_id = running[0] if running else runs[0].id
run = pick_run("Run", runs, key="live_pick", default_id=default_id)
run_id = run.id
tick_every = refresh_every(run.status, tab_visible(), resume_due=run.resume_after is not None)


def _kept(name: str, make):
    """This tab's object ``name`` for the chosen run, made on first use."""
    key = f"live_{name}_{run_id}"
    if key not in st.session_state:
        st.session_state[key] = make()
    return st.session_state[key]


# A full page run (a click, a new pick) reads the samples afresh; ticks reuse them a while.
st.session_state["live_page_runs"] = st.session_state.get("live_page_runs", 0) + 1


def _refresh(series: LiveSeries) -> None:
    if series.cursor is None:
        # First look at a possibly long run: read it downsampled, in SQL.
        for k in KEYS:
            series.append(store.metrics_downsampled([run_id], k, buckets=2000))
    else:
        # Overlap the last read a little: keys of one step can land a moment apart.
        series.append(store.metrics([run_id], KEYS, after_step=series.cursor - 50))


def eta(r: RunRecord) -> float | None:
    """Seconds left: the steps, evaluations and saves to go at what the run has spent."""
    return run_eta(store, r, time.time())


def status(r: RunRecord, series: LiveSeries) -> None:
    # Four tiles, the step on the progress bar: five tiles cut "1,200 / 20,000" to "1,20…".
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Status", r.status)
    elapsed = r.duration_s
    c2.metric("Elapsed", human_duration(elapsed))
    c3.metric("ETA", human_duration(eta(r)) if r.status == RunStatus.RUNNING else "—")
    tps = series.latest(TOKENS_PER_SEC)
    c4.metric("Tokens/s", f"{tps:,.0f}" if tps is not None else "—")
    st.progress(progress_fraction(r.last_step, r.max_steps),
                text=f"Step {r.last_step:,} of {r.max_steps:,}")
    who = trained_by(r.worker, r.device, r.owner_host)
    if who:
        st.caption(plain(who))  # a worker's name, as its owner typed it
    if r.tags:
        st.caption(f"Tags: {plain(format_tags(r.tags))}")
    if r.attempts > 1 or r.resume_after is not None:  # what an automatic resume did
        summary = attempt_summary(r)
        st.caption(plain(summary[0].upper() + summary[1:]))
    if r.status in ACTIVE:
        if st.button("Stop this run", type="secondary",
                     help="Saves a checkpoint and stops within a step; resume it later."):
            with user_errors():
                actions.stop(store, run_id)
                st.toast("Stop requested")
    if r.status in ENDED_BY and (r.error or r.status == RunStatus.CANCELLED):
        box = st.error if r.status == RunStatus.FAILED else (
            st.info if r.status == RunStatus.CANCELLED else st.warning)
        box(why_it_ended(r.status, r.error, resume_due=r.resume_after is not None))


def loss_overlays(series: LiveSeries, events: pd.DataFrame,
                  forecast: Forecast | None) -> list[dict]:
    """Event markers on the loss curves and the forecast's band and dotted curve."""
    frame = series.frame
    loss = frame[frame["key"].isin(LOSS_KEYS)] if not frame.empty else frame
    traces = event_traces(events, loss, names={run_id: run.name})
    if forecast is not None and forecast.upto_step < forecast.max_steps:  # a road ahead
        top = float(loss["value"].max()) if not loss.empty else None
        # As far ahead as the run has come (to max_steps at most): early in a long run the
        # whole road would squash the curve into the chart's left edge and stop the axis
        # following new steps. The final value is in the caption below the charts.
        ahead = 2 * max(series.cursor or 0, forecast.upto_step)
        traces += forecast_traces(forecast, PALETTE[0], clip=(0.0, top) if top else None,
                                  until=ahead)
    return traces


def charts(series: LiveSeries, overlays: tuple[Hashable, list[dict]]) -> None:
    if series.frame.empty and run.status not in ACTIVE:
        st.info("This run recorded no metrics.")  # and never will: no controls to offer
        return
    # Chart controls act on the server, so they survive every refresh.
    c1, c2, c3 = st.columns([1, 1, 2])
    follow = c1.toggle("Follow live", value=True, key="follow_live",
                       help="On: charts move with new data. Off: charts freeze so you can zoom "
                            "and pan freely with the mouse.")
    window_label = c2.selectbox("Show", list(WINDOWS), key="live_window", disabled=not follow)
    # Freeze only once there is something to look at, or the charts would wait forever.
    frozen_key = f"live_frozen_{run_id}"
    if follow or st.session_state.get(frozen_key, (0, series.frame))[1].empty:
        st.session_state[frozen_key] = (series.version, series.frame, series.cursor or 0,
                                        overlays)
    version, frame, frozen_at, (overlay_key, loss_extra) = st.session_state[frozen_key]
    manual = None
    if not follow:
        # Up to the frozen data's last step: a bound that moved each tick would reset the slider.
        top = max(frozen_at, 1)
        manual = c3.slider("Step range", 0, top, (0, top), key=f"live_range_{run_id}")
    if frame.empty:
        preparing = run.status in ACTIVE and progress_for(
            str(run.config.get("corpus")), str(run.config.get("tokenizer")),
            in_progress(home.cache_dir()))
        if preparing:  # the worker tokenizes the corpus before the first step
            st.progress(preparing.fraction, text=plain(preparing.line()))
        else:
            st.info("Waiting for the first metrics…" if run.status in ACTIVE else
                    "This run recorded no metrics.")
        return
    x_range = view_range(follow, series.cursor, WINDOWS[window_label], manual)
    live_charts = _kept("charts", lambda: LiveCharts(CHARTS, {run_id: run.name},
                                                     uirevision=str(run_id), height=CHART_HEIGHT))
    figures = live_charts.show((version, overlay_key, x_range), frame, x_range,
                               {"Loss": loss_extra})
    cols = st.columns(2)
    for i, fig in enumerate(figures):
        with cols[i % 2]:
            st.plotly_chart(fig, key=f"live_chart_{i}", config={"displaylogo": False})
    points = int((frame["key"] == TRAIN_LOSS).sum())
    st.caption(f"{points:,} train-loss points shown · refreshed {time.strftime('%H:%M:%S')}",
               help="Only rows newer than the last read are fetched each refresh, and the "
                    "charts change only when those brought something new.")


def events_list(events: pd.DataFrame) -> None:
    table = events_table(events)
    if table.empty:
        return
    st.caption("Events (only the latest best checkpoint is listed)")
    st.table(table, hide_index=True, border="horizontal",
             height=EVENTS_HEIGHT if len(table) > EVENTS_SHOWN else "content")


def forecast_panel(r: RunRecord, series: LiveSeries, forecast: Forecast | None,
                   failure: str | None) -> None:
    if forecast is None:
        st.caption(failure or "The val-loss forecast appears after a few evaluations.")
        return
    st.caption(f":material/trending_down: {forecast_summary(forecast)}",
               help="A fit of the val-loss curve aware of the lr schedule (analysis.forecast). "
                    "Calibrated: the law's shape comes from the finished runs of this run's "
                    "family, and the band from how far forecasts missed on them "
                    f"({forecast.level:.0%} of them fell inside a band this wide).")
    if forecast.note:
        st.caption(f"Note: {forecast.note}.")
    if not forecast.calibrated and st.button(
            "Queue a calibration run", key=f"calibrate_{run_id}", icon=":material/tune:",
            help="A short relative of this run (its lr held, then a quick cool-down, half "
                 "its steps). Once it completes, this run's forecast learns the law's shape "
                 "from it and foresees the lr decay before it shows."):
        with user_errors():
            cal_id = submit_calibration(store, run_id)
            st.toast(f"Calibration run #{cal_id} queued")
    c1, c2 = st.columns([1, 3], vertical_alignment="bottom")
    target = c1.number_input("ETA to val loss", min_value=0.0, value=None, step=0.05,
                             format="%.3f", key=f"eta_target_{run_id}",
                             placeholder="e.g. 2.0")
    if target is not None:
        measured = run_pace(store, r) if r.status in ACTIVE else None
        pace = measured.mean_step_s if measured else None
        # The step is kept until the fit or the target changes: finding it scans every step
        # to max_steps, which on a long run is not a per-tick job.
        step = _kept("eta", LastBuilt).get((id(forecast), target),
                                           lambda: eta_to_loss(forecast, target))
        c2.write(eta_text(forecast, target, last_step=r.last_step, seconds_per_step=pace,
                          step=step))
    if r.status == RunStatus.COMPLETED and r.max_steps > 0:
        check = _kept("forecast_check", LastBuilt).get(
            r.status, lambda: try_forecast(lambda: run_forecast(
                store, run_id, upto=int(CHECK_AT * r.max_steps)))[0])
        last = series.latest(VAL_LOSS)
        if check is not None and last is not None:
            st.caption(f"Made at step {check.upto_step:,} ({CHECK_AT:.0%} of the run), the "
                       f"forecast was {check.predicted_final:.3g} ({check.low:.3g}–"
                       f"{check.high:.3g}); the last evaluation gave {last:.3g}.")


def samples() -> None:
    frame = _kept("samples", LastBuilt).get(
        (st.session_state["live_page_runs"], int(time.monotonic() // SAMPLES_EVERY_S)),
        lambda: store.samples(run_id))
    st.subheader("Samples")
    if frame.empty:
        st.caption("Samples appear at each evaluation." if run.status in ACTIVE else
                   "This run recorded no samples.")
        return
    steps = sorted(int(s) for s in frame["step"].unique())
    chosen = steps[-1]
    if len(steps) > 1:
        # Only the user moves these widgets: a value the page set itself could be undone by
        # an auto-refresh that carries the browser's older value.
        c1, c2 = st.columns([1, 3])
        if not c1.toggle("Follow newest samples", value=True, key=f"sample_follow_{run_id}",
                         help="Off: go back to the samples of an earlier evaluation."):
            chosen = c2.select_slider("Go back to step", options=steps, value=steps[-1],
                                      key=f"sample_step_{run_id}")
    shown = frame[frame["step"] <= chosen].head(3)  # newest first
    for _, row in shown.iterrows():
        st.caption(f"step {row['step']:,}")
        st.code(no_bidi(row["prompt"] + row["text"]), language=None, wrap_lines=True)


@st.fragment(run_every=tick_every)
def live() -> None:
    """One tick: the run's row, the rows new since the last tick, and what they change."""
    with rerun_if_database_away():
        tick()


def data_seen(r: RunRecord) -> str | None:
    """How many epochs of its corpus the run trains on, or None (an unreadable corpus or
    config: Live still shows the run)."""
    try:
        cfg = TrainConfig.from_dict(r.config)
    except GptdashError:
        return None
    epochs = run_epochs(cfg, look_all([cfg.corpus], home.cache_dir())[cfg.corpus])
    return None if epochs is None else f"Data: {epochs_short(epochs)}, {epochs_text(epochs)}"


def tick() -> None:
    r = store.get_run(run_id)
    if r.status != run.status and r.status not in ACTIVE:
        st.rerun()  # the run ended: redraw the whole page once, without the timer
    series = _kept("series", lambda: LiveSeries(max_points=LIVE_POINTS))
    with user_errors():
        _refresh(series)
    # Events come with new rows; a page run (a click, the run ending) looks again too.
    read_events = _kept("events", LastBuilt)
    events = read_events.get((store.event_count([run_id]), st.session_state["live_page_runs"]),
                             lambda: store.events([run_id]))
    # The forecast changes with a new evaluation, the run's end (a finished run has no
    # decay still to come), or when a relative finishes (looked for every FAMILY_CHECK_S:
    # the family is read from the database).
    fit = _kept("forecast", LastBuilt)
    forecast, failure = fit.get(
        (series.latest_step(VAL_LOSS), r.status, int(time.monotonic() // FAMILY_CHECK_S)),
        lambda: try_forecast(lambda: run_forecast(store, run_id)))
    overlay_key = (series.version, read_events.builds, fit.builds)
    overlays = _kept("overlays", LastBuilt).get(
        overlay_key, lambda: loss_overlays(series, events, forecast))
    status(r, series)
    charts(series, (overlay_key, overlays))
    forecast_panel(r, series, forecast, failure)
    events_list(events)
    samples()


if seen := data_seen(run):  # once a page run: it reads the corpus's stat and the cache
    st.caption(plain(seen))  # plain: "~2 epochs … ~4 M" would read as strikethrough
live()


# Looks again while the run is watched live; an ended run's job is read once.
@st.fragment(run_every=RAY_JOB_EVERY_S if tick_every else None)
def ray_job(address: str) -> None:
    """The run's latest Ray job: how it is doing, Ray's word on it, its log's last lines."""
    try:
        job = ray_cluster.latest_job(address, run_id)
        tail = ray_cluster.log_tail(address, job.submission_id) if job else ""
    except USER_ERRORS as exc:  # the cluster is down or the address wrong: one line
        st.warning(str(exc))
        return
    if job is None:
        st.caption("No Ray job for this run on the cluster yet.")
        return
    st.caption(job_summary(job))
    st.code(tail or "(no output yet)", language=None, wrap_lines=True)


ray_address = ray_cluster.cluster_address()
if ray_address and run.executor == Executor.RAY:
    with st.expander("Ray job"):
        ray_job(ray_address)

with st.expander("Config"):
    st.json(run.config)
if run.checkpoint_path:
    with st.expander("Checkpoint"):
        st.text(shown_path(run.checkpoint_path))
        path = run.checkpoint_path

        def read_checkpoint() -> bytes:  # only read when the user clicks
            with open(path, "rb") as fh:
                return fh.read()

        st.download_button("Download checkpoint", read_checkpoint, file_name=f"run-{run_id}.pt")
export_panel(store, run)
