
"""Plan: from your own runs, what model and how many tokens to train for a budget, the
loss it should reach, and the runs that would tell more (``jobs.planning``)."""

import streamlit as st

from jobs import planning
from storage.names import one_line
from ui.plain_text import plain
from ui.plan_view import (
    exponents_table,
    isoflop_figure,
    ladder_table,
    optimum_figure,
    recommendation_table,
    summary_text,
    tokens_per_param_figure,
)
from ui.widgets import get_store, user_errors

store = get_store()
CHART = {"displaylogo": False}

st.title("Plan")
st.caption("Fits L(N, D) = E + A/N^α + B/D^β (Chinchilla's approach 3) to your finished runs "
           "of one corpus and tokenizer, and to the calibrated forecasts of unfinished ones; "
           "N is total parameters, FLOPs are 6N plus attention per token.")

pairs = planning.corpora(store)
left, right = st.columns(2)
with right:
    pair = st.selectbox("Runs of", pairs, key="plan_pair",
                        format_func=lambda p: f"{one_line(p[0])} ({p[1]})") if pairs else None
    ladder_time = st.text_input("Ladder time", "30m", key="plan_ladder_time",
                                help="when your runs cannot fit the law, the IsoFLOP ladder "
                                     "proposed trains in this time")
gathered = planning.gather(store, *(pair or (None, None)))
measured = planning.devices(gathered.runs)
with left:
    # A time needs a speed measured on a run: until there is one, FLOPs.
    kinds = ["time on a device", "FLOPs", "tokens"] if measured else ["FLOPs", "tokens"]
    kind = st.radio("Budget as", kinds, horizontal=True, key="plan_kind")
    device = None
    if kind == "time on a device":
        amount = st.text_input("Time", "1h", key="plan_time", help="2h, 30m, 1h30m, 90s")
        device = st.selectbox("Device", measured, key="plan_device",
                              help="whose runs' measured tokens/s turn the time into FLOPs")
    else:
        amount = st.text_input(f"Budget in {kind}", "1e15" if kind == "FLOPs" else "1e8",
                               key="plan_amount", help="a positive number, such as 3e15")

bp = None
with user_errors():
    budget = ({"seconds": planning.parse_duration(amount), "device": device}
              if kind == "time on a device" else
              {"flops": planning.parse_amount(amount, "FLOPs")} if kind == "FLOPs" else
              {"tokens": planning.parse_amount(amount, "tokens")})
    with st.spinner("Fitting the law to your runs…"):
        bp = planning.make_plan(store, gathered=gathered,
                                ladder_time_s=planning.parse_duration(ladder_time), **budget)
if bp is None:
    st.stop()

st.caption(plain(summary_text(bp)))
if not bp.gathered.runs:
    st.info("No finished runs of this corpus and tokenizer yet: the sizes below follow a "
            "published law. Queue the IsoFLOP ladder to plan from your own runs.")

st.subheader("Recommended runs")
st.dataframe(recommendation_table(bp), hide_index=True, placeholder="—")
st.caption(plain(f"Learning rate: {bp.lr_how}."))
for warning in bp.warnings:
    st.warning(plain(warning))
if (text := planning.narrowing(bp)) is not None:
    st.caption(plain(text[0].upper() + text[1:] + "."))

queue_run, queue_ladder = st.columns(2)
with queue_run:
    if st.button("Queue the recommended run", type="primary" if bp.plan.ladder is None
                 else "secondary", width="stretch", key="plan_queue_run"):
        with user_errors():
            run_id = planning.queue_recommended(store, bp)
            st.success(f"Run {run_id} queued: the worker trains it next.")
with queue_ladder:
    if bp.plan.ladder is not None and st.button(
            f"Queue the IsoFLOP ladder ({len(bp.plan.ladder.runs)} runs)", type="primary",
            width="stretch", key="plan_queue_ladder"):
        with user_errors():
            sweep_id, run_ids = planning.queue_ladder(store, bp)
            st.success(f"Sweep {sweep_id} queued with {len(run_ids)} runs; plan again when "
                       "they have trained.")

if bp.plan.ladder is not None:
    st.subheader("IsoFLOP ladder to train")
    st.dataframe(ladder_table(bp), hide_index=True)

st.plotly_chart(isoflop_figure(bp), key="plan_isoflop", config=CHART)
left, right = st.columns(2)
with left:
    st.plotly_chart(optimum_figure(bp), key="plan_optimum", config=CHART)
with right:
    st.plotly_chart(tokens_per_param_figure(bp), key="plan_ratio", config=CHART)

st.subheader("Fitted exponents")
exponents = exponents_table(bp)
if exponents.empty:
    st.caption("No law fitted yet: the planner needs runs of three model sizes.")
else:
    st.dataframe(exponents, hide_index=True, column_config={
        c: st.column_config.NumberColumn(format="%.3g") for c in ("yours", "Chinchilla",
                                                                    "Epoch AI")})
    st.caption("Chinchilla: Hoffmann et al. 2022, eq. 10. Epoch AI: Besiroglu et al. 2024's "
               "refit of the same data.")

if bp.plan.notes or bp.gathered.left_out or bp.plan.fit_left_out:
    st.subheader("Notes")
    st.text("\n".join([*bp.plan.notes,
                       *(f"run {i} left out: {why}" for i, why in bp.gathered.left_out),
                       *filter(None, [planning.left_out_of_law(bp)])]))
