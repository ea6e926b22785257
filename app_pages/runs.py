"""Runs: every run in one table; select rows to compare, open, stop, resume, edit or delete."""

import pandas as pd
import streamlit as st

from jobs import actions
from jobs.runner import can_resume
from storage.names import NAME_MAX, one_line
from storage.status import ACTIVE, RESUMABLE, STATUSES, RunStatus
from storage.tags import format_tags, parse_tags
from ui.format import human_count, human_duration
from ui.plain_text import plain
from ui.widgets import empty_state, export_panel, get_store, user_errors

store = get_store()

st.title("Runs")

if not store.list_runs(limit=1):
    empty_state("No runs yet: start one on **New run**.")

f1, f2, f3 = st.columns([2, 1, 2])
statuses = f1.multiselect("Status", STATUSES, placeholder="any status")
tag = f2.text_input("Tag", placeholder="any tag")
text = f3.text_input("Search", placeholder="name, notes or tag")

frame = store.runs_frame(status=statuses or None, tag=tag.strip() or None,
                         text=text.strip() or None)
if frame.empty:
    st.info("No run matches these filters.")
    st.stop()

# Short headers and one "steps" column, so the whole table fits the page at 1400 px.
table = pd.DataFrame({
    "id": frame["id"],
    "name": frame["name"].map(one_line),  # an old row's bidi control shown, not obeyed
    "status": frame["status"],
    "worker": frame["worker"],
    "tags": frame["tags"].map(one_line),
    "created": frame["created_at"],
    "duration": [human_duration(d) for d in frame["duration_s"]],
    "steps": [f"{s:,} / {m:,}" for s, m in zip(frame["last_step"], frame["max_steps"],
                                                strict=True)],
    "tokens": frame["tokens_seen"],
    "best val": frame["best_val_loss"],
    "train loss": frame["last_train_loss"],
    "params": [human_count(n) for n in frame["n_params"]],
    "device": frame["device"],
})
if table["worker"].nunique() < 2:
    # One worker (or none named) says nothing row by row, and its column pushed the table
    # past the page at 1400 px ("devi" for device).
    table = table.drop(columns="worker")
# The selection holds row positions. Rows that moved (a run added, deleted or filtered
# out) would make a kept selection point at runs the user never ticked, so the table then
# gets a new key, which clears it; positions are only ever read against the rows shown.
shown_ids = [int(i) for i in table["id"]]
if st.session_state.get("runs_table_ids", shown_ids) != shown_ids:
    st.session_state.runs_table_gen = st.session_state.get("runs_table_gen", 0) + 1
st.session_state.runs_table_ids = shown_ids
event = st.dataframe(
    table, hide_index=True, on_select="rerun", selection_mode="multi-row",
    key=f"runs_table_{st.session_state.get('runs_table_gen', 0)}",
    placeholder="—",
    column_config={
        "id": st.column_config.NumberColumn(width=45),
        "created": st.column_config.DatetimeColumn(format="MMM D, HH:mm"),
        "tokens": st.column_config.NumberColumn(format="compact"),
        "best val": st.column_config.NumberColumn(format="%.4f"),
        "train loss": st.column_config.NumberColumn("train", format="%.4f",
                                                    help="The last train loss"),
        "tags": st.column_config.TextColumn(width=110),  # a long list ends in "…"
    },
)
selected = [shown_ids[i] for i in event.selection.rows if 0 <= i < len(shown_ids)]
st.caption(f"{len(table)} run(s). Select rows (left edge) to act on them; click a column "
           "header to sort.")

queued = store.queued_ids()
if queued:
    st.caption(f"Queue (trains one at a time, oldest first): "
               f"{', '.join(f'#{i}' for i in queued)}. Cancel a queued run with Stop.")

if not selected:
    st.stop()

runs = [store.get_run(i) for i in selected]
st.subheader(f"{len(runs)} selected")
b1, b2, b3, b4, b5 = st.columns(5)
if b1.button("Compare", disabled=len(runs) < 1, width="stretch"):
    st.session_state.compare_ids = selected
    st.switch_page("app_pages/compare.py")
if b2.button("Open live view", disabled=len(runs) != 1, width="stretch"):
    st.session_state.live_run = selected[0]
    st.switch_page("app_pages/live.py")
stoppable = [r for r in runs if r.status in (RunStatus.RUNNING, RunStatus.QUEUED)]
if b3.button("Stop / cancel", disabled=not stoppable, width="stretch"):
    with user_errors():
        for r in stoppable:
            actions.stop(store, r.id)
        st.toast(f"Stop requested for {', '.join(f'#{r.id}' for r in stoppable)}")
        st.rerun()
resumable = [r for r in runs if r.status in RESUMABLE and can_resume(store, r.id)]
if b4.button("Resume", disabled=not resumable, width="stretch",
             help="Continue stopped, interrupted, failed or cancelled runs from their last "
                  "checkpoint; a run that never saved one restarts from step 0."):
    with user_errors():
        for r in resumable:
            actions.resume(store, r.id)
        st.toast(f"Queued {', '.join(f'#{r.id}' for r in resumable)} to resume")
        st.rerun()
# A queued or running run is stopped first; a run resumed while this is open is refused.
with b5.popover("Delete", width="stretch", disabled=any(r.status in ACTIVE for r in runs)):
    named = plain(", ".join(f"#{r.id} {r.name}" for r in runs))
    st.write(f"Delete {named} with their metrics, samples and checkpoints? "
             "This cannot be undone.")
    # Keyed by the runs it names: a click made on another selection finds no such button.
    if st.button("Yes, delete", type="primary", key=f"delete_{'_'.join(map(str, selected))}"):
        deleted = False
        with user_errors():  # a run resumed since this opened is refused: say so, here
            for r in runs:
                store.delete_run(r.id)
            st.toast(f"Deleted {named}")
            deleted = True
        # A new table key: the old selection's positions would now point at other runs.
        st.session_state.runs_table_gen = st.session_state.get("runs_table_gen", 0) + 1
        if deleted:  # a rerun would wipe the refusal before anyone could read it
            st.rerun()

if len(runs) == 1:
    run = runs[0]
    with st.form(f"edit_{run.id}"):
        st.caption(f"Edit run #{run.id}")
        new_name = st.text_input("Name", value=run.name, max_chars=NAME_MAX)
        new_tags = st.text_input("Tags (comma-separated)", value=format_tags(run.tags))
        new_notes = st.text_area("Notes", value=run.notes)
        if st.form_submit_button("Save"):
            with user_errors():  # e.g. a name pasted with a control character in it
                store.update_run(run.id, name=new_name.strip() or run.name, notes=new_notes,
                                 tags=parse_tags(new_tags))
                st.toast("Saved")
                st.rerun()
    if run.error:
        st.caption("Why it ended")
        st.text(run.error)
    export_panel(store, run)
