"""The training loop, reporting through a small callback protocol.

The trainer knows nothing of databases or pages: it calls ``callbacks`` with
metrics, samples, checkpoints, events and status, and asks
``callbacks.should_stop()`` after every step. So it runs the same from the app's
worker thread, the CLI, or a script.

Losses and gradient norms stay on the device and are fetched once every
``log_interval`` steps, so the step itself never waits for the GPU. The guard
(``gptcore.guard``) judges them there: a spike or NaN rolls the run back to an
in-memory snapshot from before it (``gptcore.snapshot``) and skips the batches
drawn since, instead of ending the run.

Under torchrun (``gptcore.distributed``) every rank runs this same loop on its own
batches, with DistributedDataParallel averaging gradients; rank 0 alone calls the
callbacks, and its stop request reaches the other ranks with the metrics it fetches
every ``log_interval`` steps.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from gptcore import distributed
from gptcore.callbacks import TrainerCallbacks, TrainResult
from gptcore.checkpoint import (
    BEST_CHECKPOINT_NAME,
    CHECKPOINT_NAME,
    load_checkpoint,
    save_checkpoint,
)
from gptcore.config import TrainConfig
from gptcore.data import TokenData, load_data
from gptcore.device import autocast_dtype, device_label, resolve_device
from gptcore.errors import GptdashError
from gptcore.estimate import flops_per_token, peak_flops
from gptcore.generate import SamplingConfig, sample_text
from gptcore.guard import Anomaly, Guard, check_finite
from gptcore.hf import load_hf_weights
from gptcore.metric_keys import (
    EVAL_TIME_MS,
    GRAD_NORM,
    LR,
    MFU,
    STEP_TIME_MS,
    TOKENS_PER_SEC,
    TOKENS_SEEN,
    TRAIN_EVAL_LOSS,
    TRAIN_LOSS,
    VAL_LOSS,
    VAL_PPL,
)
from gptcore.model import GPTModel
from gptcore.optim import build_optimizer
from gptcore.schedule import lr_at
from gptcore.snapshot import SnapshotRing
from gptcore.tokenizer import get_tokenizer
from gptcore.tokens import Progress

log = logging.getLogger(__name__)

# Early stopping's patience restarts only when val loss beats the best by more than this.
MIN_IMPROVEMENT = 1e-4
# The seed of the fixed evaluation batches (fixed_eval): not the run's seed, so runs that
# differ only in seed are measured on one set.
FIXED_EVAL_SEED = 271828


def _global_rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_global_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def _rng_state(data_gen: torch.Generator) -> dict[str, Any]:
    return {**_global_rng_state(), "data": data_gen.get_state()}


def _set_rng_state(state: dict[str, Any], data_gen: torch.Generator) -> None:
    _set_global_rng_state(state)
    data_gen.set_state(state["data"].cpu())


def oom_message(cfg: TrainConfig) -> str:
    return (f"out of memory at batch_size {cfg.batch_size}, context_length "
            f"{cfg.model.context_length}: lower batch_size or context_length (or use "
            "grad_accum_steps to keep the tokens per step)")


STOP_POLL_AFTER_S = 2.0  # a corpus tokenized for longer than this polls for a stop


class _StopPreparing(Exception):
    """A stop asked for while the corpus was being tokenized."""


class Trainer:
    """Builds everything a run needs from a config, then ``run()`` trains it.

    Under torchrun only rank 0's ``callbacks`` are ever called; other ranks may pass None.
    """

    def __init__(self, cfg: TrainConfig, *, checkpoint_dir: Path, cache_dir: Path,
                 callbacks: TrainerCallbacks | None = None, resume: bool = False,
                 init_checkpoint: Path | None = None):
        self.cfg = cfg.validate()
        self.checkpoint_dir = Path(checkpoint_dir)
        self.cache_dir = Path(cache_dir)
        self.ranks = distributed.ranks_from_env()
        # Rank 0 records; the other ranks' callbacks are never called.
        self.cb = (callbacks if self.ranks.is_main else None) or TrainerCallbacks()
        self.resume = resume
        self.init_checkpoint = init_checkpoint
        self.checkpoint_path = self.checkpoint_dir / CHECKPOINT_NAME
        self.best_path = self.checkpoint_dir / BEST_CHECKPOINT_NAME
        self.step = 0
        self.best_val = math.inf  # the lowest val loss so far; best.pt holds its weights
        self.best_step = 0
        self.evals_since_best = 0
        self.last_ckpt_step: int | None = None
        self.last_metrics: dict[str, float] = {}
        self.guard = (Guard(cfg.guard_threshold, cfg.guard_window, cfg.guard_max_rollbacks,
                            cfg.guard_lr_factor) if cfg.guard else None)
        self.ring = SnapshotRing()

    # ---- setup -----------------------------------------------------------------------
    def setup(self) -> None:
        cfg = self.cfg
        distributed.check_nproc(self.ranks, cfg.nproc, cfg.nodes)
        self.device = resolve_device(cfg.device)
        if self.ranks.enabled:
            self.device = distributed.init(self.ranks, self.device)
        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        if self.device.type == "cuda":
            # TF32 matmuls for what autocast leaves in fp32; bf16 does the rest.
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.amp_dtype = autocast_dtype(cfg, self.device)
        self.tokenizer = get_tokenizer(cfg.tokenizer)
        # Tokenized on first use, in bounded memory, with progress; after, memory-mapped.
        self.data: TokenData = load_data(cfg.corpus, cfg.tokenizer, cfg.val_fraction,
                                         self.cache_dir, cfg.text_field, self._preparing)
        self.data.check_context(cfg.model.context_length)
        model_cfg = replace(cfg.model, vocab_size=cfg.vocab_size)
        self.model = GPTModel(model_cfg).to(self.device)
        self.data_gen = torch.Generator().manual_seed(
            distributed.data_seed(cfg.seed, self.ranks.rank))
        if self.init_checkpoint is not None and not self.resume:
            self._load_init_weights(self.init_checkpoint)
        self._freeze()
        self.optimizer = build_optimizer(self.model, cfg, self.device.type)
        if self.ranks.enabled:  # dropout masks of their own, now the weights are made
            torch.manual_seed(distributed.data_seed(cfg.seed, self.ranks.rank))
        if self.resume:
            self._load_resume_state()
        # Evaluation runs the module itself: only training steps need DDP's gradient sync.
        self.eval_model = torch.compile(self.model) if cfg.compile else self.model
        self.train_model = self.eval_model
        if self.ranks.enabled:
            self.train_model = DistributedDataParallel(
                self.eval_model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None)
        # The config counts nodes x nproc processes; torchrun by hand may span more machines.
        self.tokens_per_step = (cfg.tokens_per_step // (cfg.nproc * cfg.nodes)
                                * self.ranks.world_size)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        self.flops_per_token = flops_per_token(cfg)
        self.peak = (peak_flops(torch.cuda.get_device_name(self.device))
                     if self.device.type == "cuda" else None)

    def _preparing(self, progress: Progress) -> None:
        """Tokenizing the corpus for the first time: say how far it is, and stop it when
        asked (a large corpus takes minutes; a stop must not wait for it)."""
        self.cb.on_prepare(progress)
        long = time.time() - progress.started >= STOP_POLL_AFTER_S  # a small one just ends
        if long and not self.ranks.enabled and self.cb.should_stop():
            raise _StopPreparing

    def _load_init_weights(self, path: Path) -> None:
        if path.is_dir():  # init_from=hf:DIR, a Hugging Face GPT-2 folder
            load_hf_weights(self.model, path)
            return
        payload = load_checkpoint(path)
        try:
            self.model.load_state_dict(payload["model"])
        except RuntimeError as exc:
            raise GptdashError(
                f"cannot fine-tune from {Path(path).name}: its model shape differs from this "
                "config's (keep vocab, context_length, emb_dim, n_heads, n_layers equal): "
                f"{str(exc).splitlines()[0]}") from None

    def _freeze(self) -> None:
        if self.cfg.freeze_embeddings:
            # With tie_weights the output head is this same matrix and stays fixed too.
            self.model.tok_emb.weight.requires_grad_(False)
            self.model.pos_emb.weight.requires_grad_(False)
        for block in self.model.blocks[: self.cfg.freeze_blocks]:
            block.requires_grad_(False)

    def _load_resume_state(self) -> None:
        payload = load_checkpoint(self.checkpoint_path)
        self.model.load_state_dict(payload["model"])
        if payload.get("optimizer"):
            self.optimizer.load_state_dict(payload["optimizer"])
        self.step = int(payload["step"])
        rng = payload["rng"]
        if self.ranks.enabled:
            per_rank = rng.get("ranks", [rng])
            if len(per_rank) != self.ranks.world_size:
                raise GptdashError(f"the checkpoint was written by a run of nproc "
                                   f"{len(per_rank)}, this one has {self.ranks.world_size} "
                                   f"processes: resume with nproc {len(per_rank)}")
            rng = per_rank[self.ranks.rank]
        _set_rng_state(rng, self.data_gen)
        extra = payload.get("extra", {})
        self.best_val = extra.get("best_val", math.inf)
        self.best_step = extra.get("best_step", 0)
        self.evals_since_best = extra.get("evals_since_best", 0)
        if self.guard is not None and "guard" in extra:
            self.guard.load_state_dict(extra["guard"])

    # ---- pieces of a step ----------------------------------------------------------------
    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device)

    def _batch(self, split: str, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.data.batch(split, self.cfg.batch_size, self.cfg.model.context_length, gen)
        return self._to_device(x), self._to_device(y)

    def _eval_seed(self) -> int:
        """The seed of this evaluation's batches: with ``fixed_eval`` the same at every
        evaluation, so the val curve moves only when the model does; else a draw per step."""
        base = (FIXED_EVAL_SEED if self.cfg.fixed_eval
                else self.cfg.seed + 7919 * (self.step + 1))
        return distributed.data_seed(base, self.ranks.rank)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Mean loss on ``eval_iters`` batches of each split (per rank, averaged over ranks),
        drawn by a generator of their own, so evaluations never disturb the training
        batches (resume stays exact)."""
        self.eval_model.eval()
        splits = ("train", "val")
        totals = torch.zeros(len(splits), device=self.device)
        for i, split in enumerate(splits):
            gen = torch.Generator().manual_seed(self._eval_seed())
            for _ in range(self.cfg.eval_iters):
                x, y = self._batch(split, gen)
                with self._autocast():
                    totals[i] += self.eval_model(x, y).float()
        means = distributed.mean(totals / self.cfg.eval_iters, self.ranks).tolist()
        self.eval_model.train()
        return dict(zip(splits, means, strict=True))

    def _sample(self) -> None:
        cfg = self.cfg
        if not cfg.sample_tokens or not cfg.sample_prompt or not self.ranks.is_main:
            return
        sampling = SamplingConfig(max_new_tokens=cfg.sample_tokens, temperature=0.8, top_k=40,
                                  seed=cfg.seed + self.step)
        with self._autocast():
            try:
                text = sample_text(self.model, self.tokenizer, cfg.sample_prompt, sampling)
            except GptdashError as exc:  # e.g. a prompt longer than the context
                text = f"(no sample: {exc})"
        self.cb.on_sample(self.step, cfg.sample_prompt, text)

    def save(self) -> Path:
        # Every reported step is stored before the checkpoint: a resume starts at the
        # checkpoint, so metrics still buffered past it would be lost for good.
        self.cb.flush()
        extra = {"best_val": self.best_val, "best_step": self.best_step,
                 "evals_since_best": self.evals_since_best}
        if self.guard is not None:
            extra["guard"] = self.guard.state_dict()
        rng = _rng_state(self.data_gen)
        if self.ranks.enabled:  # every rank's batch stream, so each resumes where it was
            rng = {**rng, "ranks": distributed.gather(rng, self.ranks)}
        self.last_ckpt_step = self.step
        if not self.ranks.is_main:
            return self.checkpoint_path
        path = save_checkpoint(self.checkpoint_path, model=self.model, optimizer=self.optimizer,
                               step=self.step, config=self.cfg, rng=rng, extra=extra,
                               before_commit=self.cb.before_checkpoint)
        self.cb.on_checkpoint(self.step, path)
        return path

    def _save_best(self) -> None:
        """best.pt: the weights of the best evaluation, written atomically like latest.pt."""
        if not self.ranks.is_main:
            return
        save_checkpoint(self.best_path, model=self.model, optimizer=None, step=self.step,
                        config=self.cfg, rng={}, extra={"val_loss": self.best_val},
                        before_commit=self.cb.before_checkpoint)
        self.cb.on_event(self.step, "best_checkpoint",
                         f"val loss {self.best_val:.4f} at step {self.step} is the best so far; "
                         f"saved {BEST_CHECKPOINT_NAME}")

    def _eval_and_report(self) -> str | None:
        """Evaluate, sample and flush; returns an early-stopping reason when it is time."""
        start = time.perf_counter()
        losses = self.evaluate()
        self._sample()
        val = losses["val"]
        # What an evaluation with its sample costs: the pages' ETA and estimates add it.
        metrics = {VAL_LOSS: val, TRAIN_EVAL_LOSS: losses["train"],
                   VAL_PPL: math.exp(min(val, 50.0)),
                   EVAL_TIME_MS: 1000 * (time.perf_counter() - start)}
        self.cb.on_metrics(self.step, metrics)
        self.last_metrics.update(metrics)
        self.cb.flush()
        if not math.isfinite(val):
            return None  # the NaN path reports it
        if val < self.best_val:
            improved = val < self.best_val - MIN_IMPROVEMENT
            self.best_val, self.best_step = val, self.step
            self.evals_since_best = 0 if improved else self.evals_since_best + 1
            self._save_best()
        else:
            self.evals_since_best += 1
        patience = self.cfg.early_stopping_patience
        if patience and self.evals_since_best >= patience:
            return (f"early stopping at step {self.step}: val loss has not improved for "
                    f"{patience} evaluations (best {self.best_val:.4f} at step {self.best_step})")
        return None

    # ---- the loop --------------------------------------------------------------------------
    def run(self) -> TrainResult:
        """Train to max_steps, a stop request, early stopping, a NaN, or an error."""
        try:
            return self._run()
        finally:
            distributed.shutdown(self.ranks)

    def _run(self) -> TrainResult:
        try:
            self.setup()
        except GptdashError as exc:
            return self._finish("failed", str(exc))
        except _StopPreparing:
            return self._finish("stopped", "stopped while its corpus was being tokenized, "
                                "before its first step")
        label = device_label(self.device)
        if self.ranks.enabled:
            label = f"{label} x{self.ranks.world_size}"
        self.cb.on_start({"device": label, "n_params": self.model.num_params(),
                          "start_step": self.step, "max_steps": self.cfg.max_steps,
                          "world_size": self.ranks.world_size})
        self.cb.on_status("running")
        try:
            return self._loop()
        except torch.cuda.OutOfMemoryError:
            return self._finish("failed", oom_message(self.cfg))
        except GptdashError as exc:
            return self._finish("failed", f"{exc} (at step {self.step})")
        except Exception as exc:  # noqa: BLE001 - any crash must end as a readable failed run
            if getattr(exc, "abandons_run", False):
                raise  # a callback says the run is no longer this trainer's: nothing to record
            log.exception("training crashed")
            if "out of memory" in str(exc).lower():
                return self._finish("failed", oom_message(self.cfg))
            return self._finish("failed", f"{type(exc).__name__} at step {self.step}: {exc}")

    def _loop(self) -> TrainResult:
        cfg = self.cfg
        pending: list[tuple[int, float, torch.Tensor, torch.Tensor]] = []
        self._start_interval()
        self.train_model.train()
        self._snapshot()
        restored_at: int | None = None  # a roll-back target, evaluated before it was left
        while True:
            at_eval = self.step % cfg.eval_interval == 0 or self.step == cfg.max_steps
            if at_eval and self.step != restored_at:
                early = self._eval_and_report()
                if early:
                    self.save()
                    self.cb.on_event(self.step, "early_stop", early)
                    return self._finish("completed", early)
                self._start_interval()
            restored_at = None
            if self.step >= cfg.max_steps:
                self.save()
                return self._finish("completed", None)

            self._train_step(pending)
            # Several processes hear rank 0's stop request with the next report instead.
            stop = not self.ranks.enabled and self.cb.should_stop()
            at_checkpoint = self.step % cfg.checkpoint_interval == 0
            # Every step is checked (and stored) before an evaluation, a checkpoint or the end.
            if (len(pending) >= cfg.log_interval or stop or at_checkpoint
                    or self.step % cfg.eval_interval == 0 or self.step >= cfg.max_steps):
                anomaly, stop_everywhere = self._report(pending)
                stop = stop or stop_everywhere
                pending.clear()
                if anomaly is not None:
                    ended = self._recover(anomaly)
                    if ended is not None:
                        return ended
                    restored_at = self.step
                    self._start_interval()
                    continue
            if stop:
                self.save()
                return self._finish("stopped", f"stopped on request at step {self.step}")
            if at_checkpoint and self.step < cfg.max_steps:
                self.save()
                self._start_interval()  # throughput is training's, as with evaluations

    def _train_step(self, pending: list) -> None:
        """One optimizer step; its loss and grad norm join ``pending``, still on the device."""
        cfg = self.cfg
        lr = lr_at(self.step, cfg) * (self.guard.lr_scale if self.guard else 1.0)
        for group in self.optimizer.param_groups:
            # A group may run at a multiple of the schedule's lr (Muon's matrices, say).
            group["lr"] = lr * group.get("lr_scale", 1.0)
        loss_sum = torch.zeros((), device=self.device)
        for micro in range(cfg.grad_accum_steps):
            # Ranks average gradients once per step, on the last micro-batch, not on each.
            sync = micro == cfg.grad_accum_steps - 1 or not self.ranks.enabled
            with contextlib.nullcontext() if sync else self.train_model.no_sync():
                x, y = self._batch("train", self.data_gen)
                with self._autocast():
                    loss = self.train_model(x, y, label_smoothing=cfg.label_smoothing)
                (loss / cfg.grad_accum_steps).backward()
            loss_sum += loss.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        pending.append((self.step, lr, loss_sum / cfg.grad_accum_steps, grad_norm))
        self.step += 1
        self._interval_steps += 1

    def _start_interval(self) -> None:
        self._interval_start, self._interval_steps = time.perf_counter(), 0

    def _report(self, pending) -> tuple[Anomaly | None, bool]:
        """Fetch the pending losses in one transfer, check them, and send metrics up to the
        first anomaly; when all are normal, maybe take a roll-back snapshot.

        Each step's loss, lr and grad norm go at its index (the steps done before it); the
        throughput summary goes at the count of steps done, so the highest step reported is
        always the number of optimizer steps done (see ``TrainerCallbacks.on_metrics``).

        Returns the anomaly (or None) and, with several processes, whether rank 0 was asked
        to stop: losses are averaged over ranks and the stop flag rides along in the same
        all-reduce, so every rank sees the same values and takes the same decisions.
        """
        stats = torch.stack([torch.stack([loss.float(), gn.float()])
                             for _, _, loss, gn in pending])
        ask = self.ranks.enabled and self.ranks.is_main and self.cb.should_stop()
        stats, stop = distributed.mean_and_flag(stats, ask, self.ranks)
        values = stats.tolist()
        elapsed = max(time.perf_counter() - self._interval_start, 1e-9)
        tokens_per_sec = self._interval_steps * self.tokens_per_step / elapsed
        for (step, lr, _, _), (loss, gn) in zip(pending, values, strict=False):
            anomaly = (self.guard.check(step, loss, gn) if self.guard
                       else check_finite(step, loss=loss))
            if anomaly is not None:
                return anomaly, stop
            self.cb.on_metrics(step, {TRAIN_LOSS: loss, LR: lr, GRAD_NORM: gn})
        done = self.step  # optimizer steps done: the last pending index + 1
        summary = {
            TOKENS_PER_SEC: tokens_per_sec,
            STEP_TIME_MS: 1000 * elapsed / max(self._interval_steps, 1),
            TOKENS_SEEN: float(done * self.tokens_per_step),
        }
        if self.peak:  # the peak is one GPU's
            summary[MFU] = (self.flops_per_token * tokens_per_sec
                            / (self.peak * self.ranks.world_size))
        self.cb.on_metrics(done, summary)
        self.last_metrics.update(summary, **{TRAIN_LOSS: values[-1][0]})
        self._start_interval()
        if self.guard and self.step - max(self.ring.steps, default=0) >= self.cfg.guard_interval:
            self._snapshot()
        return None, stop

    # ---- the guard -------------------------------------------------------------------------
    def _snapshot(self) -> None:
        """A roll-back point at the current step, whose every earlier step has been checked."""
        if self.guard is not None:
            self.ring.take(self.step, self.model, self.optimizer,
                           {"rng": _global_rng_state(),
                            "detector": self.guard.detector.state_dict()})

    def _recover(self, anomaly: Anomaly) -> TrainResult | None:
        """Roll back past ``anomaly`` and return None, or end the run (its result)."""
        if self.guard is None:
            return self._nan_stop(self._nan_message(anomaly))
        cfg = self.cfg
        self.cb.on_event(anomaly.step, anomaly.kind, anomaly.message)
        target = self.ring.last_before(anomaly.step)
        response = self.guard.respond(anomaly) if target is not None else None
        if response is None or response.give_up:
            return self._finish("failed", self._give_up_message(anomaly, target is None))
        if response.lr_reduced:
            self.cb.on_event(target.step, "lr_reduced",
                             f"another {anomaly.kind} at step {anomaly.step}: the learning rate "
                             f"is scaled by {self.guard.lr_scale:g} from here on "
                             f"(guard_lr_factor {cfg.guard_lr_factor:g})")
        # The data generator is left where it is: the batches drawn since the snapshot,
        # the bad one among them, are skipped rather than replayed.
        skipped = (self.step - target.step) * cfg.grad_accum_steps
        self.ring.restore(target, self.model, self.optimizer)
        _set_global_rng_state(target.extra["rng"])
        self.guard.detector.load_state_dict(target.extra["detector"])
        self.step = target.step
        self.cb.on_event(self.step, "rollback",
                         f"{anomaly.message}; rolled back to step {self.step} and skipped "
                         f"{skipped} batches (roll-back {self.guard.rollbacks} of "
                         f"{cfg.guard_max_rollbacks})")
        return None

    def _give_up_message(self, anomaly: Anomaly, nothing_earlier: bool) -> str:
        cfg = self.cfg
        if nothing_earlier:
            return (f"{anomaly.message}, with no earlier state to roll back to: lower lr or "
                    "raise warmup_steps")
        scaled = (f", already scaled by {self.guard.lr_scale:g} by the guard"
                  if self.guard.lr_scale < 1 else "")
        clip = ", set grad_clip (e.g. 1.0)" if cfg.grad_clip == 0 else ""
        return (f"{anomaly.message} after {self.guard.rollbacks} roll-backs "
                f"(guard_max_rollbacks {cfg.guard_max_rollbacks}): lower lr (it is {cfg.lr:g}"
                f"{scaled}){clip}, raise warmup_steps, or allow more roll-backs")

    def _nan_message(self, anomaly: Anomaly) -> str:
        if self.last_ckpt_step is not None:
            return f"{anomaly.message}; last good checkpoint at step {self.last_ckpt_step}"
        return (f"{anomaly.message}; no checkpoint was saved before it: lower lr or raise "
                "warmup_steps")

    def _nan_stop(self, reason: str) -> TrainResult:
        # Weights are already broken: keep the last good checkpoint rather than saving these.
        if self.cfg.early_stopping_patience:
            return self._finish("stopped", reason)
        return self._finish("failed", reason)

    def _finish(self, status: str, reason: str | None) -> TrainResult:
        try:
            self.cb.flush()
        finally:
            self.cb.on_status(status, reason)
        best = self.best_val if math.isfinite(self.best_val) else None
        ckpt = self.checkpoint_path if self.last_ckpt_step is not None else None
        if ckpt is None and self.checkpoint_path.exists():
            ckpt = self.checkpoint_path
        return TrainResult(status=status, reason=reason, step=self.step, best_val_loss=best,
                           checkpoint=ckpt, metrics=dict(self.last_metrics),
                           best_checkpoint=self.best_path if self.best_path.exists() else None,
                           rollbacks=self.guard.rollbacks if self.guard else 0)


def train(cfg: TrainConfig, *, checkpoint_dir: Path, cache_dir: Path,
          callbacks: TrainerCallbacks | None = None, resume: bool = False,
          init_checkpoint: Path | None = None) -> TrainResult:
    """Build a Trainer and run it."""
    return Trainer(cfg, checkpoint_dir=checkpoint_dir, cache_dir=cache_dir, callbacks=callbacks,
                   resume=resume, init_checkpoint=init_checkpoint).run()
