"""The new-run form's logic: field groups, per-field validation and a launch summary."""

from __future__ import annotations

import re

from gptcore.config import TrainConfig, apply_overrides, field_info
from gptcore.errors import GptdashError
from gptcore.estimate import (
    MachinePace,
    duration_estimate,
    flops_per_token,
    memory_estimate,
    param_count,
)
from ui.format import DASH, human_bytes_mb, human_count, human_duration

GROUP_ORDER = ("model", "data", "optimization", "schedule", "evaluation", "fine-tune", "system")


def form_groups() -> dict[str, list[str]]:
    """Group name -> field names in declaration order, groups in the form's order."""
    groups: dict[str, list[str]] = {name: [] for name in GROUP_ORDER}
    for name, info in field_info().items():
        groups.setdefault(info["group"], []).append(name)
    return {group: names for group, names in groups.items() if names}


def form_problems(
    values: dict[str, object], base: TrainConfig | None = None
) -> tuple[TrainConfig | None, dict[str, str]]:
    """Apply flat form values onto ``base`` and say what is wrong, keyed by field.

    Returns ``(None, errors)`` when some values cannot be read as their field's
    type (or name no field), else ``(cfg, cfg.problems())``, which is empty when
    the config is ready to run. An unreadable field never hides the others'
    problems: they are judged with the readable values, and a combination check
    that names an unreadable field is left out (it would judge a value not typed).
    """
    base = base if base is not None else TrainConfig()
    # Each field on its own, so every unreadable field is reported, each beside its input.
    errors: dict[str, str] = {}
    readable: dict[str, object] = {}
    for name, value in values.items():
        try:
            apply_overrides(base, {name: value})
            readable[name] = value
        except GptdashError as exc:
            errors[name] = str(exc)
    cfg = apply_overrides(base, readable)
    if not errors:
        return cfg, cfg.problems()
    unread = [re.compile(rf"\b{re.escape(name)}\b") for name in errors]
    problems = {name: message for name, message in cfg.problems().items()
                if not any(pattern.search(message) for pattern in unread)}
    return None, {**problems, **errors}


def launch_summary(cfg: TrainConfig, pace: MachinePace | None = None) -> dict[str, str]:
    """What a run will cost, as label -> human string, for the form's summary panel.

    "Estimated duration" (training, evaluations, checkpoints and start-up) needs this
    machine's measured ``pace`` (``jobs.sweeps.measured_pace``), else "—".
    """
    tokens_per_step = cfg.tokens_per_step
    flops = human_count(flops_per_token(cfg))
    duration = human_duration(duration_estimate(cfg, pace).total_s) if pace else DASH
    return {
        "Parameters": human_count(param_count(cfg)),
        # The label carries the unit, so the value fits a metric tile ("71.5 M").
        "FLOPs per token": flops,
        "Memory estimate": human_bytes_mb(memory_estimate(cfg).total_mb),
        "Tokens per step": f"{tokens_per_step:,}",
        "Estimated duration": duration,
    }
