"""A run's life from config to finished row: create, train (or resume), record.

Creating, queueing and resuming need no torch, so `gptdash submit` answers at once;
torch is imported only by ``execute_run`` and the device-memory check.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from gptcore.config import CORPUS_FINGERPRINT, CORPUS_SHA256, TrainConfig
from gptcore.corpus import BUILTIN, builtin_text, find_source, fingerprint
from gptcore.data import check_corpus, file_sha256
from gptcore.errors import GptdashError
from gptcore.estimate import fit_problem, param_count
from gptcore.hf import shape_problem
from gptcore.machine import machine_fit_problem
from jobs.errors import USER_ERRORS
from jobs.recovery import check_owner_gone
from storage import home
from storage.errors import ClaimLost, RunMissing
from storage.status import RESUMABLE, Executor, RunStatus
from storage.store import RunRecord, RunStore, remove_run_folder

if TYPE_CHECKING:
    from gptcore.callbacks import TrainerCallbacks, TrainResult

log = logging.getLogger(__name__)



def default_name(cfg: TrainConfig) -> str:
    m = cfg.model
    return f"{m.n_layers}L-{m.emb_dim}d {cfg.optimizer} lr={cfg.lr:g}"


def run_checkpoint(run: RunRecord, which: str = "best") -> Path | None:
    """A run's ``best`` (the default; its latest when it has no best) or ``latest``
    checkpoint file, or None when it has none."""
    from gptcore.checkpoint import checkpoint_in

    if not run.checkpoint_path:
        return None
    # This machine's view of the artifacts folder, not the path the writer recorded:
    # a shared filesystem may be mounted elsewhere here.
    path = checkpoint_in(home.checkpoints_dir(run.id, create=False), which)
    return path if path.is_file() else None


def resolve_init_from(store: RunStore, init_from: str) -> tuple[Path | None, int | None]:
    """``init_from`` as (checkpoint path, parent run id).

    ``7`` is run 7's best checkpoint, ``7:latest`` its last one, ``7:best`` the same as
    ``7``; ``hf:DIR`` a Hugging Face GPT-2 folder (checked in full: a bad one is refused
    here, before any run row exists); anything else is a checkpoint file.
    """
    from gptcore.hf import check_hf_folder, hf_folder

    value = init_from.strip()
    if not value:
        return None, None
    folder = hf_folder(value)
    if folder is not None:
        check_hf_folder(folder)
        return folder, None
    run_part, _, which = value.partition(":")
    if run_part.isdigit() and which in ("", "best", "latest"):
        parent = store.get_run(int(run_part))
        path = run_checkpoint(parent, which or "best")
        if path is None:
            raise GptdashError(f"run {parent.id} ({parent.name}) has no checkpoint to fine-tune "
                               "from: pick a run that has finished or been stopped")
        return path, parent.id
    from gptcore.checkpoint import check_checkpoint_file  # no torch: `submit` answers at once

    path = Path(value).expanduser()
    if not path.is_file():
        raise GptdashError(f"init_from {value!r} is neither a run id (7, 7:best, 7:latest) nor "
                           "a checkpoint file")
    check_checkpoint_file(path)
    return path, None


def check_fits_device(cfg: TrainConfig) -> None:
    """Refuse a config whose memory estimate exceeds this machine's device (imports torch)."""
    from gptcore.device import available_memory_mb, resolve_device

    problem = fit_problem(cfg, available_memory_mb(resolve_device(cfg.device)))
    if problem:
        raise GptdashError(problem)


def check_run(store: RunStore, cfg: TrainConfig, *, check_device: bool = True,
              executor: str = Executor.LOCAL) -> tuple[int | None, str]:
    """Everything ``create_run`` refuses, without writing: raises GptdashError for bad input,
    else returns the parent run id that ``init_from`` names (None when it names none) and
    the corpus's fingerprint."""
    cfg.validate()
    if cfg.nodes > 1 and executor == Executor.LOCAL:
        raise GptdashError(f"nodes={cfg.nodes} spreads the run over {cfg.nodes} machines of "
                           "a Ray cluster: queue it with --on ray (GPTDASH_RAY_ADDRESS set), "
                           "or set nodes to 1")
    if check_device:
        check_fits_device(cfg)
    elif problem := machine_fit_problem(cfg):  # torch-free: no device here could hold it
        raise GptdashError(problem)
    _, parent_id = resolve_init_from(store, cfg.init_from)
    if problem := shape_problem(cfg):  # a config that did not take the folder's shape
        raise GptdashError(problem)
    # A bad or too-short corpus is refused up front; a large one is tokenized by its trainer.
    corpus_print = check_corpus(cfg.corpus, cfg.tokenizer, cfg.val_fraction, home.cache_dir(),
                                cfg.model.context_length, cfg.text_field,
                                trains_here=check_device)
    return parent_id, corpus_print


def create_run(store: RunStore, cfg: TrainConfig, *, name: str | None = None,
               tags: list[str] | None = None, notes: str = "", check_device: bool = True,
               sweep_id: int | None = None, executor: str = Executor.LOCAL) -> int:
    """Validate ``cfg`` and record a queued run; bad input raises before anything is written.
    ``executor`` ``ray``: only its own Ray job takes it (``jobs.ray_executor``).

    ``check_device=False`` checks memory without torch, against the largest device this
    machine has, for a run queued for whichever worker claims it (that worker checks its own
    device's free memory).
    """
    parent_id, corpus_print = check_run(store, cfg, check_device=check_device,
                                        executor=executor)
    # Which text it is beside the settings: a resume on other text is refused.
    config = {**cfg.to_dict(), CORPUS_FINGERPRINT: corpus_print}
    return store.create_run(
        (name or "").strip() or default_name(cfg), config, tags=list(tags or []),
        notes=notes, parent_id=parent_id, status=RunStatus.QUEUED, max_steps=cfg.max_steps,
        n_params=param_count(cfg), sweep_id=sweep_id, executor=executor,
        max_auto_resumes=None if cfg.max_auto_resumes < 0 else cfg.max_auto_resumes)


def checkpoint_file(run_id: int) -> Path:
    from gptcore.checkpoint import CHECKPOINT_NAME  # no torch: `resume --queue` answers at once

    return home.checkpoints_dir(run_id, create=False) / CHECKPOINT_NAME


def has_checkpoint(run: RunRecord) -> bool:
    """Whether the run recorded a checkpoint to resume from that is still there: never a
    stray file in its folder."""
    return run.checkpoint_path is not None and checkpoint_file(run.id).is_file()


def check_corpus_unchanged(run: RunRecord) -> None:
    """Refuse to train a run on a corpus whose content is not the one it recorded (a file
    edited or replaced since): it would go on with other text, and its loss jump for no
    reason it could name. A run recorded before runs kept either passes."""
    corpus = str(run.config.get("corpus", BUILTIN))
    if recorded := run.config.get(CORPUS_FINGERPRINT):
        now = fingerprint(find_source(corpus))
    elif recorded := run.config.get(CORPUS_SHA256):  # recorded as the whole text's sha256
        now = _legacy_sha256(corpus)
    else:
        return
    if now != recorded:
        raise GptdashError(
            f"run {run.id}'s corpus {corpus!r} has changed since the run recorded it (was "
            f"{recorded[:12]}…, now {now[:12]}…), so it would train on different text: start "
            "a new run on it, or restore the file")


def _legacy_sha256(corpus: str) -> str:
    import hashlib

    if corpus == BUILTIN:
        return hashlib.sha256(builtin_text().encode("utf-8")).hexdigest()
    path = Path(corpus)
    if not path.is_file():
        raise GptdashError(f"corpus file {corpus!r} does not exist")
    return file_sha256(path)


def can_resume(store: RunStore, run_id: int) -> bool:
    """Whether the run may be queued again: from its checkpoint, or from step 0 without one."""
    return store.get_run(run_id).status in RESUMABLE


def queue_resume(store: RunStore, run_id: int, *, executor: str = Executor.LOCAL,
                 job: str | None = None) -> str:
    """Put a stopped / interrupted / failed / cancelled run back in the queue, to continue
    from its last checkpoint, or with the same config from step 0 when it died before its
    first one. Returns how it will start, in one line for the user.

    ``executor`` says who takes it (plain workers, or with ``ray`` only the Ray job ``job``).
    """
    run = store.get_run(run_id)
    if run.status not in RESUMABLE:
        raise GptdashError(f"run {run_id} is {run.status}; only stopped, interrupted or failed "
                           "runs can be resumed")
    check_owner_gone(run)  # one owner at a time: never a second trainer beside a live one
    check_corpus_unchanged(run)
    # One write: queued (which clears the stop flag), with who is to take it. A person's
    # resume gives the run its automatic resumes afresh: their limit stops a crash loop,
    # not a run someone chose to go on with.
    named = {"worker": job} if job is not None else {}
    store.update_run(run_id, status=RunStatus.QUEUED, executor=executor, auto_resumes=0,
                     **named)
    if has_checkpoint(run):
        return f"run {run_id} resumes from its last checkpoint"
    return f"run {run_id} has no checkpoint yet: restarting from step 0"


def end_aborted(store: RunStore, run_id: int, how: str, claim: int) -> str:
    """End a run whose trainer was aborted (a second Ctrl-C): ``stopped`` when it has a
    checkpoint to resume from, else ``interrupted`` (a resume restarts it from step 0).
    A run that had already ended, or that ``claim`` no longer owns, keeps its status.
    Returns the resume hint."""
    run = store.get_run(run_id)
    hint = f"resume it with `gptdash resume {run_id}`"
    if not has_checkpoint(run):
        hint += " (no checkpoint yet: it restarts from step 0)"
    if run.status == RunStatus.RUNNING:
        status = RunStatus.STOPPED if has_checkpoint(run) else RunStatus.INTERRUPTED
        _unless_deleted(lambda: store.set_status(
            run_id, status, error=f"{how} at step {run.last_step}; {hint}", claim=claim))
    return hint


def _plan(store: RunStore, run_id: int, device: str | None
          ) -> tuple[TrainConfig, bool, Path | None]:
    """The config to train (with a worker's device for ``auto``), whether it resumes, and
    the weights to start from. Every rank of a torchrun launch computes the same."""
    run = store.get_run(run_id)
    check_corpus_unchanged(run)  # also a file changed while the run waited in the queue
    cfg = TrainConfig.from_dict(run.config).validate()
    if device and cfg.device == "auto":
        cfg = replace(cfg, device=device).validate()
    resume = has_checkpoint(run)  # else from step 0 (or init_from), also after a crash
    init_path = None if resume else resolve_init_from(store, cfg.init_from)[0]
    return cfg, resume, init_path


def execute_run(store: RunStore, run_id: int, *, claim: int | None = None,
                stop_event: threading.Event | None = None,
                extra_callbacks: TrainerCallbacks | None = None,
                device: str | None = None) -> TrainResult:
    """Train a run whose row is already claimed (status running) to its end.

    ``claim`` is the token the claim returned (its claimer's, under torchrun or Ray
    Train); every write is made with it, and once another claim takes the run (or its
    owner is declared gone) this raises ClaimLost at the next write or stop-flag poll,
    having written nothing more, not even a failure. Left out, the run's current token
    is taken: for a caller that claimed the run just before, in this process.

    A run whose folder holds a checkpoint continues from it (resume); otherwise it
    starts fresh, from ``init_from``'s weights when that is set. Every way out ends
    with the row in a final status, and with a reason when it did not complete.
    ``device`` (a worker's ``--device``) replaces the config's ``auto``.

    Under torchrun every rank calls this; rank 0 records, the others only train.
    """
    from gptcore.callbacks import TrainResult
    from gptcore.distributed import ranks_from_env
    from gptcore.trainer import train
    from jobs.bridge import Chain, StoreCallbacks

    if not ranks_from_env().is_main:
        cfg, resume, init_path = _plan(store, run_id, device)
        return train(cfg, checkpoint_dir=home.checkpoints_dir(run_id),
                     cache_dir=home.cache_dir(), resume=resume, init_checkpoint=init_path)
    run = store.get_run(run_id)
    claim = run.claim_token if claim is None else claim
    recorder = StoreCallbacks(store, run_id, claim, stop_event)
    callbacks = recorder if extra_callbacks is None else Chain(recorder, extra_callbacks)
    try:
        cfg, resume, init_path = _plan(store, run_id, device)
        check_fits_device(cfg)  # this worker's device, which may not be the submitter's
        result = train(cfg, checkpoint_dir=home.checkpoints_dir(run_id),
                       cache_dir=home.cache_dir(), callbacks=callbacks, resume=resume,
                       init_checkpoint=init_path)
    except ClaimLost as exc:  # the run is another process's now: it is theirs to record
        log.warning("run %s: %s", run_id, exc)
        raise
    except USER_ERRORS as exc:
        reason = str(exc)
        # Through the recorder, so a database that is away gets it when it is back.
        _unless_deleted(lambda: recorder.on_status(RunStatus.FAILED, reason))
        result = TrainResult(status=RunStatus.FAILED, reason=reason, step=run.last_step)
    except KeyboardInterrupt as exc:  # a second Ctrl-C: the user's abort, not a crash
        how = str(exc) or "aborted by a second Ctrl-C"
        _unless_deleted(lambda: end_aborted(store, run_id, how, claim))
        raise
    except BaseException as exc:  # anything else must leave a consistent row too
        log.exception("run %s crashed outside the training loop", run_id)
        crash = f"{type(exc).__name__}: {exc}"
        _unless_deleted(lambda: recorder.on_status(RunStatus.FAILED, crash))
        raise
    finally:
        _unless_deleted(callbacks.close)
        _forget_if_deleted(store, run_id)
    return result


def _unless_deleted(write) -> None:
    """Do a write that fails only when the run was deleted or taken over meanwhile (nothing
    of this process's to record)."""
    try:
        write()
    except (RunMissing, ClaimLost) as exc:
        log.info("run gone while finishing: %s", exc)


def _forget_if_deleted(store: RunStore, run_id: int) -> None:
    """A run deleted while it trained: its trainer's last checkpoint must not bring the
    folder back."""
    try:
        store.get_run(run_id)
    except RunMissing:  # not any StorageError: a database that is down deletes nothing
        remove_run_folder(run_id)
