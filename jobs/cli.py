"""`gptdash`: train, queue, sweep, list, show, forecast, resume, sample and stop runs from
a terminal; tokenize corpora ahead of them.

Exit codes: 0 done, 1 the run failed, 2 bad input, 130 stopped with Ctrl-C (143 SIGTERM,
129 SIGHUP), 141 the reader of its output went away (``| head``).

Only the commands that train or sample import torch (from ``jobs.foreground``),
so ``gptdash list``, ``show``, ``stop``, ``submit``, ``sweep``, ``forecast``, ``plan`` and
``corpus`` answer at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from gptcore.config import PRESETS, TrainConfig, apply_overrides, parse_set_args, preset
from gptcore.errors import GptdashError
from gptcore.hf import with_hf_shape
from jobs.errors import USER_ERRORS
from jobs.exit_codes import (
    EXIT_BAD_INPUT,
    EXIT_BROKEN_PIPE,
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
)
from jobs.ray_cluster import RAY_ADDRESS_ENV, cluster_address
from storage.names import one_line
from storage.status import DEFAULT_AUTO_RESUMES, EXECUTORS, Executor, RunStatus
from storage.tags import format_tags, parse_tags

# The largest id a run or sweep can have: their id columns are 32-bit INTEGERs on PostgreSQL.
MAX_RECORD_ID = 2**31 - 1

if TYPE_CHECKING:
    from storage.store import RunStore


def _load_config(args) -> TrainConfig:
    cfg = preset(args.preset) if args.preset else TrainConfig()
    if args.config:
        path = Path(args.config)
        if path.is_dir():
            raise GptdashError(f"--config {args.config!r} is a directory: give the JSON file "
                               "in it (as the dashboard downloads)")
        if not path.exists():  # a pipe (--config <(...)) or /dev/stdin is read like a file
            raise GptdashError(f"config file {args.config!r} does not exist")
        loaded = TrainConfig.from_json(path.read_text(encoding="utf-8", errors="replace"))
        cfg = apply_overrides(cfg, loaded.flat()) if args.preset else loaded
    cfg = apply_overrides(cfg, parse_set_args(args.set or []))
    cfg, note = with_hf_shape(cfg)  # init_from=hf:DIR: the folder's shape and tokenizer
    if note:
        print(f"gptdash: {note}", file=sys.stderr)
    return cfg.validate()


def cmd_train(args, store: RunStore) -> int:
    # Checked before torch is imported: a typo is answered at once, not 1-2 s later.
    cfg = _load_config(args)  # every rank checks it, so a bad value stops them all

    from gptcore.distributed import ranks_from_env
    from jobs import runner
    from jobs.foreground import train_as_rank, train_new
    from jobs.threads import use_threads

    def create() -> int:
        return runner.create_run(store, cfg, name=args.name, tags=parse_tags(args.tag))

    if ranks_from_env().enabled:  # started by hand under torchrun
        return train_as_rank(store, cfg.device, create, args.quiet)
    if not args.quiet:
        # A corpus new to the cache is tokenized now, with its bar and a clean Ctrl-C:
        # creating the run would tokenize it too, silently.
        prepared = _prepare_here(cfg)
        if isinstance(prepared, int):
            return prepared
    use_threads(store, args.threads, counted=False)  # its run is not claimed yet
    return train_new(store, create(), args.quiet, args.threads)


def _prepare_here(cfg: TrainConfig):
    """The config's corpus tokenized here with a progress bar (``jobs.corpora``): its
    manifest and whether it was cached already; on a stop signal, the exit code (128 + the
    signal) once the line that says so is printed."""
    from jobs.corpora import Stopped, prepare_corpus, stopped_line

    try:
        return prepare_corpus(cfg.corpus, cfg.tokenizer, cfg.text_field, cfg.val_fraction)
    except Stopped as stop:
        print(f"\ngptdash: {stopped_line(stop)}", file=sys.stderr)  # below the bar's line
        return 128 + stop.signum


def cmd_rank(args, store: RunStore) -> int:
    """One torchrun rank of a claimed run (started by the worker; not for people)."""
    from jobs import runner

    result = runner.execute_run(store, args.run_id, claim=args.claim, device=args.device)
    return EXIT_OK if result.status != RunStatus.FAILED else EXIT_FAILED


def cmd_submit(args, store: RunStore) -> int:
    # Memory is checked without torch against the largest device here (a config that fits
    # none is refused); the worker that claims it checks its own device's free memory.
    from jobs import actions

    run_id = actions.submit(store, _load_config(args), name=args.name,
                            tags=parse_tags(args.tag), on=args.on)
    print(run_id)
    print(f"run {run_id} queued: {_who_trains(store, run_id)}; watch it with `gptdash list`",
          file=sys.stderr)
    return EXIT_OK


def _search_sweep(args, store: RunStore) -> int:
    """`gptdash sweep --search`: a study proposes each trial as a worker frees up."""
    from jobs.search import plan_search, submit_search

    given = [flag for flag, on in (("--grid", args.grid), ("--random", args.random),
                                   ("--cut", args.cut)) if on]
    if given:
        raise GptdashError(f"{given[0]} is for grid and random sweeps; a search takes --range, "
                           "--choice, --trials and --pruner")
    ranges, choices = args.range or [], args.choice or []
    swept = {spec.partition("=")[0].strip() for spec in [*ranges, *choices]}
    clash = sorted(swept & set(parse_set_args(args.set or [])))
    if clash:
        raise GptdashError(f"--set {clash[0]} is searched too (--range/--choice {clash[0]}): "
                           "drop one of the two")
    if args.trials is None:
        raise GptdashError("--search needs --trials N: how many runs it may train")
    plan = plan_search(_load_config(args), ranges, choices, trials=args.trials,
                       parallel=args.parallel, searcher=args.search, pruner=args.pruner,
                       objectives=args.objective or "loss", seed=args.seed,
                       seeds=args.seeds)
    sweep_id, run_ids = submit_search(store, plan, name=args.name, on=args.on)
    sweep = store.get_sweep(sweep_id)
    print(f"sweep {sweep_id} {sweep.name!r}: a {plan.searcher} search of {plan.trials} trials "
          f"over {', '.join(plan.params)}, minimising {', '.join(plan.objectives)}; pruner "
          f"{plan.pruner}; Optuna study {sweep.study!r} in this database")
    for run_id in run_ids:
        print(f"  run {run_id}: {store.get_run(run_id).name}")
    print(f"each trial is proposed as a worker frees up, {plan.parallel} at a time; "
          f"`gptdash serve` or `gptdash worker` trains them; watch them with "
          f"`gptdash list --sweep {sweep_id}`", file=sys.stderr)
    return EXIT_OK


def _who_trains(store: RunStore, run_id: int) -> str:
    """Who will train a queued run, for the line that says it is queued."""
    run = store.get_run(run_id)
    if run.executor == Executor.RAY:
        return f"Ray job {run.worker} trains it on the cluster at {cluster_address()}"
    return "`gptdash serve` or `gptdash worker` trains it"


def _roughly(seconds: float) -> str:
    """An estimate's size, no more precise than it is (jobs does not import ui's formats)."""
    if seconds >= 5400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def cmd_sweep(args, store: RunStore) -> int:
    if args.search is not None:
        return _search_sweep(args, store)
    if args.choice or args.trials is not None or args.objective or args.pruner:
        raise GptdashError("--choice, --trials, --objective and --pruner are for a search: "
                           "add --search tpe (or random)")
    # Like submit: every run's config, corpus and memory (torch-free) are checked here.
    from analysis.sweep import cut_steps
    from jobs.sweeps import (
        CONFIRM_ABOVE,
        NOMINAL_FLOPS_PER_S,
        count_runs,
        measured_pace,
        plan_sweep,
        submit_sweep,
    )
    grids, ranges = args.grid or [], args.range or []
    n_runs = count_runs(grids, ranges, random=args.random, seeds=args.seeds)  # before a huge one
    swept = {spec.partition("=")[0].strip() for spec in [*grids, *ranges]}
    clash = sorted(swept & set(parse_set_args(args.set or [])))
    if clash:
        raise GptdashError(f"--set {clash[0]} is swept too (--grid/--range {clash[0]}), so the "
                           "sweep's values would replace it: drop one of the two")
    if n_runs > CONFIRM_ABOVE and not args.yes:
        raise GptdashError(f"this sweep makes {n_runs} runs, more than {CONFIRM_ABOVE}: pass "
                           "--yes to queue them all, or sweep fewer values")
    base = _load_config(args)
    measured = measured_pace(store)
    plan = plan_sweep(base, grids, ranges, random=args.random, seed=args.seed, seeds=args.seeds,
                      pace=measured)
    sweep_id, run_ids = submit_sweep(store, plan, name=args.name, cut=args.cut, on=args.on)
    sweep = store.get_sweep(sweep_id)
    basis = ("the newest finished run's throughput, evaluations and start-up" if measured else
             f"a nominal {NOMINAL_FLOPS_PER_S / 1e9:g} GFLOP/s, a laptop CPU's; a GPU is far "
             "faster")
    cut = ""
    if args.cut:
        steps = sorted({s for cfg in plan.configs for s in cut_steps(cfg.max_steps)})
        cut = f"; a confident loser is cut at step {' or '.join(map(str, steps))}"
    print(f"sweep {sweep_id} {sweep.name!r}: {len(run_ids)} runs queued{cut}")
    for i, run_id in enumerate(run_ids):
        print(f"  run {run_id}: {plan.label(i)}")
    print(f"estimated training time: about {_roughly(plan.estimated_seconds)} in all, "
          f"one after another (estimated from {basis})")
    who = (f"each as a Ray job on the cluster at {cluster_address()}" if args.on == Executor.RAY
           else "`gptdash serve` or `gptdash worker` trains them")
    print(f"{who}; watch them with `gptdash list --sweep {sweep_id}`", file=sys.stderr)
    return EXIT_OK


def cmd_forecast(args, store: RunStore) -> int:
    store.get_run(args.run_id)  # a missing run is refused before scipy and pandas load
    from jobs.forecasting import forecast_report

    report = forecast_report(store, args.run_id, upto=args.upto)
    print(json.dumps(report))
    if report["calibrated_on"] == "other shapes":
        how = f"calibrated on other shapes ({report['family_size']} runs)"
    elif report["calibrated"]:
        how = f"calibrated on {report['family_size']} finished relative(s)"
    elif report["family_size"] or report["left_out"]:
        how = "uncalibrated: fitted on this run alone"
    else:
        how = ("uncalibrated: no finished relative (same model, data, batch and optimizer); "
               "`gptdash calibrate` queues one")
    how += "".join(f"; left out of the family's fit: {why}" for why in report["left_out"])
    if report["note"]:
        how += f"; note: {report['note']}"
    print(f"run {args.run_id}: forecast {report['predicted_final']:.4g} "
          f"({report['low']:.4g}-{report['high']:.4g}, {report['level']:.0%} band) at step "
          f"{report['max_steps']:,}; {how}", file=sys.stderr)
    return EXIT_OK


def cmd_plan(args, store: RunStore) -> int:
    from jobs import plan_report, planning

    if args.device and not args.budget:
        raise GptdashError("--device says whose speed turns a time into FLOPs: give the time "
                           "with --budget (e.g. --budget 2h --device cpu), or leave out --device")
    bp = planning.make_plan(
        store, seconds=planning.parse_duration(args.budget) if args.budget else None,
        flops=planning.parse_amount(args.flops, "FLOPs") if args.flops else None,
        tokens=planning.parse_amount(args.tokens, "tokens") if args.tokens else None,
        device=args.device, corpus=args.corpus, tokenizer=args.tokenizer,
        ladder_time_s=planning.parse_duration(args.ladder_time))
    out = plan_report.report(bp) if args.json else None
    text = [] if args.json else plan_report.lines(bp)
    if args.queue and bp.plan.ladder is not None:
        sweep_id, run_ids = planning.queue_ladder(store, bp)
        text.append(f"sweep {sweep_id}: the ladder's {len(run_ids)} runs queued; watch them "
                    f"with `gptdash list --sweep {sweep_id}`, then plan again")
        if out is not None:
            out.update(queued_sweep=sweep_id, queued_runs=run_ids)
    elif args.queue:
        run_id = planning.queue_recommended(store, bp)
        text.append(f"run {run_id} queued: {_who_trains(store, run_id)}")
        if out is not None:
            out["queued_run"] = run_id
    if out is not None:
        print(json.dumps(out))
    for line in text:  # beside --json, only what was queued: on stderr, as forecast's words
        print(one_line(line), file=sys.stderr if args.json else sys.stdout)
    return EXIT_OK


def cmd_calibrate(args, store: RunStore) -> int:
    from jobs.calibration import submit_calibration

    run_id = submit_calibration(store, args.run_id, steps=args.steps)
    print(run_id)
    print(f"run {run_id} queued: a short relative of run {args.run_id} (its lr held, then a "
          f"quick cool-down); once it completes, run {args.run_id}'s forecast is calibrated "
          f"on it", file=sys.stderr)
    return EXIT_OK


def cmd_resume(args, store: RunStore) -> int:
    if args.on == Executor.RAY:
        from jobs import actions

        print(actions.resume(store, args.run_id, on=args.on))
        return EXIT_OK
    if args.queue:
        from jobs import actions, runner

        fresh = not runner.has_checkpoint(store.get_run(args.run_id))
        actions.resume(store, args.run_id)
        note = " (no checkpoint yet: restarting from step 0)" if fresh else ""
        print(f"run {args.run_id} queued to resume on the next free worker{note}")
        return EXIT_OK
    from jobs.foreground import cmd_resume as resume
    from jobs.threads import use_threads

    use_threads(store, args.threads, counted=False)  # its run is not claimed yet
    return resume(args, store)


def cmd_sample(args, store: RunStore) -> int:
    from jobs.foreground import cmd_sample as sample
    from jobs.threads import use_threads

    use_threads(store, args.threads, counted=False)
    return sample(args, store)


def cmd_export(args, store: RunStore) -> int:
    from jobs.export import export_run  # imports torch: only this command pays for it

    files = export_run(store, args.run_id, args.folder, which=args.checkpoint, fmt=args.format)
    print(f"run {args.run_id} exported to {Path(args.folder).expanduser()}: "
          f"{', '.join(p.name for p in files)}; load it with "
          "transformers' AutoModelForCausalLM.from_pretrained", file=sys.stderr)
    return EXIT_OK


def cmd_ray_run(args, store: RunStore) -> int:
    """A Ray job's entrypoint: train the run queued for this job (not for people)."""
    from jobs.ray_executor import run_job

    return run_job(store, args.run_id, args.job)


def cmd_list(args, store: RunStore) -> int:
    if args.sweep is not None:
        sweep = store.get_sweep(args.sweep)  # a clear error when there is no such sweep
        print(f"sweep {sweep.id} {sweep.name!r}"
              f"{' (successive halving)' if sweep.cut else ''}")
    runs = store.list_runs(status=args.status, tag=args.tag, text=args.text,
                           sweep_id=args.sweep)
    if not runs:
        filtered = any(f is not None for f in (args.sweep, args.status, args.tag, args.text))
        print("no runs" if filtered
              else "no runs yet: start one with `gptdash train --preset tiny`")
        return EXIT_OK
    print(f"{'id':>4}  {'status':<11} {'steps':>13}  {'best val':>8}  name")
    for r in runs:
        best = f"{r.best_val_loss:.4f}" if r.best_val_loss is not None else "-"
        tags = f"  [{one_line(format_tags(r.tags))}]" if r.tags else ""
        # one_line: a row from before names were checked may hold a newline.
        print(f"{r.id:>4}  {r.status:<11} {f'{r.last_step}/{r.max_steps}':>13}  {best:>8}  "
              f"{one_line(r.name)}{tags}")
    return EXIT_OK


def cmd_show(args, store: RunStore) -> int:
    from jobs.recovery import attempt_summary

    r = store.get_run(args.run_id)
    info = {"id": r.id, "name": r.name, "status": r.status, "tags": list(r.tags),
            "notes": r.notes,
            "device": r.device, "n_params": r.n_params, "created_at": str(r.created_at),
            "started_at": str(r.started_at), "finished_at": str(r.finished_at),
            "duration_s": r.duration_s,  # time spent training, over all its attempts
            "steps": f"{r.last_step}/{r.max_steps}", "tokens_seen": r.tokens_seen,
            "best_val_loss": r.best_val_loss, "last_train_loss": r.last_train_loss,
            "error": r.error, "checkpoint": r.checkpoint_path, "parent_id": r.parent_id,
            "worker": r.worker, "executor": r.executor, "sweep_id": r.sweep_id,
            "attempt": attempt_summary(r),
            "events": [{"step": int(e.step), "kind": e.kind, "message": e.message}
                       for e in store.event_rows([r.id])],
            "config": r.config}
    print(json.dumps(info, indent=2, default=str))
    return EXIT_OK


def cmd_stop(args, store: RunStore) -> int:
    if (args.run_id is None) == (args.sweep is None):
        raise GptdashError("stop takes a run id or --sweep SWEEP_ID (one of the two)")
    if args.sweep is not None:
        return _stop_sweep(store, args.sweep)
    from jobs.actions import Stop, stop

    done = stop(store, args.run_id)
    if done == Stop.CANCELLED:
        print(f"run {args.run_id} cancelled")
    elif done == Stop.REQUESTED:
        print(f"stop requested for run {args.run_id}; it saves a checkpoint and stops within "
              "a step")
    else:
        print(f"run {args.run_id} ended on its own meanwhile: "
              f"{store.get_run(args.run_id).status}")
    return EXIT_OK


def _stop_sweep(store: RunStore, sweep_id: int) -> int:
    from jobs.sweeps import stop_sweep

    done = stop_sweep(store, sweep_id)
    for ids, what in ((done.cancelled, "cancelled"),
                      (done.stopping, "asked to stop; each saves a checkpoint and stops within "
                                      "a step"),
                      (done.ended, "ended on their own meanwhile")):
        if ids:
            print(f"sweep {sweep_id}: run(s) {', '.join(f'#{i}' for i in ids)} {what}")
    return EXIT_OK


def cmd_worker(args, store: RunStore) -> int:
    from jobs.worker import run_worker

    return run_worker(store, name=args.name, device=args.device, dead_after_s=args.dead_after,
                      exit_when_idle=args.exit_when_idle, threads=args.threads,
                      auto_resume=args.auto_resume)


def cmd_corpus_prepare(args) -> int:
    # The config's own checks: the same tokenizers, field and val_fraction a run accepts, so
    # the cache folder made here is the one `train --set corpus=...` then finds.
    cfg = apply_overrides(TrainConfig(), {"corpus": args.path, "tokenizer": args.tokenizer,
                                          "text_field": args.text_field,
                                          "val_fraction": args.val_fraction}).validate()
    from jobs.corpora import summary

    prepared = _prepare_here(cfg)
    if isinstance(prepared, int):
        return prepared
    print(summary(*prepared))
    return EXIT_OK


def cmd_corpus_list(args) -> int:
    from jobs.corpora import listing

    print("\n".join(listing()))
    return EXIT_OK


def cmd_db_upgrade(args) -> int:
    """Bring the database to the schema this gptdash needs (no RunStore: that would refuse)."""
    from storage.home import db_url
    from storage.migrate import upgrade
    from storage.schema import make_engine

    engine = make_engine(db_url())
    try:
        before, after = upgrade(engine)
    finally:
        engine.dispose()
    if before == after:
        print(f"the database is already at the latest revision ({after})")
    else:
        print(f"upgraded the database from revision {before or 'none'} to {after}")
    return EXIT_OK


def cmd_serve(args, store: RunStore) -> int:
    from jobs.serve import serve

    return serve(store, args.address, args.port, tls_cert=args.tls_cert, tls_key=args.tls_key,
                 auto_resume=args.auto_resume)


def _status(value: str) -> str:
    """A run status for ``list --status``; anything else is an argparse error (exit 2)."""
    from storage.status import STATUSES

    if value not in STATUSES:
        raise argparse.ArgumentTypeError(f"{value!r} is not a run status; choose one of "
                                         f"{', '.join(STATUSES)}")
    return value


def _port(value: str) -> int:
    """A TCP port for ``serve --port``; anything else is an argparse error (exit 2)."""
    try:
        port = int(value)
    except ValueError:
        port = 0
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} is not a port: use a number from 1 to "
                                         "65535")
    return port


def _threads(value: str) -> int:
    """A count of torch threads for ``--threads``; anything else is an argparse error."""
    try:
        threads = int(value)
    except ValueError:
        threads = 0
    if threads < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a count of threads: use 1 or more")
    return threads


def _record_id(value: str) -> int:
    """A run or sweep id as the database can hold one (a 32-bit INTEGER on PostgreSQL), so
    an id past it gets one line that says so, not the database's overflow error."""
    try:
        record_id = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid int value: {value!r}") from None
    if abs(record_id) > MAX_RECORD_ID:
        raise argparse.ArgumentTypeError(f"{value} is past the largest id, {MAX_RECORD_ID}: "
                                         "no run or sweep has it")
    return record_id


def _add_threads_arg(p: argparse.ArgumentParser, what: str) -> None:
    """``--threads``: the torch threads of a process that trains or samples."""
    p.add_argument("--threads", type=_threads, metavar="N",
                   help=f"torch threads {what} (default: this process's CPUs shared among "
                        "the runs and workers on this machine, at most one per core)")


def _auto_resumes(value: str) -> int:
    """A count of automatic resumes for ``--auto-resume``: 0 or more (argparse error else)."""
    try:
        count = int(value)
    except ValueError:
        count = -1
    if count < 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a count: give 0 (off) or more")
    return count


def _add_auto_resume_arg(p: argparse.ArgumentParser) -> None:
    """``--auto-resume``: the default limit of a run's automatic resumes."""
    p.add_argument("--auto-resume", type=_auto_resumes, default=DEFAULT_AUTO_RESUMES,
                   metavar="N", help="resume a run whose worker, machine or Ray job was lost "
                   "from its last checkpoint by itself, up to N times (default "
                   f"{DEFAULT_AUTO_RESUMES}; 0: never); a run's own max_auto_resumes wins")


def _add_config_args(p: argparse.ArgumentParser, what: str = "run") -> None:
    """The options that make a config, shared by ``train``, ``submit`` and ``sweep``."""
    p.add_argument("--preset", choices=sorted(PRESETS), help="start from a preset")
    p.add_argument("--config", help="a JSON config file (as the dashboard downloads)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override one setting, e.g. --set lr=3e-4 (repeatable)")
    p.add_argument("--name", help=f"name of the {what}")
    if what == "run":
        p.add_argument("--tag", action="append",
                       help="tag the run: --tag a,b or --tag a --tag b (repeatable)")


def _add_on_arg(p: argparse.ArgumentParser) -> None:
    """``--on``: who trains the queued runs (``submit``, ``sweep``, ``resume``)."""
    p.add_argument("--on", choices=EXECUTORS, default=Executor.LOCAL,
                   help="local: any `gptdash worker` or `gptdash serve` (default); ray: a job "
                        f"of its own on the Ray cluster at ${RAY_ADDRESS_ENV}")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (as every other refusal is), exit 2; the
    usage itself is one ``--help`` away."""

    def error(self, message: str):
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="gptdash", description="Train small GPTs; every run is "
                "recorded in the gptdash database ($GPTDASH_HOME).")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    t = sub.add_parser("train", help="create a run and train it in the foreground")
    _add_config_args(t)
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_threads_arg(t, "to train on")
    t.set_defaults(func=cmd_train)

    q = sub.add_parser("submit", help="queue a run for the dashboard's worker (or any "
                       "`gptdash worker`) and print its id")
    _add_config_args(q)
    _add_on_arg(q)
    q.set_defaults(func=cmd_submit)

    sw = sub.add_parser("sweep", help="queue one run per combination of --grid values (and "
                        "--random draws from --range), as one sweep; print its ids")
    _add_config_args(sw, what="the sweep (each run is named after it and its values)")
    sw.add_argument("--grid", action="append", metavar="KEY=V1,V2,...",
                    help="try every value, crossed with every other --grid (repeatable)")
    sw.add_argument("--range", action="append", metavar="KEY=LOW:HIGH[:log|lin]",
                    help="draw --random values from this range (repeatable)")
    sw.add_argument("--random", type=int, default=0, metavar="N",
                    help="draws from the --range settings, for every --grid combination")
    sw.add_argument("--seed", type=int, default=0, help="seed of the --random draws")
    sw.add_argument("--seeds", type=int, default=0, metavar="N",
                    help="train every point (a search: every trial, scored by their mean) N "
                         "times, with the config's seed, seed+1, ... "
                         "(set the first with --set seed=S); Compare and Sweeps show their "
                         "mean and spread")
    sw.add_argument("--cut", action="store_true",
                    help="successive halving: stop a run at a quarter or half of max_steps "
                         "when its forecast final loss is confidently worse than the best's")
    sw.add_argument("--yes", action="store_true",
                    help="queue a sweep of more than 100 runs (asked for, so a typo in a "
                         "grid does not queue days of training)")
    sw.add_argument("--search", metavar="tpe|random",
                    help="a search on Optuna: each trial's config proposed from the runs "
                         "seen so far (TPE) or at random, as a worker frees up")
    sw.add_argument("--trials", type=int, metavar="N", help="a search's number of runs")
    sw.add_argument("--choice", action="append", metavar="KEY=V1,V2,...",
                    help="a search picks one of these values (repeatable)")
    sw.add_argument("--objective", metavar="loss[,flops|time]",
                    help="what a search minimises: loss (default), flops, time; two or more "
                         "make a Pareto front")
    sw.add_argument("--pruner", metavar="forecast|median|hyperband|none",
                    help="how a search stops losing trials early (default: forecast, our "
                         "--cut; none for several objectives)")
    sw.add_argument("--parallel", type=int, default=1, metavar="N",
                    help="a search's trials queued or training at once (one per worker)")
    _add_on_arg(sw)
    sw.set_defaults(func=cmd_sweep)

    fc = sub.add_parser("forecast", help="a run's forecast final val loss as one JSON line")
    fc.add_argument("run_id", type=_record_id)
    fc.add_argument("--upto", type=int, metavar="STEP",
                    help="use only the evaluations up to this step (to check the forecast "
                         "against a finished run)")
    fc.set_defaults(func=cmd_forecast)

    pl = sub.add_parser("plan", help="from your runs: the model, steps and lr for a budget, "
                        "its predicted loss with a band, and the runs that would tell more")
    pl.add_argument("--budget", metavar="TIME", help="wall time on --device: 2h, 30m, 1h30m")
    pl.add_argument("--device", metavar="DEVICE", help="whose measured speed turns --budget "
                    "into FLOPs: cpu, cuda (default: the newest measured run's)")
    pl.add_argument("--flops", metavar="C", help="the budget in training FLOPs, e.g. 3e15")
    pl.add_argument("--tokens", metavar="D", help="the budget as the tokens of the "
                    "compute-optimal run, e.g. 5e8")
    pl.add_argument("--corpus", help="plan from the runs of this corpus (default: the newest "
                    "run's)")
    pl.add_argument("--tokenizer", help="... and this tokenizer (default: the newest run's)")
    pl.add_argument("--ladder-time", default="30m", metavar="TIME",
                    help="when the runs cannot fit the law, the IsoFLOP ladder proposed "
                         "trains in this time (default 30m)")
    pl.add_argument("--queue", action="store_true", help="queue the recommended run, or the "
                    "proposed ladder as a sweep when there is one")
    pl.add_argument("--json", action="store_true", help="print one JSON object")
    pl.set_defaults(func=cmd_plan)

    cb = sub.add_parser("calibrate", help="queue a short relative of a run that calibrates "
                                          "its forecast family")
    cb.add_argument("run_id", type=_record_id)
    cb.add_argument("--steps", type=int, metavar="N",
                    help="steps of the calibration run (default: half the run's)")
    cb.set_defaults(func=cmd_calibrate)

    r = sub.add_parser("resume", help="continue a stopped or interrupted run")
    r.add_argument("run_id", type=_record_id)
    r.add_argument("--quiet", action="store_true")
    _add_threads_arg(r, "to train on here")
    r.add_argument("--queue", action="store_true",
                   help="put it back in the queue for a worker instead of training it here")
    r.add_argument("--on", choices=EXECUTORS, default=Executor.LOCAL,
                   help="ray: queue it as a new job on the Ray cluster at "
                        f"${RAY_ADDRESS_ENV} instead (local: --queue or here)")
    r.set_defaults(func=cmd_resume)

    ls = sub.add_parser("list", help="list runs, newest first")
    ls.add_argument("--status", type=_status, help="only runs in this status (queued, "
                    "running, completed, stopped, failed or interrupted)")
    ls.add_argument("--tag")
    ls.add_argument("--text")
    ls.add_argument("--sweep", type=_record_id, metavar="SWEEP_ID",
                    help="only the runs of this sweep")
    ls.set_defaults(func=cmd_list)

    s = sub.add_parser("show", help="a run's details and config as JSON")
    s.add_argument("run_id", type=_record_id)
    s.set_defaults(func=cmd_show)

    st = sub.add_parser("stop", help="ask a running run to stop (or cancel a queued one)")
    st.add_argument("run_id", type=_record_id, nargs="?")
    st.add_argument("--sweep", type=_record_id, metavar="SWEEP_ID",
                    help="instead of one run: cancel the sweep's queued runs and stop its "
                         "running ones")
    st.set_defaults(func=cmd_stop)

    sm = sub.add_parser("sample", help="generate text from a run's checkpoint")
    sm.add_argument("run_id", type=_record_id)
    sm.add_argument("--prompt", required=True)
    sm.add_argument("--max-new-tokens", type=int, default=200)
    sm.add_argument("--temperature", type=float, default=0.8)
    sm.add_argument("--top-k", type=int, default=0)
    sm.add_argument("--top-p", type=float, default=1.0)
    sm.add_argument("--seed", type=int)
    sm.add_argument("--checkpoint", choices=("best", "latest"), default="best",
                    help="the weights with the best val loss (default) or the last ones")
    _add_threads_arg(sm, "to sample on")
    sm.set_defaults(func=cmd_sample)

    ex = sub.add_parser("export", help="write a run's weights as a Hugging Face GPT-2 folder "
                        "(config.json, model.safetensors, tokenizer, README.md)")
    ex.add_argument("run_id", type=_record_id)
    ex.add_argument("folder", metavar="DIR", help="a new or empty folder")
    ex.add_argument("--format", default="hf",
                    help="hf (the default): a folder transformers loads; gguf: says how to "
                         "convert one with llama.cpp")
    ex.add_argument("--checkpoint", choices=("best", "latest"), default="best",
                    help="the weights with the best val loss (default) or the last ones")
    ex.set_defaults(func=cmd_export)

    w = sub.add_parser("worker", help="train queued runs from the shared database, one at a "
                       "time, until Ctrl-C / SIGTERM")
    w.add_argument("--name", help="how this worker shows on the dashboard (default host:pid)")
    w.add_argument("--device", default="auto",
                   help="auto, cpu, cuda, cuda:N or mps: where runs whose config says auto "
                        "train (default: the best this machine has)")
    w.add_argument("--dead-after", type=float, default=60.0, metavar="SECONDS",
                   help="a run whose owner has not beaten for this long becomes interrupted")
    w.add_argument("--exit-when-idle", action="store_true",
                   help="exit once the queue is empty (for batch jobs)")
    _add_threads_arg(w, "each run trains on")
    _add_auto_resume_arg(w)
    w.set_defaults(func=cmd_worker, waits_for_database=True)

    rk = sub.add_parser("rank", help="(internal) one torchrun rank of a run that a worker "
                        "launched")
    rk.add_argument("run_id", type=_record_id)
    rk.add_argument("--device")
    rk.add_argument("--claim", type=int, required=True,
                    help="the fencing token of the worker's claim, which rank 0 writes with")
    rk.set_defaults(func=cmd_rank)

    rr = sub.add_parser("ray-run", help="(internal) the entrypoint of a run's Ray job")
    rr.add_argument("run_id", type=_record_id)
    rr.add_argument("--job", required=True, help="the job's submission id")
    rr.set_defaults(func=cmd_ray_run)

    defaults = TrainConfig()
    co = sub.add_parser("corpus", help="tokenize a corpus once into the shared token cache, "
                        "or list the cache")
    co_sub = co.add_subparsers(dest="corpus_command", required=True, metavar="COMMAND")
    cp = co_sub.add_parser("prepare", help="tokenize a corpus (a text, JSON Lines or Parquet "
                           "file, gzip/zstd too, a folder of them, or a nanoGPT train.bin/"
                           "val.bin folder) so runs on it start at once")
    cp.add_argument("path", help="the corpus, as a run's corpus setting names it")
    cp.add_argument("--tokenizer", default=defaults.tokenizer,
                    help=f"gpt2 or byte (default {defaults.tokenizer}, as a run's)")
    cp.add_argument("--text-field", default=defaults.text_field, metavar="F",
                    help="the JSON Lines field or Parquet column holding the text (default "
                         f"{defaults.text_field})")
    cp.add_argument("--val-fraction", default=str(defaults.val_fraction), metavar="X",
                    help=f"share held out for validation (default {defaults.val_fraction}, "
                         "as a run's: use the run's value, or it tokenizes again)")
    cp.set_defaults(func=cmd_corpus_prepare, needs_store=False)
    cl = co_sub.add_parser("list", help="the corpora prepared in the token cache, and those "
                           "being prepared")
    cl.set_defaults(func=cmd_corpus_list, needs_store=False)

    db = sub.add_parser("db", help="database maintenance")
    db_sub = db.add_subparsers(dest="db_command", required=True)
    up = db_sub.add_parser("upgrade", help="bring the database to the latest schema (run it "
                           "once, from one machine, after upgrading gptdash)")
    up.set_defaults(func=cmd_db_upgrade, needs_store=False)

    sv = sub.add_parser("serve", help="start the dashboard and its training worker "
                        "(127.0.0.1 unless told otherwise)")
    sv.add_argument("--address", default="127.0.0.1",
                    help="address to bind; anything but loopback needs GPTDASH_PASSWORD")
    sv.add_argument("--port", type=_port, default=8501, help="TCP port, 1 to 65535")
    sv.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate "
                    "(with --tls-key): off loopback, so the password is not sent in clear")
    sv.add_argument("--tls-key", metavar="PEM", help="the certificate's private key, "
                    "unencrypted")
    _add_auto_resume_arg(sv)
    sv.set_defaults(func=cmd_serve)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command; a reader that closes the pipe early (``gptdash list | head -1``)
    ends it quietly with 141, as SIGPIPE ends other Unix tools, not with a traceback."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, not at exit, where a closed pipe can no longer be caught
        if _a_torchrun_rank():
            _end_without_finalizing(code)
        return code
    except BrokenPipeError:
        # Whatever is still buffered goes nowhere, so the exit's own flush fails no more.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def _a_torchrun_rank() -> bool:
    """Whether this process trained as one of several torchrun ranks (torch is loaded)."""
    if "torch" not in sys.modules:
        return False
    from gptcore.distributed import ranks_from_env

    return ranks_from_env().enabled


def _end_without_finalizing(code: int) -> None:
    """End a torchrun rank now, skipping the interpreter's teardown.

    gloo's worker threads outlive ``destroy_process_group`` and may drop a finished
    collective's tensors late; during teardown that takes the GIL of a dying interpreter
    and aborts the rank ("terminate called without an active exception", SIGABRT), which
    torchrun reports as a failed run after it completed. By now every row is committed;
    only the streams and the log handlers need flushing.
    """
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    # Imported after parsing, so `gptdash --help` and usage errors answer at once.
    from jobs.ray_executor import reconcile
    from jobs.recovery import recover_interrupted
    from storage.store import RunStore

    try:
        if not getattr(args, "needs_store", True):
            return args.func(args)
        if getattr(args, "waits_for_database", False):
            from jobs.worker import store_when_up

            store = store_when_up()  # a worker waits out an outage; other commands say it
        else:
            store = RunStore()
        # Before anything reads or changes runs: a run whose process is gone is not
        # "running", whether or not a dashboard was ever started. Ray first: it knows why.
        for line in reconcile(store):
            print(f"gptdash: {line}", file=sys.stderr)
        found = recover_interrupted(store)
        if found:
            ids = ", ".join(f"#{i}" for i in found)
            print(f"gptdash: run(s) {ids} were left running by a process that is gone; marked "
                  "interrupted (continue with `gptdash resume RUN`)", file=sys.stderr)
        return args.func(args, store)
    except USER_ERRORS as exc:
        print(f"gptdash: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("gptdash: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
