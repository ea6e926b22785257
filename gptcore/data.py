"""A run's data: a corpus's token ids, split into training and validation, and batches.

What a corpus may be and how it is read is ``gptcore.corpus``; how it is tokenized once and
shared is ``gptcore.tokens``. This module turns a prepared corpus into random windows.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gptcore.corpus import (
    BUILTIN,
    DEFAULT_TEXT_FIELD,
    Utf8Decoder,
    builtin_text,
    find_source,
    fingerprint,
    preflight,
)
from gptcore.errors import GptdashError
from gptcore.tokens import Progress, lookup, prepare

if TYPE_CHECKING:
    import torch

__all__ = ["BUILTIN", "TextDecoder", "TokenData", "builtin_text", "check_corpus", "file_sha256",
           "load_data"]

BINARY_PROBE = 65536  # a NUL byte in a file's first 64 KiB says it is not text
TINY_CORPUS_BYTES = 1024**2  # tokenized in some 50 ms: checked whole before a run is queued


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes (hex), read in chunks."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class TextDecoder:
    """A corpus's bytes to text, chunk by chunk (an upload on its way to disk), with a
    clear error for empty, binary or non-UTF-8 input."""

    def __init__(self, name: str):
        self.name = name
        self._utf8 = Utf8Decoder(f"corpus {name!r}")
        self._has_text = False

    def decode(self, chunk: bytes, final: bool = False) -> str:
        seen = self._utf8.seen
        if seen < BINARY_PROBE and b"\x00" in chunk[:BINARY_PROBE - seen]:
            raise GptdashError(f"corpus {self.name!r} looks binary (it has NUL bytes): "
                               "choose a plain UTF-8 text file")
        text = self._utf8.decode(chunk, final)
        self._has_text = self._has_text or bool(chunk.strip())
        if final and not self._has_text:
            raise GptdashError(f"corpus {self.name!r} is empty: choose a file with text in it")
        return text


@dataclass
class TokenData:
    """Train and validation ids and random (x, y) windows from them."""

    train: np.ndarray
    val: np.ndarray
    corpus_fingerprint: str  # which text they are the ids of (``gptcore.corpus.fingerprint``)
    _fds: dict[str, int] = field(default_factory=dict, repr=False, compare=False)

    def __del__(self) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)

    def check_context(self, context_length: int) -> None:
        _check_counts(len(self.train), len(self.val), context_length)

    def _windows(self, ids: np.ndarray, starts: list[int], length: int) -> np.ndarray:
        """The windows, read from the file with ``pread`` when ``ids`` maps one: slicing the
        map would keep every page it touched (and the disk's read-ahead around it) resident
        in the process, so a run on a 10 GB token file would grow towards 10 GB."""
        path = getattr(ids, "filename", None)
        if path is None or not isinstance(ids.base, mmap.mmap):  # not a whole file's map
            return np.stack([ids[s : s + length] for s in starts])
        if self._fds.get(path) is None:
            self._fds[path] = os.open(path, os.O_RDONLY)
        fd, size = self._fds[path], ids.dtype.itemsize
        return np.stack([np.frombuffer(os.pread(fd, length * size, ids.offset + s * size),
                                       dtype=ids.dtype) for s in starts])

    def batch(self, split: str, batch_size: int, context_length: int,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of random windows as int64 CPU tensors (x, y), y shifted by one."""
        import torch  # here, so tokenizing a corpus (e.g. `gptdash submit`) needs no torch

        ids = self.train if split == "train" else self.val
        starts = torch.randint(len(ids) - context_length - 1, (batch_size,), generator=generator)
        windows = self._windows(ids, starts.tolist(), context_length + 1)
        block = torch.from_numpy(windows.astype(np.int64))
        return block[:, :-1], block[:, 1:]


def load_data(corpus: str, tokenizer: str, val_fraction: float, cache_dir: Path,
              text_field: str = DEFAULT_TEXT_FIELD,
              progress: Callable[[Progress], None] | None = None) -> TokenData:
    """The corpus's ids for training and validation, tokenized on first use (``progress``
    hears how that goes) and memory-mapped from the shared cache after."""
    ready = prepare(corpus, tokenizer, cache_dir, val_fraction, text_field, progress)
    return TokenData(train=ready.train, val=ready.val,
                     corpus_fingerprint=ready.manifest.fingerprint)


def check_corpus(corpus: str, tokenizer: str, val_fraction: float, cache_dir: Path,
                 context_length: int, text_field: str = DEFAULT_TEXT_FIELD, *,
                 trains_here: bool = False) -> str:
    """What a run is refused before it is queued, cheaply: a missing corpus, a bad format,
    field or start of text, and, for a corpus already tokenized, too few tokens for the
    context. The corpus is tokenized here only when the run ``trains_here`` (in the
    foreground: it would be at once anyway) or it is tiny (a blink): else whoever trains
    the run tokenizes it, never the caller, which may be the pages' process. Returns the
    corpus's fingerprint."""
    ready = lookup(corpus, tokenizer, cache_dir, val_fraction, text_field)
    source = find_source(corpus)
    tiny = source.kind == "builtin" or source.total_bytes <= TINY_CORPUS_BYTES
    if ready is None and (trains_here or tiny):
        ready = prepare(corpus, tokenizer, cache_dir, val_fraction, text_field)
    if ready is None:
        preflight(source, text_field)
        return fingerprint(source)
    _check_counts(len(ready.train), len(ready.val), context_length)
    return ready.manifest.fingerprint


def _check_counts(n_train: int, n_val: int, context_length: int) -> None:
    # A bigger validation share takes tokens from training, and the other way round.
    for split, count, share in (("training", n_train, "lower"), ("validation", n_val, "raise")):
        if count <= context_length + 1:
            raise GptdashError(
                f"the corpus has {count} {split} tokens, too few for context_length "
                f"{context_length}: lower context_length (or {share} val_fraction), "
                "or use a longer corpus")
