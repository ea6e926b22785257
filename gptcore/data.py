"""Corpora, tokenized once and cached on disk as memory-mapped token ids.

A corpus is ``"builtin"`` (the English text of Python's reference topics, shipped
with CPython in ``pydoc_data.topics``, so nothing is downloaded) or a path to a
UTF-8 text file. Ids are cached per (content hash, tokenizer) in ``cache_dir``.
"""

from __future__ import annotations

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


def builtin_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name] for name in sorted(topics))


def read_text_file(path: str | Path) -> str:
    """Read a corpus file; a directory, or a missing, empty, binary or non-UTF-8 file, is a
    GptdashError."""
    p = Path(path)
    if p.is_dir():
        raise GptdashError(f"corpus {str(path)!r} is a directory, not a text file: give the "
                           "path of one UTF-8 text file in it")
    if not p.is_file():
        raise GptdashError(f"corpus file {str(path)!r} does not exist")
    size = p.stat().st_size
    if size > MAX_CORPUS_BYTES:
        raise GptdashError(f"corpus file {p.name!r} is {size / 1e9:.1f} GB; the limit is 2 GB")
    return decode_corpus(p.read_bytes(), p.name)


def decode_corpus(raw: bytes, name: str) -> str:
    """Bytes of an uploaded or on-disk corpus to text, with a clear error when it is not text."""
    if not raw.strip():
        raise GptdashError(f"corpus {name!r} is empty: choose a file with text in it")
    if b"\x00" in raw[:65536]:
        raise GptdashError(f"corpus {name!r} looks binary (it has NUL bytes): "
                           "choose a plain UTF-8 text file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GptdashError(f"corpus {name!r} is not UTF-8 text (bad byte at offset {exc.start}): "
                           "save it as UTF-8 and try again") from None


def corpus_text(corpus: str) -> str:
    return builtin_text() if corpus == BUILTIN else read_text_file(corpus)


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


def token_ids(corpus: str, tokenizer: str, cache_dir: Path) -> np.ndarray:
    """All token ids of a corpus, memory-mapped from the on-disk cache (built on first use)."""
    text = corpus_text(corpus)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:20]
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{digest}-{tokenizer}.npy"
    if not path.exists():
        ids = _encode(text, tokenizer)
        # Write then rename, so a reader never maps a half-written cache file.
        # A name of its own per writer: two threads (two Start presses) may build it at once.
        tmp = path.with_suffix(f".{os.getpid()}-{uuid.uuid4().hex}.tmp.npy")
        np.save(tmp, ids)
        os.replace(tmp, path)
    return np.load(path, mmap_mode="r")


@dataclass
class TokenData:
    """Train and validation ids and random (x, y) windows from them."""

    train: np.ndarray
    val: np.ndarray

    def check_context(self, context_length: int) -> None:
        for split, ids in (("training", self.train), ("validation", self.val)):
            if len(ids) <= context_length + 1:
                raise GptdashError(
                    f"the corpus has {len(ids)} {split} tokens, too few for context_length "
                    f"{context_length}: lower context_length (or raise val_fraction), "
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
    ids = token_ids(corpus, tokenizer, cache_dir)
    n_val = max(1, int(len(ids) * val_fraction))
    return TokenData(train=ids[:-n_val], val=ids[-n_val:])
