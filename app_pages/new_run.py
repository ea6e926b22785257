
"""New run: pick hyperparameters, see what they cost, press Start."""

from dataclasses import replace
from pathlib import Path

import streamlit as st

from gptcore.config import PRESETS, TrainConfig, field_info, preset
from gptcore.errors import GptdashError
from gptcore.hf import shape_problem, with_hf_shape
from gptcore.hf_cache import cached_gpt2_folders, hf_cache_dir
from jobs import actions
from jobs.errors import USER_ERRORS
from jobs.sweeps import measured_pace, submit_repeats
from storage import home
from storage.names import NAME_MAX
from storage.status import RunStatus
from storage.tags import parse_tags
from ui.config_diff import config_from_upload, config_json_bytes
from ui.corpora import Corpus, look_all, offered, option_label, table_rows
from ui.defaults import newest_finished
from ui.epochs import epochs_short, epochs_text, repeat_warning, run_epochs
from ui.figures import lr_schedule_figure
from ui.form import form_groups, form_problems, launch_summary
from ui.paths import shown_path
from ui.plain_text import plain
from ui.uploads import UPLOAD_SUFFIXES, page_corpus_problem, renamed_note, save_upload
from ui.widgets import get_store, run_label, run_on_choice, user_errors

store = get_store()
INFO = field_info()
# Streamlit's uploader keeps a whole file in the server's memory (ui.uploads): modest files
# only, as .streamlit/config.toml's maxUploadSize says too; larger corpora go in data/.
MAX_UPLOAD_MB = 50
PREPARING_EVERY_S = 3.0  # the corpora table's refresh while a corpus is being tokenized
GROUP_TITLES = {"model": "Model", "data": "Data", "optimization": "Optimization",
                "schedule": "Learning-rate schedule", "evaluation": "Evaluation and checkpoints",
                "fine-tune": "Fine-tuning", "system": "System"}

st.title("New run")

if "form_base" not in st.session_state:
    st.session_state.form_base = preset("tiny")
    st.session_state.form_gen = 0


def load_base(cfg: TrainConfig) -> None:
    """Refill the form from ``cfg`` (widget keys change, so widgets take the new defaults)."""
    st.session_state.form_base = cfg
    st.session_state.form_gen += 1


def wkey(name: str) -> str:
    return f"f{st.session_state.form_gen}_{name}"


@st.cache_data(ttl=2, show_spinner=False)
def _looks(corpora: tuple[str, ...], cache_dir: str) -> dict[str, Corpus]:
    return look_all(corpora, Path(cache_dir))


def corpus_looks(corpora: tuple[str, ...]) -> dict[str, Corpus]:
    """``look_all`` at the token cache, kept two seconds: a page run and its corpora table
    share one look (a folder of 2,000 files costs ~0.2 s to list and fingerprint)."""
    return _looks(corpora, str(home.cache_dir()))


def show_corpora() -> None:
    """The corpora on offer, their size, documents, tokens and state: read from stat and
    the token cache's manifests, never by tokenizing here."""
    shown = corpus_looks(tuple(offered((home.uploads_dir(), home.data_dir()))))
    # A table that wraps its cells: a scrolling grid in this narrow column hid the last
    # columns. Its cells read Markdown, and file names are people's text: plain.
    st.table([{name: plain(value) for name, value in row.items()}
              for row in table_rows(shown.values())], hide_index=True, border="horizontal")
    st.caption("A corpus not tokenized yet is tokenized once, when the first run on it "
               "starts (a large one by the worker: Live shows how far it has got); every "
               "later run reuses its tokens.")


# ---- where the form starts from --------------------------------------------------------------
runs = store.list_runs()
finished = [r for r in runs
            if r.checkpoint_path and r.status in (RunStatus.COMPLETED, RunStatus.STOPPED)]
finished_by_id = {str(r.id): r for r in finished}
c1, c2, c3, c4 = st.columns(4)
with c1:
    chosen_preset = st.selectbox("Preset", list(PRESETS), key="preset_pick",
                                 help="tiny trains on a laptop CPU in seconds; small wants a GPU; "
                                      "gpt2-124m is the GPT-2 small shape.")
    st.button("Load preset", on_click=lambda: load_base(preset(st.session_state.preset_pick)))
with c2:
    if runs:
        ids = [r.id for r in runs]
        clone = st.selectbox("Clone a run", ids, key="clone_pick",
                             index=ids.index(newest_finished(runs, 1)[0]),
                             format_func=lambda i: run_label(next(r for r in runs if r.id == i)))
        if st.button("Load its config"):
            with user_errors():
                load_base(TrainConfig.from_dict(store.get_run(clone).config))
                st.rerun()
    else:
        st.caption("Clone a run: no runs yet.")
with c3:
    if finished:
        parent = st.selectbox("Fine-tune from", [r.id for r in finished], key="ft_pick",
                              format_func=lambda i: run_label(finished_by_id[str(i)]),
                              help="Start from a finished run's weights with a fresh optimizer.")
        if st.button("Fine-tune this run"):
            with user_errors():
                base = TrainConfig.from_dict(store.get_run(parent).config)
                load_base(replace(base, init_from=str(parent), warmup_steps=0))
                st.rerun()
    else:
        st.caption("Fine-tune from: no finished run with a checkpoint yet.")
with c4:
    uploaded_cfg = st.file_uploader("Upload a config (JSON)", type=["json"], key="cfg_upload")
    if uploaded_cfg is not None and st.session_state.get("cfg_upload_id") != uploaded_cfg.file_id:
        st.session_state.cfg_upload_id = uploaded_cfg.file_id
        try:
            load_base(config_from_upload(uploaded_cfg.getvalue()))
            st.rerun()
        except GptdashError as exc:
            st.error(plain(exc))

with st.expander("Start from GPT-2 weights (a Hugging Face folder on this machine)"):
    cached = [str(p) for p in cached_gpt2_folders()]
    st.caption(f"GPT-2 models in the Hugging Face cache ({shown_path(hf_cache_dir())}) are "
               "listed; any folder with config.json and model.safetensors (or "
               "pytorch_model.bin) works. Nothing is downloaded.")
    h1, h2 = st.columns(2)
    picked = h1.selectbox("In the cache", cached, index=None, key="hf_pick",
                          format_func=shown_path, placeholder="none found" if not cached
                          else "pick a cached model")
    typed = h2.text_input("Or a folder", key="hf_path", placeholder="/path/to/gpt2")
    if st.button("Use these weights", disabled=not (typed.strip() or picked)):
        with user_errors():
            adopted, note = with_hf_shape(replace(st.session_state.form_base,
                                                  init_from=f"hf:{typed.strip() or picked}"))
            load_base(adopted)
            st.session_state.hf_note = note or "the form already has the folder's shape"
            st.rerun()
    if hf_note := st.session_state.pop("hf_note", None):
        st.info(plain(hf_note))  # it quotes a path

corpus_choices = offered((home.uploads_dir(), home.data_dir()))
looks = dict(corpus_looks(tuple(corpus_choices)))
corpora_table = st.fragment(show_corpora, run_every=PREPARING_EVERY_S if any(
    c.preparing for c in looks.values()) else None)

base: TrainConfig = st.session_state.form_base
if "pending_corpus" in st.session_state:
    # A corpus was just uploaded: select it (before the widget exists in this run).
    st.session_state[wkey("corpus")] = st.session_state.pop("pending_corpus")
base_values = base.flat()

# ---- the form ------------------------------------------------------------------------------
form_col, summary_col = st.columns([3, 2], gap="large")
values: dict[str, object] = {}
slots: dict[str, st.delta_generator.DeltaGenerator] = {}

with form_col:
    for group, names in form_groups().items():
        with st.expander(GROUP_TITLES.get(group, group), expanded=group in ("model", "data",
                                                                            "optimization")):
            for i, name in enumerate(names):
                meta, default = INFO[name], base_values[name]
                if i % 3 == 0:
                    # A row of columns per three fields: a message under one field moves
                    # the rows below it together, never one column out of line.
                    cols = st.columns(3)
                with cols[i % 3]:
                    key = wkey(name)
                    if key not in st.session_state:
                        st.session_state[key] = (f"{default:g}" if meta["type"] is float
                                                 else default)
                    if name == "corpus":
                        options = list(corpus_choices)
                        if st.session_state[key] not in options:
                            options.append(str(st.session_state[key]))
                            looks.update(corpus_looks((options[-1],)))
                        values[name] = st.selectbox(
                            "corpus", options, key=key,
                            format_func=lambda c: option_label(looks[c]), help=meta["help"])
                    elif name == "init_from":
                        choices = [""] + [str(r.id) for r in finished]
                        if st.session_state[key] not in choices:
                            choices.append(st.session_state[key])
                        values[name] = st.selectbox(
                            "init_from", choices, key=key,
                            format_func=lambda v: "— (train from scratch)" if not v else (
                                run_label(finished_by_id[v]) if v in finished_by_id else v),
                            help=meta["help"])
                    elif meta["choices"]:
                        values[name] = st.selectbox(name, list(meta["choices"]), key=key,
                                                    help=meta["help"])
                    elif meta["type"] is bool:
                        values[name] = st.checkbox(name, key=key, help=meta["help"])
                    elif meta["type"] is int:
                        values[name] = st.number_input(name, step=1, key=key, help=meta["help"])
                    else:
                        # Floats as text, so "3e-4" works and a typo gets a message, not a clamp.
                        values[name] = st.text_input(name, key=key, help=meta["help"])
                    slots[name] = st.empty()
            if group == "data":
                upload = st.file_uploader(
                    f"Upload a corpus file (text, JSON Lines, Parquet, gzip or zstd; up to "
                    f"{MAX_UPLOAD_MB} MB); it is kept in the home folder for reuse",
                    type=[s.lstrip(".") for s in UPLOAD_SUFFIXES], key="corpus_upload",
                    max_upload_size=MAX_UPLOAD_MB)
                is_new = upload is not None and (
                    st.session_state.get("corpus_upload_id") != upload.file_id)
                if is_new:
                    st.session_state.corpus_upload_id = upload.file_id
                    try:
                        if upload.size > MAX_UPLOAD_MB * 1024**2:
                            raise GptdashError(f"{upload.name} is over {MAX_UPLOAD_MB} MB")
                        # A new name when the name is taken by other text: never overwritten.
                        target = save_upload(upload, upload.name, home.uploads_dir())
                        st.session_state.pending_corpus = str(target)
                        st.session_state.corpus_note = renamed_note(upload.name, target)
                        st.rerun()
                    except USER_ERRORS as exc:
                        st.error(plain(exc))  # it may quote the file's name
                if note := st.session_state.pop("corpus_note", None):
                    st.info(plain(note))  # once, in the run after the upload
                st.caption(plain(f"A corpus over {MAX_UPLOAD_MB} MB, or a folder of files: put "
                                 f"it in {shown_path(home.data_dir())} and it is listed "
                                 "below (the uploader holds a file in memory)."))
                corpora_table()

cfg, problems = form_problems(values, TrainConfig())
if cfg is not None and (hf_problem := shape_problem(cfg)):  # init_from=hf:DIR's shape
    problems.setdefault("init_from", hf_problem)
if cfg is not None and (corpus_problem := page_corpus_problem(
        cfg.corpus, {str(r.config.get("corpus")) for r in runs})):
    problems.setdefault("corpus", corpus_problem)  # e.g. a path named by an uploaded config
for name, message in problems.items():
    if name in slots:
        slots[name].error(plain(message))  # it may quote what was typed

# ---- what it will cost, and Start --------------------------------------------------------------
with summary_col:
    st.subheader("Before you launch")
    if cfg is None or problems:
        st.warning(f"{len(problems)} setting(s) need a change before this run can start; "
                   "see the messages under the fields.")
    if cfg is not None and "emb_dim" not in problems:
        pace = None
        with user_errors():
            pace = measured_pace(store)  # the Sweeps page and `gptdash sweep` use it too
        summary = launch_summary(cfg, pace)
        duration = summary.pop("Estimated duration")
        m1, m2 = st.columns(2)
        for i, (label, value) in enumerate(summary.items()):
            (m1 if i % 2 == 0 else m2).metric(label, value)
        st.metric("Estimated duration", duration)  # full width: "1 h 05 min" is never cut
        if pace is None:
            st.caption("Estimated duration appears once a run has finished on this machine.")
        else:
            st.caption(f"Duration estimated from run #{pace.run_id}'s throughput (scaled by "
                       "FLOPs), evaluations and start-up, with checkpoint saves.")
        epochs = None if "corpus" in problems else run_epochs(
            cfg, looks.get(cfg.corpus) or corpus_looks((cfg.corpus,))[cfg.corpus])
        if epochs is not None:
            st.metric("Epochs", epochs_short(epochs))
            st.caption(plain(epochs_text(epochs)))  # "~… ~" would read as strikethrough
            if warning := repeat_warning(epochs):
                st.warning(plain(warning))  # a warning, not a refusal: Start stays enabled
        if "max_steps" not in problems and "lr" not in problems:
            st.plotly_chart(lr_schedule_figure(cfg), key="lr_preview")
    name = st.text_input("Run name", placeholder="optional; a name is made from the config",
                         max_chars=NAME_MAX)
    tags = st.text_input("Tags", placeholder="comma-separated, e.g. baseline, lr-sweep")
    notes = st.text_area("Notes", height=80)
    repeats = st.number_input("Repeat with N seeds", 1, 100, 1, key="repeat_seeds",
                              help="Queue N runs that differ only in seed (this seed, +1, ...) as "
                                   "one small sweep: Compare draws them as one mean line in a "
                                   "band, Sweeps as a mean with error bars.")
    on = run_on_choice("new_run_on")
    start = st.button("Start training", type="primary", disabled=bool(problems) or cfg is None,
                      width="stretch")
    if cfg is not None and not problems:
        st.download_button("Download this config (JSON)", config_json_bytes(cfg),
                           file_name="gptdash-config.json", mime="application/json")
    if start and cfg is not None:
        with user_errors():
            if repeats > 1:
                _, run_ids = submit_repeats(store, cfg, int(repeats), name=name,
                                            tags=parse_tags(tags), notes=notes, on=on)
                run_id = run_ids[0]  # the first to train; its seeds follow it in the queue
            else:
                run_id = actions.submit(store, cfg, name=name, tags=parse_tags(tags),
                                        notes=notes, on=on)
            st.session_state.live_run = run_id
            st.switch_page("app_pages/live.py")
