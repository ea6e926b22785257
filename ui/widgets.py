"""The few Streamlit pieces every page shares: the store, the sidebar, run pickers, error
display and sampling from a checkpoint. The only module of ``ui`` that imports streamlit.

No worker lives in the pages' process: pages act through the database (``jobs.actions``)
and learn what the workers do from the workers table."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING

import streamlit as st

from jobs.errors import USER_ERRORS
from jobs.export import export_to_home, zip_folder
from jobs.ray_cluster import cluster_address
from jobs.recovery import DEFAULT_DEAD_AFTER_S
from jobs.runner import run_checkpoint
from storage import home
from storage.errors import DatabaseUnavailable
from storage.names import one_line
from storage.schema import utcnow
from storage.status import Executor, RunStatus
from storage.store import RunRecord, RunStore
from ui.live import sidebar_refresh_every
from ui.paths import shown_path
from ui.plain_text import no_bidi, plain
from ui.workers import ENDED_STATES, worker_state

if TYPE_CHECKING:
    from gptcore.sampling import SamplingConfig

# Tells the server when the tab is hidden or shown again (the Page Visibility API), so
# pages can stop their timed refreshes while nobody looks. Streamlit's run_every timer lives
# in the browser and keeps firing in a background tab; only a rerun without it ends it.
# Runs in the page itself (components v2), loads nothing, draws nothing.
_VISIBILITY_JS = """
export default function ({ setStateValue }) {
  if (window.__gptdashVisibility) {
    document.removeEventListener("visibilitychange", window.__gptdashVisibility);
  }
  window.__gptdashVisibility = () =>
    setStateValue("visible", document.visibilityState === "visible");
  document.addEventListener("visibilitychange", window.__gptdashVisibility);
}
"""
_visibility = st.components.v2.component("gptdash_visibility", js=_VISIBILITY_JS)
_VISIBLE = "_gptdash_tab_visible"
# While the database is away, a page looks this often whether it answers again.
DATABASE_RETRY_S = 2.0


@st.cache_resource(show_spinner=False)
def get_store() -> RunStore:
    """The pages' store. A database problem raises a one-line StorageError, which app.py
    shows with ``st.error``; nothing is cached then, so the next rerun tries again."""
    return RunStore()


def training_now(store: RunStore) -> tuple[list[int], int]:
    """The runs training now: those live workers train (from the workers table) and those
    Ray jobs train (which have no worker row); and how many workers are alive (beating
    within the timeout, not stopped)."""
    now, gone, alive = utcnow(), set(), 0
    for w in store.workers():
        age = (now - w.heartbeat_at).total_seconds() if w.heartbeat_at else None
        if worker_state(w.status, age, DEFAULT_DEAD_AFTER_S) in ENDED_STATES:
            gone.add(w.name)
        else:
            alive += 1
    # The run rows are the truth: a worker's own row says "idle" until its next beat after
    # a claim, and Ray jobs and `gptdash train` have none. A run whose worker has gone
    # (killed mid-run, not yet marked interrupted) is trained by nobody.
    runs = [r.id for r in store.list_runs(status=RunStatus.RUNNING) if r.worker not in gone]
    return sorted(runs), alive


def resumes_due(store: RunStore) -> list[int]:
    """Interrupted runs that a free worker will resume by themselves (``resume_after`` set)."""
    return [r.id for r in store.list_runs(status=RunStatus.INTERRUPTED)
            if r.resume_after is not None]


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Show a GptdashError as a readable message instead of a traceback; as plain text, for
    a message may quote what someone typed."""
    try:
        yield
    except DatabaseUnavailable:
        raise  # the page's one box says it (app.py), not one box per widget
    except USER_ERRORS as exc:
        st.error(plain(exc))


@contextlib.contextmanager
def rerun_if_database_away() -> Iterator[None]:
    """Around a fragment's body: a database that is away for now reruns the whole page,
    which app.py shows as one ``st.error`` until the database answers
    (``database_away``). A fragment's timed rerun runs only the fragment,
    out of reach of app.py's catch; without this it would show a traceback every tick."""
    try:
        yield
    except DatabaseUnavailable:
        st.rerun()


def database_away(exc: DatabaseUnavailable) -> None:
    """The page's one box while the database is away, and a quiet look every
    ``DATABASE_RETRY_S`` that reruns the page once it answers: nobody reloads anything."""
    st.error(f"{plain(exc)}\n\nThis page comes back by itself when the database answers.")

    @st.fragment(run_every=DATABASE_RETRY_S)
    def look_again() -> None:
        try:
            get_store().queued_ids()
        except DatabaseUnavailable:
            return
        except USER_ERRORS:
            pass  # something else is wrong now: the page's rerun says what
        st.rerun()

    look_again()


def empty_state(message: str) -> None:
    """Say what to do next on a page with nothing to show yet, and end the page there."""
    st.info(message)
    st.page_link("app_pages/new_run.py", label="Go to New run", icon=":material/rocket_launch:")
    st.stop()


def run_label(run: RunRecord) -> str:
    """``#3 name · status`` for a select box's option: plain text there, a bidirectional
    control in an old name shown escaped."""
    return f"#{run.id} {one_line(run.name)} · {run.status}"


def pick_run(label: str, runs: list[RunRecord], *, key: str, default_id: int | None = None,
             help: str | None = None) -> RunRecord | None:
    """A selectbox over runs, keeping the choice across reruns; None when there are none.

    Options name runs without their status: the browser keeps showing the label a
    keyed selectbox's choice had when it was picked, so "running" would stay on
    screen after the run completed.
    """
    if not runs:
        return None
    ids = [r.id for r in runs]
    by_id = {r.id: r for r in runs}
    if key in st.session_state and st.session_state[key] not in by_id:
        del st.session_state[key]
    index = ids.index(default_id) if default_id in by_id and key not in st.session_state else 0
    chosen = st.selectbox(label, ids, index=index, key=key, help=help,
                          format_func=lambda i: f"#{i} {one_line(by_id[i].name)}")
    return by_id[chosen]


@st.cache_resource(max_entries=4, show_spinner="Loading the checkpoint…")
def load_model(path: str, mtime: float):
    """The model of a checkpoint; keyed on mtime so a newer checkpoint is reloaded."""
    from gptcore.checkpoint import model_from_checkpoint  # torch: only where a page samples

    return model_from_checkpoint(path)


def sample_from_run(run: RunRecord, which: str, prompt: str, sampling: SamplingConfig) -> None:
    """Stream ``prompt``'s continuation by the run's ``which`` ("best"/"latest") checkpoint,
    sampled with ``sampling``, here on the page.

    A run without that checkpoint gets a caption saying so.
    """
    from gptcore.generate import context_note, stream_text
    from gptcore.tokenizer import get_tokenizer
    from jobs.threads import use_threads

    path = run_checkpoint(run, which)
    if path is None:
        st.caption(f"#{run.id} {plain(run.name)} has no checkpoint yet.")
        return
    with user_errors():
        model, cfg, payload = load_model(str(path), os.path.getmtime(path))
        # User text: plain, never markup.
        st.text(f"#{run.id} {one_line(run.name)} · {path.name} from step "
                f"{int(payload['step']):,}")
        tokenizer = get_tokenizer(cfg.tokenizer)
        # A clear error first; a prompt longer than the context is cropped, and said so.
        if (note := context_note(prompt, tokenizer, cfg.model.context_length)) is not None:
            st.caption(note[0].upper() + note[1:] + ".")
        box = st.empty()
        text = prompt
        use_threads(get_store(), counted=False)  # in this script run's thread, which samples
        for piece in stream_text(model, tokenizer, prompt, sampling):
            text += piece
            box.code(no_bidi(text), language=None, wrap_lines=True)


def run_on_choice(key: str) -> str:
    """New run's and Sweeps' "Run on": ``local`` (any gptdash worker) or ``ray`` (a job of its
    own on the Ray cluster); offered only when GPTDASH_RAY_ADDRESS names one."""
    address = cluster_address()
    if address is None:
        return Executor.LOCAL
    names = {Executor.LOCAL: "gptdash workers", Executor.RAY: "Ray cluster"}
    return st.radio("Run on", list(names), format_func=names.get, key=key, horizontal=True,
                    help=f"gptdash workers: the dashboard's own and every `gptdash worker`, "
                         f"one run each at a time. Ray cluster: each run a Ray job on the "
                         f"cluster at {address}, with its GPUs and CPUs; `nodes` > 1 spreads "
                         "one run over several machines.")


def tab_visible() -> bool:
    """Whether the browser tab shows the page, as the sidebar's watcher last reported.

    A change reruns the whole page, so a page that sets its refresh timer from this
    drops the timer while the tab is hidden and takes it up when it shows again.
    """
    return st.session_state.get(_VISIBLE, True)


def _watch_visibility() -> bool:
    """Mount the visibility watcher (zero height) and remember what it reported."""
    state = _visibility(key="tab_visibility", default={"visible": True}, height=0,
                        on_visible_change=lambda: None)
    st.session_state[_VISIBLE] = bool(state.visible)
    return st.session_state[_VISIBLE]


def sidebar(store: RunStore) -> None:
    """Where the data lives, what the workers do, and the queue."""
    with st.sidebar:
        visible = _watch_visibility()
        st.divider()
        _worker_status(store, visible)
        url = store.engine.url
        where = url.database if url.get_backend_name() == "sqlite" else url.render_as_string(
            hide_password=True)
        st.caption(f"Database: `{url.get_backend_name()}`")
        st.text(shown_path(str(where)))
        st.caption(f"Home folder: {plain(shown_path(home.home_dir()))}")
        if home.artifacts_dir() != home.home_dir():
            st.caption(f"Artifacts: {plain(shown_path(home.artifacts_dir()))}")


def _worker_status(store: RunStore, visible: bool) -> None:
    """What the workers train (the step kept current while they train) and the queue."""
    # A run due to resume by itself counts: the sidebar must see it start training again.
    busy = bool(training_now(store)[0] or store.queued_ids() or resumes_due(store))

    # On Live's beat while anything trains or waits, so both show the same step and a
    # queued run is seen to start; an idle worker with an empty queue costs no refreshes.
    @st.fragment(run_every=sidebar_refresh_every(busy, visible))
    def worker_status() -> None:
        with rerun_if_database_away():
            current, alive = training_now(store)
            queued = store.queued_ids()
            due = resumes_due(store)
            runs = [store.get_run(run_id) for run_id in current]
        if busy and not (current or queued or due):
            st.rerun()  # all done: redraw the page once, without the timer
        if current:
            st.caption("Training now")
            for run in runs:
                st.text(f"#{run.id} {one_line(run.name)}\n"
                        f"step {run.last_step:,}/{run.max_steps:,}")
        elif not alive:
            st.warning("No training worker is running: queued runs wait. Restart "
                       "`gptdash serve`, or start `gptdash worker`.")
        else:
            st.caption("Worker idle")
        if queued:
            st.caption(f"Queue: {', '.join(f'#{i}' for i in queued)}")

    worker_status()


def export_panel(store: RunStore, run: RunRecord) -> None:
    """Export for Hugging Face transformers: a folder in the home, or a zip to download
    (the Runs page, for a selected run, and the run's own Live page)."""
    with st.expander("Export for Hugging Face transformers"):
        st.caption("A GPT-2 folder (config.json, model.safetensors, the tokenizer, a README.md "
                   "model card) that transformers' from_pretrained and pipeline load.")
        if run.checkpoint_path is None:
            st.caption("Nothing to export until the run saves its first checkpoint.")
        which = st.radio("Weights", ("best", "latest"), horizontal=True,
                         key=f"export_which_{run.id}")
        e1, e2 = st.columns(2)
        if e1.button("Export to the home folder", key=f"export_{run.id}",
                     disabled=run.checkpoint_path is None, width="stretch"):
            with user_errors():
                st.success(plain(f"Exported to {export_to_home(store, run.id, which)}"))
        e2.download_button("Download as a zip", key=f"export_zip_{run.id}",
                           data=lambda: zip_folder(export_to_home(store, run.id, which)),
                           file_name=f"run-{run.id}-{which}.zip", mime="application/zip",
                           disabled=run.checkpoint_path is None, on_click="ignore",
                           width="stretch")
