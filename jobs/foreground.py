"""The CLI commands that train or sample here, in the foreground: they import torch.

Kept apart from ``jobs.cli`` so that ``gptdash list``, ``show``, ``stop`` and
``submit`` never pay for importing torch.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
from argparse import Namespace
from collections.abc import Callable
from pathlib import Path

from gptcore.callbacks import TrainerCallbacks, TrainResult
from gptcore.distributed import ranks_from_env
from gptcore.errors import GptdashError
from gptcore.metric_keys import TRAIN_LOSS
from jobs import runner
from jobs.exit_codes import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, STOP_SIGNALS
from jobs.manager import claim_here
from jobs.progress import Progress
from jobs.threads import ThreadShare
from storage.names import printable
from storage.status import RunStatus
from storage.store import RunStore


def train_new(store: RunStore, run_id: int, quiet: bool, threads: int | None = None) -> int:
    """Claim a just-created run for this process and train it here."""
    # Claim it at once, so a dashboard or worker never picks it up.
    claim = claim_here(store, run_id)
    print(f"run {run_id} created", file=sys.stderr)
    return _train_foreground(store, run_id, claim, quiet, threads)


def train_as_rank(store: RunStore, device: str, create_run: Callable[[], int],
                  quiet: bool) -> int:
    """``torchrun --nproc_per_node N -m jobs train ...`` by hand: rank 0 creates and claims
    the run and tells the other ranks its id; every rank trains it, rank 0 records."""
    import torch.distributed as dist

    from gptcore import distributed
    from gptcore.device import resolve_device

    ranks = distributed.ranks_from_env()
    run_id = claim = None
    if ranks.is_main:
        run_id = create_run()
        claim = claim_here(store, run_id)
        print(f"run {run_id} created ({ranks.world_size} processes)", file=sys.stderr)
    distributed.init(ranks, resolve_device(device))  # the same backend on every rank
    box = [run_id]
    dist.broadcast_object_list(box, src=0)
    run_id = int(box[0])
    if not ranks.is_main:
        result = runner.execute_run(store, run_id)
        return EXIT_FAILED if result.status == RunStatus.FAILED else EXIT_OK
    return _train_foreground(store, run_id, claim, quiet)


def cmd_resume(args: Namespace, store: RunStore) -> int:
    print(runner.queue_resume(store, args.run_id), file=sys.stderr)
    claim = claim_here(store, args.run_id)
    return _train_foreground(store, args.run_id, claim, args.quiet, args.threads)


def _train_foreground(store: RunStore, run_id: int, claim: int, quiet: bool,
                      threads: int | None = None) -> int:
    """Train a claimed run here; Ctrl-C, SIGTERM or SIGHUP stops it within a step, with a
    checkpoint, and a second one aborts at once. Exits 128 + the signal's number then
    (130 for Ctrl-C), as a shell reports a process that a signal ended.

    A run with ``nproc > 1`` (outside torchrun) trains as torchrun children supervised here.
    """
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum, frame):
        received.append(signum)
        if len(received) > 1:
            for sig in previous:  # one abort: a third signal must not cut its recording short
                signal.signal(sig, signal.SIG_IGN)
            raise KeyboardInterrupt(f"aborted by a second {STOP_SIGNALS[signum]}")
        stop.set()

    # A signal ignored when we started (SIGHUP under nohup) stays ignored.
    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS
                if signal.getsignal(sig) is not signal.SIG_IGN}
    nproc = int(store.get_run(run_id).config.get("nproc", 1))
    code = result = None
    try:
        if nproc > 1 and not ranks_from_env().enabled:
            code = _train_children(store, run_id, nproc, claim, stop,
                                   signalled=lambda: bool(received))
        else:
            result = runner.execute_run(store, run_id, claim=claim, stop_event=stop,
                                        extra_callbacks=_listener(store, quiet, threads))
    except KeyboardInterrupt as exc:
        how = str(exc) or "aborted by a second Ctrl-C"
        hint = runner.end_aborted(store, run_id, how, claim)
        # On a line of its own: the terminal has echoed ^C^C (or a progress bar) on this one.
        print(f"\nrun {run_id} {how}; {hint}", file=sys.stderr)
        code = EXIT_INTERRUPTED
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if result is not None:
        code = _summarise(store, run_id, result, interrupted=stop.is_set() and bool(received))
    return 128 + received[0] if code == EXIT_INTERRUPTED and received else code


def _listener(store: RunStore, quiet: bool, threads: int | None) -> TrainerCallbacks | None:
    """Who hears the run besides the database: the progress bar unless ``quiet``, and, unless
    ``--threads`` fixed them, what keeps its torch threads at its share of the machine."""
    display = None if quiet else Progress()
    return display if threads else ThreadShare(store, display)


def _train_children(store: RunStore, run_id: int, nproc: int, claim: int, stop: threading.Event,
                    signalled: Callable[[], bool]) -> int:
    from jobs.torchrun import LOG_NAME, run_under_torchrun

    print(f"training as {nproc} processes under torchrun; their output goes to "
          f"{runner.checkpoint_file(run_id).parent / LOG_NAME}", file=sys.stderr)
    run_under_torchrun(store, run_id, nproc, claim=claim, stop_event=stop)
    run = store.get_run(run_id)
    result = TrainResult(status=run.status, reason=run.error, step=run.last_step,
                         best_val_loss=run.best_val_loss,
                         checkpoint=Path(run.checkpoint_path) if run.checkpoint_path else None,
                         metrics={TRAIN_LOSS: run.last_train_loss or math.nan})
    return _summarise(store, run_id, result, interrupted=signalled())


def _summarise(store: RunStore, run_id: int, result: TrainResult, interrupted: bool) -> int:
    run = store.get_run(run_id)
    if result.status == RunStatus.FAILED:
        print(f"run {run_id} failed: {result.reason}", file=sys.stderr)
        return EXIT_FAILED
    if result.status == RunStatus.STOPPED:
        print(f"run {run_id} stopped at step {result.step}; checkpoint saved. Resume with "
              f"`gptdash resume {run_id}`", file=sys.stderr)
        return EXIT_INTERRUPTED if interrupted else EXIT_OK
    best = f"{result.best_val_loss:.4f}" if result.best_val_loss is not None else "n/a"
    note = f" ({result.reason})" if result.reason else ""
    print(f"run {run_id} '{run.name}' completed at step {result.step}{note}: best val loss {best}, "
          f"last train loss {result.metrics.get('train/loss', math.nan):.4f}; "
          f"checkpoint {result.checkpoint}")
    return EXIT_OK


def cmd_sample(args: Namespace, store: RunStore) -> int:
    from gptcore.checkpoint import model_from_checkpoint
    from gptcore.generate import SamplingConfig, context_note, stream_text
    from gptcore.tokenizer import get_tokenizer

    r = store.get_run(args.run_id)
    path = runner.run_checkpoint(r, args.checkpoint)
    if path is None:
        raise GptdashError(f"run {r.id} has no checkpoint yet")
    model, cfg, _ = model_from_checkpoint(path)
    sampling = SamplingConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                              top_k=args.top_k, top_p=args.top_p, seed=args.seed).validate()
    tokenizer = get_tokenizer(cfg.tokenizer)
    # A prompt the model cannot take is refused before any of it is echoed.
    if (note := context_note(args.prompt, tokenizer, model.cfg.context_length)) is not None:
        print(f"gptdash: note: {note}", file=sys.stderr)
    # Text a model wrote (or a prompt) may hold escape sequences and bidirectional
    # controls: shown escaped, so it cannot recolour the terminal or read backwards.
    sys.stdout.write(printable(args.prompt))
    for piece in stream_text(model, tokenizer, args.prompt, sampling):
        sys.stdout.write(printable(piece))
        sys.stdout.flush()
    sys.stdout.write("\n")
    return EXIT_OK
