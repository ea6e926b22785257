"""`gptdash`: train, list, show, resume, sample and stop runs from a terminal.

Exit codes: 0 done, 1 the run failed, 2 bad input, 130 stopped with Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import threading
import time
from pathlib import Path

from gptcore.config import PRESETS, TrainConfig, apply_overrides, parse_set_args, preset
from gptcore.errors import GptdashError
from gptcore.trainer import TrainerCallbacks, TrainResult
from jobs import runner
from jobs.errors import USER_ERRORS
from jobs.manager import worker_id
from storage.store import RunStore

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130


class Progress(TrainerCallbacks):
    """A one-line progress bar with ETA on a terminal; plain lines elsewhere."""

    def __init__(self, stream=sys.stderr):
        self.stream = stream
        self.tty = stream.isatty()
        self.start = time.monotonic()
        self.start_step = 0
        self.max_steps = 1
        self.loss = math.nan
        self.val = math.nan
        self.tps = math.nan
        self._last_print = 0.0

    def on_start(self, info):
        self.start_step, self.max_steps = info["start_step"], info["max_steps"]
        self.start = time.monotonic()
        print(f"training on {info['device']}: {info['n_params']:,} parameters, "
              f"steps {info['start_step']}..{info['max_steps']}", file=self.stream)

    def on_metrics(self, step, metrics):
        self.loss = metrics.get("train/loss", self.loss)
        self.tps = metrics.get("tokens_per_sec", self.tps)
        if "val/loss" in metrics:
            self.val = metrics["val/loss"]
            if not self.tty:
                print(f"step {step}: val loss {self.val:.4f}", file=self.stream, flush=True)
        self._draw(step)

    def _draw(self, step: int) -> None:
        now = time.monotonic()
        if not self.tty or (now - self._last_print < 0.2 and step + 1 < self.max_steps):
            return
        self._last_print = now
        done = max(step + 1 - self.start_step, 1)
        total = max(self.max_steps - self.start_step, 1)
        frac = min(1.0, (step + 1) / self.max_steps)
        eta = (now - self.start) / done * max(total - done, 0)
        bar = "#" * int(30 * frac)
        self.stream.write(f"\r[{bar:<30}] {step + 1}/{self.max_steps} loss {self.loss:.4f} "
                          f"val {self.val:.4f} {self.tps:,.0f} tok/s ETA {eta:4.0f}s ")
        self.stream.flush()

    def on_status(self, status, message=None):
        if self.tty and status != "running":
            self.stream.write("\n")


def _load_config(args) -> TrainConfig:
    cfg = preset(args.preset) if args.preset else TrainConfig()
    if args.config:
        path = Path(args.config)
        if not path.is_file():
            raise GptdashError(f"config file {args.config!r} does not exist")
        loaded = TrainConfig.from_json(path.read_text(encoding="utf-8", errors="replace"))
        cfg = apply_overrides(cfg, loaded.flat()) if args.preset else loaded
    return apply_overrides(cfg, parse_set_args(args.set or [])).validate()


def _train_foreground(store: RunStore, run_id: int, quiet: bool) -> int:
    """Train a claimed run here; Ctrl-C stops it within a step, with a checkpoint."""
    stop = threading.Event()
    presses = 0

    def on_sigint(signum, frame):
        nonlocal presses
        presses += 1
        if presses > 1:
            raise KeyboardInterrupt
        stop.set()

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        result = runner.execute_run(store, run_id, stop_event=stop,
                                    extra_callbacks=None if quiet else Progress())
    except KeyboardInterrupt:
        print(f"run {run_id} aborted by a second Ctrl-C; resume it with "
              f"`gptdash resume {run_id}`", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        signal.signal(signal.SIGINT, previous)
    return _summarise(store, run_id, result, interrupted=stop.is_set() and presses > 0)


def _summarise(store: RunStore, run_id: int, result: TrainResult, interrupted: bool) -> int:
    run = store.get_run(run_id)
    if result.status == "failed":
        print(f"run {run_id} failed: {result.reason}", file=sys.stderr)
        return EXIT_FAILED
    if result.status == "stopped":
        print(f"run {run_id} stopped at step {result.step}; checkpoint saved. Resume with "
              f"`gptdash resume {run_id}`", file=sys.stderr)
        return EXIT_INTERRUPTED if interrupted else EXIT_OK
    best = f"{result.best_val_loss:.4f}" if result.best_val_loss is not None else "n/a"
    note = f" ({result.reason})" if result.reason else ""
    print(f"run {run_id} '{run.name}' completed at step {result.step}{note}: best val loss {best}, "
          f"last train loss {result.metrics.get('train/loss', math.nan):.4f}; "
          f"checkpoint {result.checkpoint}")
    return EXIT_OK


def cmd_train(args, store: RunStore) -> int:
    cfg = _load_config(args)
    run_id = runner.create_run(store, cfg, name=args.name, tags=args.tag)
    # Claim it for this process at once, so a dashboard worker never picks it up.
    store.update_run(run_id, status="running", worker=worker_id())
    print(f"run {run_id} created", file=sys.stderr)
    return _train_foreground(store, run_id, args.quiet)


def cmd_resume(args, store: RunStore) -> int:
    runner.queue_resume(store, args.run_id)
    store.update_run(args.run_id, status="running", worker=worker_id())
    return _train_foreground(store, args.run_id, args.quiet)


def cmd_list(args, store: RunStore) -> int:
    runs = store.list_runs(status=args.status, tag=args.tag, text=args.text)
    if not runs:
        print("no runs yet: start one with `gptdash train --preset tiny`")
        return EXIT_OK
    print(f"{'id':>4}  {'status':<11} {'steps':>13}  {'best val':>8}  name")
    for r in runs:
        best = f"{r.best_val_loss:.4f}" if r.best_val_loss is not None else "-"
        print(f"{r.id:>4}  {r.status:<11} {f'{r.last_step}/{r.max_steps}':>13}  {best:>8}  "
              f"{r.name}")
    return EXIT_OK


def cmd_show(args, store: RunStore) -> int:
    r = store.get_run(args.run_id)
    info = {"id": r.id, "name": r.name, "status": r.status, "tags": r.tags, "notes": r.notes,
            "device": r.device, "n_params": r.n_params, "created_at": str(r.created_at),
            "started_at": str(r.started_at), "finished_at": str(r.finished_at),
            "steps": f"{r.last_step}/{r.max_steps}", "tokens_seen": r.tokens_seen,
            "best_val_loss": r.best_val_loss, "last_train_loss": r.last_train_loss,
            "error": r.error, "checkpoint": r.checkpoint_path, "parent_id": r.parent_id,
            "config": r.config}
    print(json.dumps(info, indent=2, default=str))
    return EXIT_OK


def cmd_stop(args, store: RunStore) -> int:
    r = store.get_run(args.run_id)
    if r.status in ("queued", "running"):
        store.request_stop(r.id)  # first, so a worker claiming it meanwhile stops it
    r = store.get_run(args.run_id)
    if r.status == "queued":
        store.set_status(r.id, "stopped", error="cancelled before it started")
        print(f"run {r.id} cancelled")
    elif r.status == "running":
        print(f"stop requested for run {r.id}; it saves a checkpoint and stops within a step")
    else:
        raise GptdashError(f"run {r.id} is {r.status}, not running")
    return EXIT_OK


def cmd_sample(args, store: RunStore) -> int:
    from gptcore.checkpoint import model_from_checkpoint
    from gptcore.generate import SamplingConfig, stream_text
    from gptcore.tokenizer import get_tokenizer

    r = store.get_run(args.run_id)
    if not r.checkpoint_path:
        raise GptdashError(f"run {r.id} has no checkpoint yet")
    model, cfg, _ = model_from_checkpoint(r.checkpoint_path)
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                              top_k=args.top_k, top_p=args.top_p, seed=args.seed).validate()
    sys.stdout.write(args.prompt)
    for piece in stream_text(model, get_tokenizer(cfg.tokenizer), args.prompt, sampling):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return EXIT_OK


def cmd_serve(args, store: RunStore) -> int:
    from jobs.serve import serve

    return serve(args.address, args.port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gptdash", description="Train small GPTs; every run is "
                                "recorded in the gptdash database ($GPTDASH_HOME).")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="create a run and train it in the foreground")
    t.add_argument("--preset", choices=sorted(PRESETS), help="start from a preset")
    t.add_argument("--config", help="a JSON config file (as the dashboard downloads)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override one setting, e.g. --set lr=3e-4 (repeatable)")
    t.add_argument("--name", help="run name")
    t.add_argument("--tag", action="append", help="tag the run (repeatable)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_train)

    r = sub.add_parser("resume", help="continue a stopped or interrupted run")
    r.add_argument("run_id", type=int)
    r.add_argument("--quiet", action="store_true")
    r.set_defaults(func=cmd_resume)

    ls = sub.add_parser("list", help="list runs, newest first")
    ls.add_argument("--status")
    ls.add_argument("--tag")
    ls.add_argument("--text")
    ls.set_defaults(func=cmd_list)

    s = sub.add_parser("show", help="a run's details and config as JSON")
    s.add_argument("run_id", type=int)
    s.set_defaults(func=cmd_show)

    st = sub.add_parser("stop", help="ask a running run to stop (or cancel a queued one)")
    st.add_argument("run_id", type=int)
    st.set_defaults(func=cmd_stop)

    sm = sub.add_parser("sample", help="generate text from a run's checkpoint")
    sm.add_argument("run_id", type=int)
    sm.add_argument("--prompt", required=True)
    sm.add_argument("--max-new-tokens", type=int, default=200)
    sm.add_argument("--temperature", type=float, default=0.8)
    sm.add_argument("--top-k", type=int, default=0)
    sm.add_argument("--top-p", type=float, default=1.0)
    sm.add_argument("--seed", type=int)
    sm.set_defaults(func=cmd_sample)

    sv = sub.add_parser("serve", help="start the dashboard (127.0.0.1 unless told otherwise)")
    sv.add_argument("--address", default="127.0.0.1",
                    help="address to bind; anything but loopback needs GPTDASH_PASSWORD")
    sv.add_argument("--port", type=int, default=8501)
    sv.set_defaults(func=cmd_serve)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        store = RunStore()
        return args.func(args, store)
    except USER_ERRORS as exc:
        print(f"gptdash: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("gptdash: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
