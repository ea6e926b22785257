"""Learning-rate schedules as pure functions of the step."""

from __future__ import annotations

import math

from gptcore.config import TrainConfig


def lr_at(step: int, cfg: TrainConfig) -> float:
    """The learning rate for optimizer step ``step`` (0-based) under ``cfg``.

    Linear warmup from lr/warmup to lr over ``warmup_steps``, then the chosen shape:
    constant; step decay (times ``gamma`` every ``step_size`` steps after warmup);
    cosine or linear decay from ``lr`` to ``min_lr`` at ``max_steps``.
    """
    lr, warmup = cfg.lr, cfg.warmup_steps
    if step < warmup:
        return lr * (step + 1) / warmup
    if cfg.schedule == "constant":
        return lr
    if cfg.schedule == "step":
        return lr * cfg.gamma ** ((step - warmup) // cfg.step_size)
    decay_steps = max(1, cfg.max_steps - warmup)
    progress = min(1.0, (step - warmup) / decay_steps)
    if cfg.schedule == "cosine":
        coeff = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif cfg.schedule == "linear":
        coeff = 1.0 - progress
    else:
        raise ValueError(f"unknown schedule {cfg.schedule!r}")
    return cfg.min_lr + coeff * (lr - cfg.min_lr)


def lr_curve(cfg: TrainConfig, points: int = 500) -> tuple[list[int], list[float]]:
    """Steps and learning rates across the whole run, at most ``points`` of them."""
    stride = max(1, cfg.max_steps // points)
    steps = list(range(0, cfg.max_steps, stride))
    if steps[-1] != cfg.max_steps - 1:
        steps.append(cfg.max_steps - 1)
    return steps, [lr_at(s, cfg) for s in steps]
