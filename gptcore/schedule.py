"""Learning-rate schedules as pure functions of the step."""

from __future__ import annotations

import math

import numpy as np

from gptcore.config import TrainConfig


def lr_at(step: int, cfg: TrainConfig) -> float:
    """The learning rate for optimizer step ``step`` (0-based) under ``cfg``.

    Linear warmup from lr/warmup to lr over ``warmup_steps``, then the chosen shape:
    constant; step decay (times ``gamma`` every ``step_size`` steps after warmup);
    cosine or linear decay from ``lr`` to ``min_lr`` at ``max_steps``; wsd
    (warmup-stable-decay) holds ``lr`` until the last ``decay_fraction`` of the run,
    then decays linearly to ``min_lr`` at ``max_steps``.
    """
    lr, warmup = cfg.lr, cfg.warmup_steps
    if step < warmup:
        return lr * (step + 1) / warmup
    if cfg.schedule == "constant":
        return lr
    if cfg.schedule == "step":
        return lr * cfg.gamma ** ((step - warmup) // cfg.step_size)
    if cfg.schedule == "wsd":
        start = wsd_decay_start(cfg)
        progress = min(1.0, max(0.0, (step - start) / max(1, cfg.max_steps - start)))
        return cfg.min_lr + (1.0 - progress) * (lr - cfg.min_lr)
    decay_steps = max(1, cfg.max_steps - warmup)
    progress = min(1.0, (step - warmup) / decay_steps)
    if cfg.schedule == "cosine":
        coeff = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif cfg.schedule == "linear":
        coeff = 1.0 - progress
    else:
        raise ValueError(f"unknown schedule {cfg.schedule!r}")
    return cfg.min_lr + coeff * (lr - cfg.min_lr)


def wsd_decay_start(cfg: TrainConfig) -> int:
    """The step at which a wsd schedule leaves its stable lr: ``decay_fraction`` of
    ``max_steps`` before the end (at least one step), never inside the warmup."""
    decay_steps = max(1, round(cfg.decay_fraction * cfg.max_steps))
    return max(cfg.warmup_steps, cfg.max_steps - decay_steps)


def lr_array(cfg: TrainConfig) -> np.ndarray:
    """``lr_at`` for every step 0..max_steps-1 at once, as float64.

    The same formulas on whole arrays: a forecast needs the lr of every step, and a
    Python loop over a 10-million-step schedule takes seconds where this takes
    milliseconds. ``lr_at`` stays the reference; a test holds the two equal.
    """
    step = np.arange(cfg.max_steps, dtype=np.float64)
    lr, warmup = cfg.lr, cfg.warmup_steps
    if cfg.schedule == "constant":
        out = np.full_like(step, lr)
    elif cfg.schedule == "step":
        out = lr * cfg.gamma ** np.floor_divide(step - warmup, cfg.step_size)
    elif cfg.schedule == "wsd":
        start = wsd_decay_start(cfg)
        progress = np.clip((step - start) / max(1, cfg.max_steps - start), 0.0, 1.0)
        out = cfg.min_lr + (1.0 - progress) * (lr - cfg.min_lr)
    elif cfg.schedule in ("cosine", "linear"):
        decay_steps = max(1, cfg.max_steps - warmup)
        progress = np.minimum(1.0, (step - warmup) / decay_steps)
        coeff = (0.5 * (1.0 + np.cos(np.pi * progress)) if cfg.schedule == "cosine"
                 else 1.0 - progress)
        out = cfg.min_lr + coeff * (lr - cfg.min_lr)
    else:
        raise ValueError(f"unknown schedule {cfg.schedule!r}")
    if warmup > 0:
        head = min(warmup, cfg.max_steps)
        out[:head] = lr * (step[:head] + 1) / warmup
    return out


def lr_curve(cfg: TrainConfig, points: int = 500) -> tuple[list[int], list[float]]:
    """Steps and learning rates across the whole run, at most ``points`` of them."""
    stride = max(1, cfg.max_steps // points)
    steps = list(range(0, cfg.max_steps, stride))
    if steps[-1] != cfg.max_steps - 1:
        steps.append(cfg.max_steps - 1)
    return steps, [lr_at(s, cfg) for s in steps]
