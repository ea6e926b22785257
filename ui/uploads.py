"""Uploaded corpora: kept once per content, never overwritten.

An upload streams to a temporary file in the uploads folder, in chunks, checked and
hashed on the way, and then gets a name without replacing anything:
its own name when that is free, the file already there when it holds the same bytes,
else the first free ``big-2.txt``, ``big-3.txt``… A run's corpus file never changes
under it, and a re-upload never costs the old text.

Text and JSON Lines are checked as UTF-8 text (not binary, not empty); Parquet, gzip and
zstd files are binary, so their first bytes must be their format's magic number. What is
inside is read only when a run tokenizes it (a bad field or a truncated file is refused
then, in one line).

Streamlit's uploader holds a whole file in the server's memory (its upload handler reads
the body into ``bytes`` and keeps it for the session), so the pages take modest files
only; a large corpus goes into the data folder (``storage.home.data_dir``), where the pages
list it.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from pathlib import Path
from typing import BinaryIO

from gptcore.data import BUILTIN, TextDecoder, file_sha256
from gptcore.errors import GptdashError
from storage import home
from storage.home import safe_path_in_home
from ui.corpora import TEXT_SUFFIXES
from ui.paths import shown_path

CHUNK_BYTES = 1024**2
# Binary corpus files by name: how each must start, and what it is called.
MAGIC = {".parquet": (b"PAR1", "Parquet"), ".gz": (b"\x1f\x8b", "gzip"),
         ".zst": (b"\x28\xb5\x2f\xfd", "zstd")}
UPLOAD_SUFFIXES = (*TEXT_SUFFIXES, ".jsonl", ".ndjson", *MAGIC)


def save_upload(source: BinaryIO, name: str, folder: Path) -> Path:
    """Store the bytes ``source`` reads under ``name`` (a file name, no folders) in
    ``folder``; the path it has there. A name or text it refuses raises one of
    ``jobs.errors.USER_ERRORS``, and leaves nothing behind."""
    target = safe_path_in_home(_file_name(name), folder)
    check = _checker(target.name)
    sha256 = hashlib.sha256()
    tmp = target.parent / f".{uuid.uuid4().hex}.upload"  # a name no corpus list shows
    try:
        with tmp.open("wb") as out:
            while chunk := source.read(CHUNK_BYTES):
                check.decode(chunk)
                sha256.update(chunk)
                out.write(chunk)
            check.decode(b"", final=True)
            out.flush()
            os.fsync(out.fileno())  # whole on disk before any name points at it
        return _place(tmp, target, sha256.hexdigest())
    finally:
        tmp.unlink(missing_ok=True)


def renamed_note(name: str, saved: Path) -> str | None:
    """What to tell the person who uploaded ``name`` when it was kept as ``saved``, under
    another name (that name held other text); None when it kept its own."""
    asked = _file_name(name)
    if saved.name == asked:
        return None
    return (f"uploads/{asked} already holds other text and is kept as it was: this upload is "
            f"uploads/{saved.name}")


def _file_name(name: str) -> str:
    return Path(name).name or "corpus.txt"


def _checker(name: str) -> TextDecoder | _Magic:
    suffix = Path(name).suffix.lower()
    if suffix in MAGIC:
        return _Magic(name, *MAGIC[suffix])
    if suffix not in UPLOAD_SUFFIXES:
        raise GptdashError(f"{name!r} is not a corpus file the page takes: upload a "
                           f"{', '.join(UPLOAD_SUFFIXES)} file")
    return TextDecoder(name)  # text and JSON Lines: UTF-8, not binary, not empty


class _Magic:
    """A binary corpus file's check on its way to disk: it starts as its format does."""

    def __init__(self, name: str, magic: bytes, what: str):
        self.name, self.magic, self.what = name, magic, what
        self.head = b""

    def decode(self, chunk: bytes, final: bool = False) -> None:
        if len(self.head) < len(self.magic):
            self.head += chunk[:len(self.magic) - len(self.head)]
            if not self.head and final:
                raise GptdashError(f"corpus {self.name!r} is empty: choose a file with "
                                   "documents in it")
            if (final or len(self.head) == len(self.magic)) and self.head != self.magic:
                raise GptdashError(f"corpus {self.name!r} does not start as a {self.what} "
                                   f"file does: upload the {self.what} file itself, or name "
                                   "it for what it is")


def _place(tmp: Path, target: Path, sha256: str) -> Path:
    """Give ``tmp`` the first of ``big.txt``, ``big-2.txt``, ``big-3.txt``… that is free or
    holds the same bytes."""
    size = tmp.stat().st_size
    candidate, n = target, 1
    while True:
        try:
            os.link(tmp, candidate)  # never replaces: a name taken meanwhile raises
            return candidate
        except FileExistsError:
            if (candidate.is_file() and candidate.stat().st_size == size
                    and file_sha256(candidate) == sha256):
                return candidate
        n += 1
        candidate = target.with_name(f"{target.stem}-{n}{target.suffix}")


def page_corpus_problem(corpus: str, known: set[str]) -> str | None:
    """Why a run started from the pages may not train on ``corpus``, or None.

    The pages may be open to a network (behind a password): whoever fills the form must not
    be able to train on, and then sample back, any file the server can read. So a page
    offers the built-in text, the files in ``uploads/`` and ``data/``, and the corpora of
    runs already recorded (their paths were chosen from the command line); any other path
    (typed into an uploaded JSON config or a sweep's grid) is refused. The command line,
    run by someone on the machine itself, takes any path.
    """
    if corpus == BUILTIN or corpus in known:
        return None
    try:
        resolved = Path(corpus).resolve()
    except (OSError, RuntimeError, ValueError):
        resolved = None
    folders = (home.uploads_dir(), home.data_dir())
    if resolved is not None and any(resolved.is_relative_to(f.resolve()) for f in folders):
        return None
    return (f"corpus {shown_path(corpus)!r} is not one the pages offer: upload it here, or put "
            f"it in {home.data_dir()}, or start the run with `gptdash submit --set corpus=...`")
