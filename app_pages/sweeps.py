
"""Sweeps: queue a grid or random search of runs, then watch them train and compare them.

The form plans the sweep as it is edited (how many runs, how long), and writes
nothing until Start. The dashboard's worker trains the queued runs one by one; the
results below refresh while any of the chosen sweep's runs is queued or training.
"""

import streamlit as st

from analysis.forecast import Forecast
from gptcore.config import PRESETS, field_info
from gptcore.estimate import MachinePace
from gptcore.metric_keys import VAL_LOSS
from jobs.errors import USER_ERRORS
from jobs.forecasting import run_forecast
from jobs.pruners import PRUNERS
from jobs.search import OBJECTIVES, SEARCHERS, plan_search, search_view, submit_search
from jobs.sweeps import (
    CONFIRM_ABOVE,
    count_runs,
    cut_problem,
    measured_pace,
    plan_sweep,
    stop_sweep,
    submit_sweep,
)
from storage import home
from storage.names import NAME_MAX, one_line
from storage.status import ACTIVE, Executor, RunStatus
from storage.store import RunRecord
from ui.compute import last_values
from ui.corpora import look_all
from ui.epochs import epochs_short, epochs_span, plan_warning, run_epochs
from ui.live import LastBuilt
from ui.plain_text import plain
from ui.search_view import (
    best_so_far_figure,
    importance_figure,
    next_trials,
    parallel_figure,
    pareto_figure,
    state_counts,
    trials_left,
)
from ui.sweeps import (
    base_config,
    plan_summary,
    seed_means,
    specs,
    sweep_figure,
    sweep_refresh_every,
    sweep_table,
    swept_params,
)
from ui.uploads import page_corpus_problem
from ui.widgets import (
    get_store,
    rerun_if_database_away,
    run_on_choice,
    tab_visible,
    training_now,
    user_errors,
)

store = get_store()
FIELDS = list(field_info())
GRID_DEFAULTS = ["lr", "batch_size", "n_layers", "emb_dim", "weight_decay", "warmup_steps"]
CHOICE_DEFAULTS = ["activation", "n_layers", "emb_dim", "batch_size", "optimizer", "schedule"]
MAX_ROWS = len(GRID_DEFAULTS)
GRID, SEARCH = "Grid / Random", "Search"

st.title("Sweeps")

# ---- a new sweep -------------------------------------------------------------------------------
def measured_rate() -> MachinePace | None:
    """This machine's pace, or None: the plan then assumes a nominal CPU's."""
    try:
        return measured_pace(store)
    except USER_ERRORS:
        return None  # the last finished run's config is one this version cannot read


def base_inputs(each: str, then: str) -> tuple[str, str]:
    """The preset and overrides every run (or trial) of the sweep starts from."""
    c1, c2 = st.columns([1, 2])
    preset_name = c1.selectbox("Base preset", list(PRESETS), key="sweep_preset",
                               help=f"Every {each} starts from this preset, with the "
                                    f"overrides beside it, then the {then}.")
    overrides = c2.text_area("Overrides", key="sweep_overrides", height=130,
                             placeholder="one key=value per line, e.g.\nmax_steps=200\n"
                                         "batch_size=16",
                             help=f"Settings every {each} of the sweep shares, as `--set` "
                                  "takes them.")
    return preset_name, overrides


def setting_rows(count: int, labels: tuple[str, str], key_prefix: str, values_prefix: str,
                 defaults: list[str], placeholder: str) -> list[tuple[str, str]]:
    """``count`` rows of a setting and its values (a grid's, a range's or a choice's)."""
    rows = []
    for i in range(count):
        g1, g2 = st.columns([1, 2])
        key = g1.selectbox(f"{labels[0]} {i + 1}", FIELDS, index=FIELDS.index(defaults[i]),
                           key=f"{key_prefix}_{i}")
        values = g2.text_input(f"{labels[1]} {i + 1}", key=f"{values_prefix}_{i}",
                               placeholder=placeholder)
        rows.append((key, values))
    return rows


def grid_form() -> None:
    """A grid of values, random draws from ranges, or both: every run planned up front."""
    form_col, summary_col = st.columns([3, 2], gap="large")
    with form_col:
        preset_name, overrides = base_inputs("run", "swept values")
        st.markdown("**Grid**: every combination of these values")
        n_grid = st.number_input("Grid parameters", 1, MAX_ROWS, 1, key="sweep_n_grid")
        grid_rows = setting_rows(int(n_grid), ("Parameter", "Values"), "sweep_grid_key",
                                 "sweep_grid_values", GRID_DEFAULTS,
                                 "comma-separated, e.g. 1e-3,3e-3,1e-2")
        st.markdown("**Random search**: values drawn from ranges, the same draws for every grid "
                    "combination")
        r1, r2, r3 = st.columns(3)
        n_random = r1.number_input("Random draws", 0, 1000, 0, key="sweep_random",
                                   help="How many values to draw from the ranges; 0 for a "
                                        "grid only.")
        seed = r2.number_input("Seed", 0, 2**31 - 1, 0, key="sweep_seed",
                               help="Seeds the random draws, so the same sweep draws the "
                                    "same values.")
        n_seeds = r3.number_input("Repeat with N seeds", 1, 100, 1, key="sweep_seeds",
                                  help="Train every point N times, with the config's seed, "
                                       "seed+1, ...: the chart shows each point's mean and "
                                       "spread. 1 trains each once.")
        range_rows = []
        if n_random:
            n_ranges = st.number_input("Range parameters", 1, MAX_ROWS, 1, key="sweep_n_ranges")
            range_rows = setting_rows(int(n_ranges), ("Range parameter", "Range"),
                                      "sweep_range_key", "sweep_range_span", GRID_DEFAULTS,
                                      "low:high, or low:high:log, e.g. 1e-4:1e-2:log")


    grids, ranges = specs(grid_rows), specs(range_rows)
    seeds = int(n_seeds) if n_seeds > 1 else 0
    plan, problem, rate, n_runs = None, None, None, 0
    if grids or ranges or seeds:
        try:
            n_runs = count_runs(grids, ranges, random=int(n_random), seeds=seeds)
        except USER_ERRORS as exc:
            problem = str(exc)

    with summary_col:
        name = st.text_input("Sweep name", key="sweep_name", max_chars=NAME_MAX,
                             placeholder="optional; named after the swept settings")
        cut = st.checkbox("Early cut (successive halving)", key="sweep_cut",
                          help="At a quarter and at half of max_steps, stop a run whose forecast "
                               "final loss is confidently worse than the best run's.")
        confirmed = n_runs <= CONFIRM_ABOVE
        if not confirmed and not problem:
            st.metric("This sweep makes", plan_summary(n_runs, None)[0])
            # Asked before the runs are even planned: a typo in a grid can make thousands.
            confirmed = st.checkbox(f"Yes, queue all {n_runs:,} runs", key="sweep_confirm",
                                    help=f"A sweep of more than {CONFIRM_ABOVE} runs is planned "
                                         "and started only when confirmed.")
        if (grids or ranges or seeds) and confirmed and not problem:
            rate = measured_rate()
            try:
                plan = plan_sweep(base_config(preset_name, overrides), grids, ranges,
                                  random=int(n_random), seed=int(seed), seeds=seeds, pace=rate)
            except USER_ERRORS as exc:
                problem = str(exc)
        if plan is not None and not problem:  # a grid may name a corpus: the pages' own only
            known = {str(r.config.get("corpus")) for r in store.list_runs()}
            problem = next(filter(None, (page_corpus_problem(c, known)
                                         for c in {cfg.corpus for cfg in plan.configs})), None)
            plan = None if problem else plan
        if plan is not None and cut and not problem:
            problem = cut_problem(plan)
            plan = None if problem else plan
        if problem:
            st.error(plain(problem))  # it may quote a value typed above
        elif not confirmed:
            st.warning(f"More than {CONFIRM_ABOVE} runs: tick the box to plan them and start.")
        elif plan is None:
            st.info("Type values for at least one parameter, or repeat with 2 or more seeds, "
                    "to see the runs this sweep makes.")
        else:
            runs_text, time_text = plan_summary(len(plan.configs), plan.estimated_seconds)
            st.metric("This sweep makes", runs_text)
            st.metric("Training time", time_text)
            # Each run's epochs of its corpus: from the token cache, or estimated from its size.
            corpora = look_all((c.corpus for c in plan.configs), home.cache_dir())
            epochs = [run_epochs(c, corpora[c.corpus]) for c in plan.configs]
            if span := epochs_span(epochs):
                st.metric("Epochs per run", span)
            if warning := plan_warning(epochs):
                st.warning(plain(warning))  # a warning, not a refusal: Start stays enabled
            st.caption("The runs train one after another. Time from this machine's last finished "
                       "run's throughput, scaled by FLOPs, with evaluations, checkpoints and "
                       "start-up." if rate else
                       "The runs train one after another. Time is a rough CPU guess until a run "
                       "has finished here.")
            with st.expander(f"The {runs_text}"):
                st.text("\n".join(plan.label(i) + (f" · {epochs_short(e)}" if e else "")
                                   for i, e in enumerate(epochs)))
        on = run_on_choice("sweep_on")
        if st.button("Start sweep", type="primary", disabled=plan is None,
                     width="stretch") and plan is not None:
            with user_errors():
                sweep_id, run_ids = submit_sweep(store, plan, name=name, cut=cut, on=on)
                st.session_state.sweep_pick = sweep_id
                st.toast(f"Queued {len(run_ids)} runs; " + (
                    "each is a Ray job, trained as the cluster has room." if on == Executor.RAY
                    else "the worker trains them one by one."))


def search_form() -> None:
    """A search on Optuna: a number of trials, each proposed from the runs seen so far."""
    form_col, summary_col = st.columns([3, 2], gap="large")
    with form_col:
        preset_name, overrides = base_inputs("trial", "proposed values")
        s1, s2, s3 = st.columns(3)
        searcher = s1.selectbox("Searcher", SEARCHERS, key="search_searcher",
                                help="tpe: each trial proposed from the trials seen so far "
                                     "(Optuna's TPE); random: drawn at random.")
        trials = s2.number_input("Trials", 1, 1000, 20, key="search_trials",
                                 help="How many runs the search may train.")
        parallel = s3.number_input("At once", 1, 64, 1, key="search_parallel",
                                   help="Trials queued or training at once: one per worker.")
        o1, o2, o3 = st.columns(3)
        objectives = o1.multiselect("Minimise", OBJECTIVES, default=["loss"],
                                    key="search_objectives",
                                    help="Two objectives make a Pareto front (loss against "
                                         "FLOPs or training time).")
        pruner = o2.selectbox("Pruner", PRUNERS, key="search_pruner",
                              help="forecast: the early cut's decision; median, hyperband: "
                                   "Optuna's; none. Several objectives take none.")
        seed = o3.number_input("Seed", 0, 2**31 - 1, 0, key="search_seed")
        st.markdown("**Ranges**: low:high, or low:high:log")
        n_ranges = st.number_input("Range parameters", 0, MAX_ROWS, 1, key="search_n_ranges")
        range_rows = setting_rows(int(n_ranges), ("Range parameter", "Range"),
                                  "search_range_key", "search_range_span", GRID_DEFAULTS,
                                  "e.g. 1e-4:1e-2:log")
        st.markdown("**Choices**: one of these values")
        n_choices = st.number_input("Choice parameters", 0, MAX_ROWS, 0, key="search_n_choices")
        choice_rows = setting_rows(int(n_choices), ("Choice parameter", "Values"),
                                   "search_choice_key", "search_choice_values", CHOICE_DEFAULTS,
                                   "comma-separated, e.g. gelu,silu")
    ranges, choices = specs(range_rows), specs(choice_rows)
    with summary_col:
        name = st.text_input("Sweep name", key="sweep_name", max_chars=NAME_MAX,
                             placeholder="optional; named after the searched settings")
        plan, problem = None, None
        if ranges or choices:
            try:
                plan = plan_search(base_config(preset_name, overrides), ranges, choices,
                                   trials=int(trials), parallel=int(parallel),
                                   searcher=searcher, pruner=pruner,
                                   objectives=",".join(objectives) or "loss", seed=int(seed))
            except USER_ERRORS as exc:
                problem = str(exc)
        if problem:
            st.error(plain(problem))  # it may quote a value typed above
        elif plan is None:
            st.info("Give at least one range or choice to search over.")
        else:
            st.metric("This search trains", f"up to {plan.trials} runs")
            st.caption(f"Minimising {', '.join(plan.objectives)} over "
                       f"{', '.join(plan.params)}; pruner {plan.pruner}. Each trial is "
                       "proposed when a worker is free; the study is kept in this database.")
        if st.button("Start search", type="primary", disabled=plan is None,
                     width="stretch") and plan is not None:
            with user_errors():
                sweep_id, run_ids = submit_search(store, plan, name=name)
                st.session_state.sweep_pick = sweep_id
                st.toast(f"Queued the first {len(run_ids)} trial(s); the worker asks the "
                         "search for the next as each ends.")


st.subheader("New sweep")
if st.radio("Kind", [GRID, SEARCH], horizontal=True, key="sweep_kind",
            help="Grid / Random: every run planned up front. Search: Optuna proposes each "
                 "trial from the runs seen so far.") == SEARCH:
    search_form()
else:
    grid_form()

# ---- a sweep's runs ----------------------------------------------------------------------------
st.divider()
st.subheader("Results")
sweeps = store.list_sweeps()
if not sweeps:
    st.info("No sweeps yet: plan one above and press **Start sweep**.")
    st.stop()
by_id = {s.id: s for s in sweeps}
if st.session_state.get("sweep_pick") not in by_id:
    st.session_state.sweep_pick = sweeps[0].id
sweep = by_id[st.selectbox("Sweep", list(by_id), key="sweep_pick",
                           format_func=lambda i: f"#{i} {one_line(by_id[i].name)}")]
first_runs = store.list_runs(sweep_id=sweep.id)
# A search between two trials has none queued for a moment: it is open until its trials
# are spent or it is stopped, and the page keeps refreshing meanwhile.
search_open = (sweep.study is not None and not sweep.spec.get("stopped")
               and len(first_runs) < sweep.spec["search"]["trials"])
was_active = any(r.status in ACTIVE for r in first_runs)
training = training_now(store)[0]
params = swept_params(sweep.spec, [r.config for r in first_runs])
seeded = bool(sweep.spec.get("seeds"))  # each point repeated with consecutive seeds


def _forecast(run_id: int) -> Forecast | None:
    try:
        return run_forecast(store, run_id)
    except USER_ERRORS:
        return None


@st.fragment(run_every=sweep_refresh_every(
    [r.status for r in first_runs] + ([RunStatus.QUEUED] if search_open else []),
    tab_visible()))
def results() -> None:
    """The sweep's runs, their losses and forecasts, read afresh on every tick."""
    with rerun_if_database_away():
        results_tick()


def search_results(runs: list[RunRecord]) -> None:
    """A search's study: the trials it proposed that are still to train, best against
    trials, the trials across the settings, what mattered, and the Pareto front of two
    objectives."""
    with user_errors():
        view = search_view(store, sweep)
        budget = sweep.spec["search"]["trials"]
        left = ("asks no more (stopped)" if sweep.spec.get("stopped")
                else f"{trials_left(view.trials, budget)} more to ask")
        st.markdown(f"**Search**: {state_counts(view.trials) or 'no trials yet'} of "
                    f"{budget} trials · {left} · Optuna study")
        st.code(sweep.study, language=None)
        upcoming = next_trials(view.trials, view.params, runs)
        if not upcoming.empty:
            st.markdown("**Next trials**: proposed by the study, queued or training")
            st.dataframe(upcoming, hide_index=True, key="search_next", column_config={
                p: st.column_config.NumberColumn(format="%g") for p in view.params
                if upcoming[p].dtype.kind == "f"})
        first = view.objectives[0]
        if not (view.trials["state"] == "complete").any():
            return
        c1, c2 = st.columns(2)
        c1.plotly_chart(best_so_far_figure(view.trials, first), key="search_best",
                        config={"displaylogo": False})
        if len(view.objectives) > 1:
            c2.plotly_chart(pareto_figure(view.trials, view.objectives, view.front),
                            key="search_pareto", config={"displaylogo": False})
        elif view.importances:
            c2.plotly_chart(importance_figure(view.importances), key="search_importance",
                            config={"displaylogo": False})
        st.plotly_chart(parallel_figure(view.trials, view.params, first),
                        key="search_parallel", config={"displaylogo": False})


def results_tick() -> None:
    runs = store.list_runs(sweep_id=sweep.id)
    active = [r for r in runs if r.status in ACTIVE]
    if was_active and not active:
        st.rerun()  # the sweep ended: redraw the whole page once, without the timer
    if training_now(store)[0] != training:
        st.rerun()  # the worker took up the next run: redraw once, so the sidebar says so
    val = store.metrics([r.id for r in runs], [VAL_LOSS])
    evaluations = val["run_id"].value_counts()
    # A forecast changes only with a new evaluation: refit then, not on every tick (a fit
    # takes 40-300 ms of the CPU the run trains on).
    kept = st.session_state.setdefault("sweep_forecasts", {})
    forecasts = {}
    for r in runs:
        if r.status == RunStatus.RUNNING:
            forecast = kept.setdefault(r.id, LastBuilt()).get(
                int(evaluations.get(r.id, 0)), lambda run_id=r.id: _forecast(run_id))
            if forecast is not None:
                forecasts[r.id] = forecast
    table = sweep_table(runs, [*params, *(["seed"] if seeded else [])], last_values(val),
                        forecasts)
    done = sum(r.status == RunStatus.COMPLETED for r in runs)
    counts = ", ".join(f"{sum(r.status == s for r in runs)} {s}"
                       for s in dict.fromkeys(r.status for r in runs))
    st.markdown(f"**{done} of {len(runs)} runs completed** ({counts})"
                + (" · early cut on" if sweep.cut else ""))
    if active and st.button("Stop this sweep", help="Cancel its queued runs and stop the one "
                                                    "training (it saves a checkpoint); a "
                                                    "search asks no more trials."):
        with user_errors():
            stop_sweep(store, sweep.id)
            st.toast("Stop requested")
    # What the chart plots first, then progress and the raw losses; the long name last.
    shown = table[["id", "status", *params, *(["seed"] if seeded else []), "val loss",
                   "kind", "best", "step", "of",
                   "last val loss", "best val loss", "forecast", "forecast is", "name"]]
    if shown["forecast"].isna().all():
        shown = shown.drop(columns=["forecast", "forecast is"])  # nothing training
    losses = ("last val loss", "best val loss", "forecast", "val loss")
    st.dataframe(shown, hide_index=True, key="sweep_table", placeholder="—", column_config={
        "best": st.column_config.CheckboxColumn("best"),
        **{c: st.column_config.NumberColumn(format="%.4f") for c in losses},
        # Swept values in full (0.0001327, not 0.0001): they name the runs.
        **{p: st.column_config.NumberColumn(format="%g") for p in params
           if shown[p].dtype.kind == "f"}})
    st.caption("Best first: measured losses, then forecasts. *val loss* is a completed run's "
               "final evaluation, a training run's forecast of its final loss, or the last "
               "evaluation of a run that ended early (*kind* says which).")
    if sweep.study is not None:
        search_results(runs)
    if (table["kind"] == "").all():
        st.info("No val loss yet: the charts appear with the first evaluation of a run."
                if active else "No run of this sweep was evaluated, so there is nothing to "
                               "chart.")
        return
    means = seed_means(table, params) if seeded else None
    if seeded and not params and not means.empty:  # seeds alone: one point, no axis to chart
        [point] = means.itertuples()
        st.metric(f"Mean final val loss of {point.n} seeds", f"{point.mean:.4f} ± "
                  f"{point.std:.4f}", help="± one sample standard deviation")
    cols = st.columns(min(len(params), 2) or 1)
    for i, param in enumerate(params):
        with cols[i % len(cols)]:
            st.plotly_chart(sweep_figure(table, param, means), key=f"sweep_chart_{param}",
                            config={"displaylogo": False})
    if seeded and params:
        st.caption("Diamonds: each point's mean final val loss over its completed seeds, "
                   "with ±1 std bars; its runs are the faint markers behind it.")


results()

with st.expander("How this sweep was made"):
    st.json({k: v for k, v in sweep.spec.items() if k not in ("base", "runs")})
    st.caption(f"Created {sweep.created_at:%Y-%m-%d %H:%M} UTC · early cut "
               f"{'on' if sweep.cut else 'off'}")
