"""Playground: sample text from a run's checkpoint, optionally two runs side by side."""

import os

import streamlit as st

from gptcore.sampling import MAX_NEW_TOKENS, SamplingConfig
from ui.defaults import newest_finished, other_run
from ui.widgets import empty_state, get_store, pick_run, sample_from_run

store = get_store()

st.title("Playground")
runs = [r for r in store.list_runs() if r.checkpoint_path and os.path.isfile(r.checkpoint_path)]
if not runs:
    empty_state("No checkpoints yet: train a run (New run) and sample from it here once it has "
            "saved a checkpoint.")


c1, c2 = st.columns(2)
with c1:
    first = pick_run("Run", runs, key="play_a", default_id=newest_finished(runs, 1)[0])
with c2:
    side_by_side = st.toggle("Compare with a second run")
    second = pick_run("Second run", runs, key="play_b",
                      default_id=other_run(runs, first.id)) if side_by_side else None

which = st.radio("Checkpoint", ["best", "latest"], horizontal=True, key="play_which",
                 help="best: the weights with the lowest val loss so far (the run's latest "
                      "when it has no best yet); latest: the last weights saved.")
prompt = st.text_area("Prompt", value="The ", height=100)
s1, s2, s3, s4, s5 = st.columns(5)
temperature = s1.slider("Temperature", 0.0, 2.0, 0.8, 0.05, help="0 always picks the likeliest.")
top_k = s2.number_input("Top-k (0 = off)", min_value=0, max_value=100_000, value=40)
top_p = s3.slider("Top-p", 0.05, 1.0, 1.0, 0.05)
max_new = s4.number_input("Max new tokens", min_value=1, max_value=MAX_NEW_TOKENS, value=200)
seed = s5.number_input("Seed", min_value=0, max_value=2**31 - 1, value=0)
sampling = SamplingConfig(max_new_tokens=int(max_new), temperature=float(temperature),
                          top_k=int(top_k), top_p=float(top_p), seed=int(seed))


if st.button("Generate", type="primary"):
    targets = [first] + ([second] if second is not None else [])
    columns = st.columns(len(targets))
    for run, column in zip(targets, columns, strict=False):
        with column:
            sample_from_run(run, which, prompt, sampling)
