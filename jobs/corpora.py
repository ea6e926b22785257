"""`gptdash corpus`: tokenize a corpus into the shared token cache ahead of its runs, and
list what the cache holds.

The work is ``gptcore.tokens``'s; this module says how it goes on a terminal: a bar while it
tokenizes, one line when done, and one line when it is stopped, with nothing half-written
left in the cache (the cache's folder is written under a temporary name that ``prepare``
removes on its way out, and a killed one's is removed by the next).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from gptcore.tokens import Manifest, in_progress, lookup, prepare, prepared
from jobs.exit_codes import STOP_SIGNALS
from jobs.progress import TokenizeBar
from storage.home import cache_dir
from storage.names import one_line


class Stopped(Exception):
    """A stop signal arrived while a corpus was being tokenized."""

    def __init__(self, signum: int):
        super().__init__(STOP_SIGNALS[signal.Signals(signum)])
        self.signum = signum


@contextmanager
def _stop_on_signals() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise ``Stopped`` here, so the preparation unwinds and
    removes its temporary folder (SIGTERM's default would end the process where it stands)."""

    def on_signal(signum, frame):
        for sig in previous:  # one stop: a second signal must not cut the clean-up short
            signal.signal(sig, signal.SIG_IGN)
        raise Stopped(signum)

    # A signal ignored when we started (SIGHUP under nohup) stays ignored.
    previous = {sig: signal.signal(sig, on_signal) for sig in STOP_SIGNALS
                if signal.getsignal(sig) is not signal.SIG_IGN}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def prepare_corpus(corpus: str, tokenizer: str, text_field: str, val_fraction: float,
                   stream: TextIO | None = None) -> tuple[Manifest, bool]:
    """The corpus tokenized into the shared cache, with a bar on ``stream`` while it is;
    and whether it was there already. Raises ``Stopped`` on a stop signal, GptdashError on
    bad input; either way the cache holds nothing of it."""
    folder = cache_dir()
    found = lookup(corpus, tokenizer, folder, val_fraction, text_field)
    if found is not None:
        return found.manifest, True
    bar = TokenizeBar(stream)
    try:
        with _stop_on_signals():
            ready = prepare(corpus, tokenizer, folder, val_fraction, text_field, bar)
    finally:
        bar.close()
    return ready.manifest, False


def summary(manifest: Manifest, cached: bool) -> str:
    """One line: what the corpus holds once tokenized."""
    skipped = f", {len(manifest.skipped)} files skipped (not text)" if manifest.skipped else ""
    when = "already prepared" if cached else f"prepared in {manifest.seconds:.1f} s"
    plural = "" if manifest.documents == 1 else "s"
    documents = (f"{manifest.documents:,} document{plural}, " if manifest.kind != "nanogpt"
                 else "")
    return (f"corpus {manifest.corpus!r} {when}: {documents}{manifest.train_tokens:,} training "
            f"and {manifest.val_tokens:,} validation tokens ({manifest.tokenizer}){skipped}")


def stopped_line(stop: Stopped) -> str:
    return f"corpus preparation stopped by {stop}; nothing was written to the token cache"


def listing() -> list[str]:
    """The corpora prepared in the shared cache, newest first, then those under way."""
    folder = cache_dir()
    done, running = prepared(folder), in_progress(folder)
    if not done and not running:
        return ["no prepared corpora yet: tokenize one with `gptdash corpus prepare PATH`"]
    lines = []
    if done:
        lines.append(f"{'tokens':>14}  {'val':>11}  {'documents':>10}  {'MB':>9}  "
                     f"{'tokenizer':<9}  corpus")
        for m in done:
            lines.append(f"{m.train_tokens + m.val_tokens:>14,}  {m.val_tokens:>11,}  "
                         f"{m.documents if m.kind != 'nanogpt' else '-':>10}  "
                         f"{m.bytes / 1e6:>9,.1f}  {m.tokenizer:<9}  {one_line(m.corpus)}")
    for state in running:
        since = time.time() - state.started
        lines.append(f"under way (pid {state.pid}, {since:.0f} s): {one_line(state.corpus)}: "
                     f"{state.line()}")
    return lines
