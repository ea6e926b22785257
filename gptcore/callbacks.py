"""How the trainer reports: the callback protocol it calls, and the result it returns.

The trainer knows nothing of databases or pages. The app's worker, the CLI and test
scripts each pass their own ``TrainerCallbacks``; under torchrun only rank 0's are
called.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gptcore.tokens import Progress


class TrainerCallbacks:
    """Override what you need; every hook is a no-op here."""

    def on_start(self, info: dict[str, Any]) -> None:
        """Once the model is built: device, n_params, start_step, max_steps, world_size."""

    def on_prepare(self, progress: Progress) -> None:
        """Before training, while the corpus is tokenized for the first time: how far it
        has got (every half second or so, and once at the end)."""

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        """Metric values at ``step``; called often, so implementations should buffer.

        ``step`` is the number of optimizer steps done on the weights the values were
        measured with: a training step's ``train/loss``, ``lr`` and ``grad_norm`` at its
        0-based index (measured before its own update), an evaluation and the throughput
        summary (``tokens_per_sec``, ``tokens_seen``) at the count of steps done. So the
        highest ``step`` reported so far is the count of optimizer steps done: what every
        display calls "step" (a completed run of max_steps 30 is at step 30).
        """

    def on_sample(self, step: int, prompt: str, text: str) -> None:
        """A text sample generated at an evaluation."""

    def before_checkpoint(self) -> None:
        """Just before a written checkpoint replaces the last one: raise to keep the last
        one (an owner that lost its run, say)."""

    def on_checkpoint(self, step: int, path: Path) -> None:
        """A checkpoint was written (atomically) to ``path``."""

    def on_status(self, status: str, message: str | None = None) -> None:
        """running, completed, stopped or failed, with a reason for the last three."""

    def on_event(self, step: int, kind: str, message: str) -> None:
        """Something worth a marker on the charts, with a sentence saying what happened.

        ``kind`` is one of ``spike``, ``nan``, ``rollback``, ``lr_reduced``, ``early_stop``
        or ``best_checkpoint``.
        """

    def flush(self) -> None:
        """Persist buffered metrics; called at every evaluation and at the end."""

    def should_stop(self) -> bool:
        """Polled after every step (under torchrun: on rank 0, every ``log_interval`` steps);
        True ends the run cleanly with a checkpoint."""
        return False


@dataclass
class TrainResult:
    """How a run ended, with its last metrics and checkpoint files."""

    status: str  # completed, stopped or failed
    reason: str | None
    step: int
    best_val_loss: float | None = None
    checkpoint: Path | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    best_checkpoint: Path | None = None
    rollbacks: int = 0
