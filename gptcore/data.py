"""Corpora, tokenized once and cached on disk as memory-mapped token ids.

A corpus is ``"builtin"`` (the English text of Python's reference topics, shipped
with CPython in ``pydoc_data.topics``, so nothing is downloaded) or a path to a
UTF-8 text file. Ids are cached per (content hash, tokenizer) in ``cache_dir``.
"""

from __future__ import annotations

import codecs
import hashlib
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from gptcore.errors import GptdashError
from gptcore.tokenizer import get_tokenizer

if TYPE_CHECKING:
    import torch

BUILTIN = "builtin"
MAX_CORPUS_BYTES = 2 * 1024**3
BINARY_PROBE = 65536  # a NUL byte in a file's first 64 KiB says it is not text


def builtin_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name] for name in sorted(topics))


def corpus_file(corpus: str) -> Path:
    """The path of a corpus file; a directory, or a missing or too large file, is a
    GptdashError."""
    p = Path(corpus)
    if p.is_dir():
        raise GptdashError(f"corpus {corpus!r} is a directory, not a text file: give the "
                           "path of one UTF-8 text file in it")
    if not p.is_file():
        raise GptdashError(f"corpus file {corpus!r} does not exist")
    size = p.stat().st_size
    if size > MAX_CORPUS_BYTES:
        raise GptdashError(f"corpus file {p.name!r} is {size / 1e9:.1f} GB; the limit is 2 GB")
    return p


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes (hex), read in chunks."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def corpus_sha256(corpus: str) -> str:
    """The sha256 of a corpus's bytes (hex): which text a run trains on, and its token
    cache's name. A file is read in chunks, never whole."""
    if corpus == BUILTIN:
        return hashlib.sha256(builtin_text().encode("utf-8")).hexdigest()
    return file_sha256(corpus_file(corpus))


class TextDecoder:
    """A corpus's bytes to text, whole or chunk by chunk (an upload on its way to disk),
    with a clear error for empty, binary or non-UTF-8 input."""

    def __init__(self, name: str):
        self.name = name
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._seen = 0  # bytes decoded so far
        self._has_text = False

    def decode(self, chunk: bytes, final: bool = False) -> str:
        if self._seen < BINARY_PROBE and b"\x00" in chunk[:BINARY_PROBE - self._seen]:
            raise GptdashError(f"corpus {self.name!r} looks binary (it has NUL bytes): "
                               "choose a plain UTF-8 text file")
        pending = len(self._decoder.getstate()[0])  # an earlier chunk's unfinished character
        try:
            text = self._decoder.decode(chunk, final)
        except UnicodeDecodeError as exc:
            raise GptdashError(
                f"corpus {self.name!r} is not UTF-8 text (bad byte at offset "
                f"{self._seen - pending + exc.start}): save it as UTF-8 and try again") from None
        self._seen += len(chunk)
        self._has_text = self._has_text or bool(chunk.strip())
        if final and not self._has_text:
            raise GptdashError(f"corpus {self.name!r} is empty: choose a file with text in it")
        return text


def decode_corpus(raw: bytes, name: str) -> str:
    """Bytes of an uploaded or on-disk corpus to text, with a clear error when it is not text."""
    return TextDecoder(name).decode(raw, final=True)


def _encode(text: str, tokenizer: str) -> np.ndarray:
    tok = get_tokenizer(tokenizer)
    if hasattr(tok, "encode_batch"):
        # BPE on one huge string is slow; paragraphs in a batch use tiktoken's threads.
        parts = text.split("\n\n")
        chunks = tok.encode_batch([p + "\n\n" for p in parts[:-1]] + parts[-1:])
        ids = [i for chunk in chunks for i in chunk]
    else:
        ids = tok.encode(text)
    dtype = np.uint16 if tok.n_vocab <= 65536 else np.uint32
    return np.asarray(ids, dtype=dtype)


def token_ids(corpus: str, tokenizer: str, cache_dir: Path) -> tuple[np.ndarray, str]:
    """All token ids of a corpus, memory-mapped from the on-disk cache (built on first use),
    and the sha256 of the text they are the ids of."""
    sha256 = corpus_sha256(corpus)
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{sha256[:20]}-{tokenizer}.npy"
    if not path.exists():
        if corpus == BUILTIN:
            raw, name = builtin_text().encode("utf-8"), BUILTIN
        else:
            raw, name = corpus_file(corpus).read_bytes(), Path(corpus).name
        if hashlib.sha256(raw).hexdigest() != sha256:  # the cache is named for its content
            raise GptdashError(f"corpus {corpus!r} changed while it was read: try again once "
                               "it is saved")
        ids = _encode(decode_corpus(raw, name), tokenizer)
        # Write then rename, so a reader never maps a half-written cache file.
        # A name of its own per writer: two threads (two Start presses) may build it at once.
        tmp = path.with_suffix(f".{os.getpid()}-{uuid.uuid4().hex}.tmp.npy")
        np.save(tmp, ids)
        os.replace(tmp, path)
    return np.load(path, mmap_mode="r"), sha256


@dataclass
class TokenData:
    """Train and validation ids and random (x, y) windows from them."""

    train: np.ndarray
    val: np.ndarray
    corpus_sha256: str  # the text they are the ids of

    def check_context(self, context_length: int) -> None:
        # A bigger validation share takes tokens from training, and the other way round.
        for split, ids, share in (("training", self.train, "lower"),
                                  ("validation", self.val, "raise")):
            if len(ids) <= context_length + 1:
                raise GptdashError(
                    f"the corpus has {len(ids)} {split} tokens, too few for context_length "
                    f"{context_length}: lower context_length (or {share} val_fraction), "
                    "or use a longer corpus")

    def batch(self, split: str, batch_size: int, context_length: int,
              generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """A batch of random windows as int64 CPU tensors (x, y), y shifted by one."""
        import torch  # here, so tokenizing a corpus (e.g. `gptdash submit`) needs no torch

        ids = self.train if split == "train" else self.val
        starts = torch.randint(len(ids) - context_length - 1, (batch_size,), generator=generator)
        windows = np.stack([ids[s : s + context_length + 1] for s in starts.tolist()])
        block = torch.from_numpy(windows.astype(np.int64))
        return block[:, :-1], block[:, 1:]


def load_data(corpus: str, tokenizer: str, val_fraction: float, cache_dir: Path) -> TokenData:
    ids, sha256 = token_ids(corpus, tokenizer, cache_dir)
    n_val = max(1, int(len(ids) * val_fraction))
    return TokenData(train=ids[:-n_val], val=ids[-n_val:], corpus_sha256=sha256)
