"""The CLI's progress displays: a corpus being tokenized, and a run training in the foreground.

On a terminal a tqdm bar (the one every PyTorch user knows): MB read, tokens, MB/s and ETA
while a corpus is tokenized; loss, val loss and tokens/s while a run trains. Elsewhere (a log
file, CI) plain lines instead of a bar: one every ``PLAIN_EVERY_S`` while tokenizing, one per
evaluation while training.
"""

from __future__ import annotations

import math
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from tqdm import tqdm

from gptcore.callbacks import TrainerCallbacks
from gptcore.metric_keys import TOKENS_PER_SEC, TRAIN_LOSS, VAL_LOSS
from storage.status import RunStatus

if TYPE_CHECKING:
    from gptcore.tokens import Progress as Tokenizing

PLAIN_EVERY_S = 10.0
TOKENIZE_FORMAT = ("tokenizing: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} MB "
                   "[{elapsed}<{remaining}, {rate_fmt}{postfix}]")
BAR_FORMAT = ("{l_bar}{bar}| {n_fmt}/{total_fmt} steps [{elapsed}<{remaining}, {rate_fmt}"
              "{postfix}]")


class TokenizeBar:
    """Draws a corpus's tokenization on ``stream`` (stderr by default): called with each
    ``gptcore.tokens.Progress``, closed when done."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.bar: tqdm | None = None
        self.tty = self.stream.isatty()
        self.printed = time.monotonic()  # when the last plain line was: none for a quick one

    def __call__(self, state: Tokenizing) -> None:
        if not self.tty:
            now = time.monotonic()
            if now - self.printed >= PLAIN_EVERY_S:
                self.printed = now
                print(state.line(), file=self.stream, flush=True)
            return
        if self.bar is None:
            # Counted in MB (tqdm's own unit scaling would print "MB MB"), from when it began.
            self.bar = tqdm(total=state.bytes_total / 1e6, unit="MB", bar_format=TOKENIZE_FORMAT,
                            file=self.stream, dynamic_ncols=True, mininterval=0.2)
            self.bar.start_t = min(self.bar.start_t, state.started)
        self.bar.set_postfix_str(f"{state.tokens / 1e6:.1f} M tokens", refresh=False)
        self.bar.update(state.bytes_read / 1e6 - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Progress(TrainerCallbacks):
    """Draws the run's progress on ``stream`` (stderr by default), and its corpus's
    tokenization before it when that is the first time."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.tokenizing = TokenizeBar(self.stream)
        self.bar: tqdm | None = None
        self.loss = math.nan
        self.val = math.nan
        self.tps = math.nan

    def on_prepare(self, progress: Tokenizing) -> None:
        self.tokenizing(progress)

    def on_start(self, info: dict[str, Any]) -> None:
        self.tokenizing.close()  # the corpus is ready once the model is built
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
        self.tokenizing.close()
        if self.bar is not None and status != RunStatus.RUNNING:
            self.bar.close()
            self.bar = None
