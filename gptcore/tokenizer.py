"""Tokenizers: exact GPT-2 BPE through tiktoken, and bytes (vocab 256).

tiktoken downloads GPT-2's files at run time, which we never do. The same
ranks file ships inside the ``openai-whisper`` package (installed with
``--no-deps`` at setup), so we build the encoding from that file on disk.
"""

from __future__ import annotations

import base64
import importlib.metadata
import importlib.util
import os
from functools import cache
from pathlib import Path
from typing import Protocol

import numpy as np

from gptcore.errors import GptdashError

# GPT-2's pre-tokenizer pattern and its one special token, as published with GPT-2.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
ENDOFTEXT = "<|endoftext|>"
ENDOFTEXT_ID = 50256


class Tokenizer(Protocol):
    name: str
    n_vocab: int
    eot_id: int  # the id that ends a document

    def encode(self, text: str) -> list[int]: ...

    def encode_array(self, text: str) -> np.ndarray: ...

    def decode(self, ids: list[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes as ids. Decoding replaces broken multi-byte sequences."""

    name = "byte"
    n_vocab = 256
    eot_id = 0  # NUL, which a text corpus never holds: ends a document

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_array(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.uint16)

    def decode(self, ids: list[int]) -> str:
        return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class GPT2Tokenizer:
    """GPT-2 BPE with the exact GPT-2 ids."""

    name = "gpt2"
    eot_id = ENDOFTEXT_ID

    def __init__(self, ranks_path: Path):
        import tiktoken

        ranks = load_ranks(ranks_path)
        self._enc = tiktoken.Encoding(
            name="gpt2-local",
            pat_str=GPT2_PATTERN,
            mergeable_ranks=ranks,
            special_tokens={ENDOFTEXT: ENDOFTEXT_ID},
        )
        self.n_vocab = self._enc.n_vocab

    def encode(self, text: str) -> list[int]:
        # The special token is ordinary text in a corpus, never a control token.
        return self._enc.encode_ordinary(text)

    def encode_array(self, text: str) -> np.ndarray:
        """``encode`` as uint16 ids, without a Python list in between."""
        ids = self._enc.encode_to_numpy(text, allowed_special=set(), disallowed_special=())
        return ids.astype(np.uint16)

    def decode(self, ids: list[int]) -> str:
        return self._enc.decode([int(i) for i in ids if 0 <= int(i) < self.n_vocab])


def load_ranks(path: Path) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    for line in path.read_bytes().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def gpt2_ranks_path() -> Path:
    """The GPT-2 ranks file: $GPTDASH_GPT2_RANKS, else the one in openai-whisper's package."""
    override = os.environ.get("GPTDASH_GPT2_RANKS")
    if override:
        if not Path(override).is_file():
            raise GptdashError(f"GPTDASH_GPT2_RANKS points at {override!r}, which does not exist")
        return Path(override)
    spec = importlib.util.find_spec("whisper")  # finds the package without importing it
    candidates = []
    if spec and spec.submodule_search_locations:
        candidates += [Path(p) / "assets" / "gpt2.tiktoken"
                       for p in spec.submodule_search_locations]
    try:
        for f in importlib.metadata.files("openai-whisper") or []:
            if str(f).endswith("assets/gpt2.tiktoken"):
                candidates.append(Path(f.locate()))
    except importlib.metadata.PackageNotFoundError:
        pass
    for path in candidates:
        if path.is_file():
            return path
    raise GptdashError("the GPT-2 vocabulary file is missing: run `make setup` (it installs "
                       "openai-whisper with --no-deps, which ships gpt2.tiktoken)")


@cache
def get_tokenizer(name: str) -> Tokenizer:
    if name == "byte":
        return ByteTokenizer()
    if name == "gpt2":
        return GPT2Tokenizer(gpt2_ranks_path())
    raise GptdashError(f"unknown tokenizer {name!r}: choose byte or gpt2")
