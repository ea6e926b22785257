"""The CLI's progress display while a run trains in the foreground.

On a terminal a tqdm bar (the one every PyTorch user knows) with loss, val loss and
tokens/s; elsewhere (a log file, CI) one plain line per evaluation instead of a bar.
"""

from __future__ import annotations

import math
import sys
from typing import Any, TextIO

from tqdm import tqdm

from gptcore.callbacks import TrainerCallbacks
from gptcore.metric_keys import TOKENS_PER_SEC, TRAIN_LOSS, VAL_LOSS
from storage.status import RunStatus

BAR_FORMAT = ("{l_bar}{bar}| {n_fmt}/{total_fmt} steps [{elapsed}<{remaining}, {rate_fmt}"
              "{postfix}]")


class Progress(TrainerCallbacks):
    """Draws the run's progress on ``stream`` (stderr by default)."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.bar: tqdm | None = None
        self.loss = math.nan
        self.val = math.nan
        self.tps = math.nan

    def on_start(self, info: dict[str, Any]) -> None:
        print(f"training on {info['device']}: {info['n_params']:,} parameters, "
              f"steps {info['start_step']}..{info['max_steps']}", file=self.stream)
        if self.tty:
            # "12/30 steps", never tqdm's bare "31step": the count of optimizer steps done.
            self.bar = tqdm(total=info["max_steps"], initial=info["start_step"], unit=" steps",
                            bar_format=BAR_FORMAT, file=self.stream, dynamic_ncols=True,
                            mininterval=0.2)

    def on_metrics(self, step: int, metrics: dict[str, float]) -> None:
        self.loss = metrics.get(TRAIN_LOSS, self.loss)
        self.tps = metrics.get(TOKENS_PER_SEC, self.tps)
        if VAL_LOSS in metrics:
            self.val = metrics[VAL_LOSS]
            if self.bar is None:
                print(f"step {step}: val loss {self.val:.4f}", file=self.stream, flush=True)
        # The highest step reported is the count of steps done (TrainerCallbacks.on_metrics).
        if self.bar is not None and step > self.bar.n:
            self.bar.set_postfix(loss=f"{self.loss:.4f}", val=f"{self.val:.4f}",
                                 tok_s=f"{self.tps:,.0f}", refresh=False)
            self.bar.update(step - self.bar.n)

    def on_event(self, step: int, kind: str, message: str) -> None:
        # tqdm.write prints above the bar instead of breaking it.
        (self.bar.write if self.bar is not None else print)(f"[{kind}] {message}",
                                                            file=self.stream)

    def on_status(self, status: str, message: str | None = None) -> None:
        if self.bar is not None and status != RunStatus.RUNNING:
            self.bar.close()
            self.bar = None
