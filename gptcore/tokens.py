"""A corpus tokenized once, in bounded memory, into memory-mapped token files every run shares.

``prepare`` streams the corpus's documents (``gptcore.corpus``), encodes them in batches on
every core (processes: tiktoken's encoder holds the GIL for much of its work), and appends
the ids to ``train.bin`` and ``val.bin`` (uint16 where the vocabulary fits, else uint32) in
a folder of the token cache named for the corpus's fingerprint, tokenizer, text field and
validation share, with a ``manifest.json`` beside them. A document's last piece is followed
by the tokenizer's end-of-text id. The validation split takes whole documents by a seeded
hash of their first piece, so it is the same on every machine and does not depend on the
order of files; a corpus of a few text files (a book or three) is split by its pieces instead.

The folder is written under a temporary name and renamed when complete, so a reader never
maps a half-written file; an interrupted preparation (kill -9, Ctrl-C) leaves only a
temporary folder, which the next one removes and starts over. A lock file makes a second
process (another worker on the shared folder) wait for the first instead of doing the same
work. ``lookup`` finds a prepared corpus from the files' stat and a sample of their bytes
alone, in milliseconds, whatever the corpus's size.

A nanoGPT-style ``train.bin``/``val.bin`` pair is used where it lies: only its manifest
(token counts and the largest id, checked against the vocabulary once) goes in the cache.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from gptcore.corpus import (
    DEFAULT_TEXT_FIELD,
    Piece,
    ReadCounts,
    Source,
    find_source,
    fingerprint,
    pieces,
)
from gptcore.errors import GptdashError
from gptcore.processes import pid_alive
from gptcore.tokenizer import get_tokenizer

FORMAT = 3  # bump when the files' layout or the split changes: old folders are not reused
MANIFEST = "manifest.json"
SPLIT_SEED = b"gptdash-val-split"
BATCH_CHARS = 1 << 20  # text sent to an encoding process at a time
PROGRESS_EVERY_S = 0.5
MIN_DOCUMENTS_TO_SPLIT_BY = 100
SMALL_CORPUS_BYTES = 8 * 1024**2  # tokenized in well under a second, in one process


@dataclass
class Progress:
    """How far a preparation has got; written to ``progress.json`` for other processes."""

    corpus: str
    tokenizer: str
    bytes_read: int
    bytes_total: int
    tokens: int
    documents: int
    started: float  # time.time()
    pid: int

    @property
    def fraction(self) -> float:
        return min(1.0, self.bytes_read / self.bytes_total) if self.bytes_total else 0.0

    def line(self) -> str:
        """``tokenizing corpus: 45% (900 MB of 2.0 GB, 40 MB/s, 3.1 M tokens)``."""
        elapsed = max(1e-6, time.time() - self.started)
        rate = self.bytes_read / elapsed
        return (f"tokenizing corpus: {self.fraction:.0%} ({_mb(self.bytes_read)} of "
                f"{_mb(self.bytes_total)}, {rate / 1e6:.0f} MB/s, {self.tokens / 1e6:.1f} M "
                "tokens)")


@dataclass
class Manifest:
    """What a prepared folder holds."""

    format: int
    corpus: str
    kind: str
    fingerprint: str
    tokenizer: str
    text_field: str
    val_fraction: float
    dtype: str
    files: int
    skipped: list[str]
    bytes: int
    documents: int
    train_tokens: int
    val_tokens: int
    seconds: float
    train_path: str  # where the ids lie: in the folder, or a nanoGPT pair's own files
    val_path: str
    key: str = ""  # ``cache_key``: whether the files are still as they were when tokenized

    @property
    def tokens(self) -> int:
        return self.train_tokens + self.val_tokens


@dataclass
class Prepared:
    """A tokenized corpus: its manifest and its ids, memory-mapped."""

    manifest: Manifest
    train: np.ndarray
    val: np.ndarray


def cache_key(source: Source, corpus_fingerprint: str, tokenizer: str, text_field: str,
              val_fraction: float) -> str:
    # The files' modification times too: a file saved anew is tokenized anew, even when
    # its size and samples are as they were.
    times = [f.mtime_ns for f in source.files]
    parts = [FORMAT, source.kind, corpus_fingerprint, times, tokenizer]
    if source.kind != "nanogpt":  # a nanoGPT pair comes split
        parts.append(val_fraction)
    if source.kind == "files":  # only text in files has a field; the rest ignore it
        parts.append(text_field)
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:24]


def folder_for(cache_dir: Path, key: str, tokenizer: str) -> Path:
    return cache_dir / f"tokens-{key}-{tokenizer}"


def lookup(corpus: str, tokenizer: str, cache_dir: Path, val_fraction: float,
           text_field: str = DEFAULT_TEXT_FIELD) -> Prepared | None:
    """The prepared corpus when it is in the cache and its files have not changed; None
    when it must be prepared. Reads stat and 8 KiB per file, never the corpus."""
    source = find_source(corpus)
    key = cache_key(source, fingerprint(source), tokenizer, text_field, val_fraction)
    return _open(folder_for(cache_dir, key, tokenizer))


def prepare(corpus: str, tokenizer: str, cache_dir: Path, val_fraction: float,
            text_field: str = DEFAULT_TEXT_FIELD,
            progress: Callable[[Progress], None] | None = None) -> Prepared:
    """The corpus tokenized: from the cache, else tokenized now (see the module's note).
    Bad input raises a one-line GptdashError and leaves nothing in the cache."""
    source = find_source(corpus)
    print_ = fingerprint(source)
    key = cache_key(source, print_, tokenizer, text_field, val_fraction)
    folder = folder_for(cache_dir, key, tokenizer)
    if (found := _open(folder)) is not None:
        return found
    cache_dir.mkdir(parents=True, exist_ok=True)
    with _locked(folder.with_suffix(".lock")):
        if (found := _open(folder)) is not None:  # another process made it while we waited
            return found
        _remove_leftovers(folder)
        tmp = folder.with_name(f"{folder.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
        tmp.mkdir()
        try:
            manifest = _write(source, print_, tokenizer, text_field, val_fraction, tmp,
                              progress)
            manifest.key = key
            (tmp / MANIFEST).write_text(json.dumps(asdict(manifest), indent=1))
            os.rename(tmp, folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    found = _open(folder)
    assert found is not None
    return found


def in_progress(cache_dir: Path) -> list[Progress]:
    """Preparations under way in the cache (their ``progress.json``), for the pages."""
    found = []
    for path in cache_dir.glob("tokens-*.tmp/progress.json"):
        with contextlib.suppress(OSError, ValueError, TypeError):
            state = Progress(**json.loads(path.read_text()))
            if pid_alive(state.pid):  # a folder left by a killed preparation is not under way
                found.append(state)
    return found


def prepared(cache_dir: Path) -> list[Manifest]:
    """Every prepared corpus in the cache, newest first."""
    manifests = []
    for path in cache_dir.glob("tokens-*/" + MANIFEST):
        if path.parent.name.endswith(".tmp"):
            continue
        with contextlib.suppress(OSError, ValueError, TypeError):
            manifests.append((path.stat().st_mtime, Manifest(**json.loads(path.read_text()))))
    return [m for _, m in sorted(manifests, key=lambda pair: -pair[0])]


# ---- the cache folder --------------------------------------------------------------------

def _open(folder: Path) -> Prepared | None:
    try:
        manifest = Manifest(**json.loads((folder / MANIFEST).read_text()))
    except (OSError, ValueError, TypeError):
        return None
    train_path = folder / manifest.train_path
    val_path = folder / manifest.val_path
    try:
        return Prepared(manifest, _map(train_path, manifest.dtype, manifest.train_tokens),
                        _map(val_path, manifest.dtype, manifest.val_tokens))
    except (OSError, ValueError):  # a nanoGPT pair moved or changed since
        return None


def _map(path: Path, dtype: str, count: int) -> np.ndarray:
    if count == 0:
        return np.zeros(0, dtype=dtype)
    ids = np.memmap(path, dtype=dtype, mode="r")
    if len(ids) != count:
        raise ValueError(f"{path} holds {len(ids)} ids, not {count}")
    return ids


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the process ends, however it ends
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _remove_leftovers(folder: Path) -> None:
    """Temporary folders of earlier preparations that were interrupted: we hold the lock,
    so none of them is still being written."""
    for tmp in folder.parent.glob(f"{folder.name}.*.tmp"):
        shutil.rmtree(tmp, ignore_errors=True)


# ---- tokenizing --------------------------------------------------------------------------

def _dtype(n_vocab: int) -> np.dtype:
    return np.dtype(np.uint16 if n_vocab <= 65536 else np.uint32)


def _write(source: Source, corpus_fingerprint: str, tokenizer: str, text_field: str,
           val_fraction: float, folder: Path,
           progress: Callable[[Progress], None] | None) -> Manifest:
    tok = get_tokenizer(tokenizer)
    dtype = _dtype(tok.n_vocab)
    started = time.time()
    if source.kind == "nanogpt":
        return _nanogpt_manifest(source, corpus_fingerprint, tok, dtype, started)
    counts = ReadCounts()
    total = source.total_bytes or len(_builtin_bytes())
    report = _Reporter(source.corpus, tokenizer, total, started, folder, progress)
    piece_chars = _piece_chars(total)
    written = {"train": 0, "val": 0}
    with (folder / "train.bin").open("wb") as train, (folder / "val.bin").open("wb") as val:
        outputs = {"train": train, "val": val}
        parallel = total > SMALL_CORPUS_BYTES  # a small one is done before processes start
        split = _split(pieces(source, text_field, piece_chars, counts), val_fraction,
                       by_document=_by_document(source))
        for batch_ids in _encoded(split, tokenizer, parallel):
            for split, ids in batch_ids:
                outputs[split].write(ids.astype(dtype, copy=False).tobytes())
                written[split] += len(ids)
            report(counts, written["train"] + written["val"])
        report(counts, written["train"] + written["val"], final=True)
    if counts.documents == 0 or written["train"] + written["val"] == 0:
        skipped = source.skipped + counts.skipped
        why = f" ({len(skipped)} files in it are not text)" if skipped else ""
        raise GptdashError(f"corpus {source.corpus!r} is empty: it has no text to train on{why}")
    if written["val"] == 0 and val_fraction > 0:
        # Too few (or only identical) pieces for the hash to pick one: the tail of training,
        # its share, is validation.
        tail = max(1, int(written["train"] * val_fraction))
        _move_tail(folder, tail, dtype)
        written["val"], written["train"] = tail, written["train"] - tail
    return Manifest(
        format=FORMAT, corpus=source.corpus, kind=source.kind, fingerprint=corpus_fingerprint,
        tokenizer=tokenizer, text_field=text_field, val_fraction=val_fraction,
        dtype=dtype.name, files=len(source.files), skipped=source.skipped + counts.skipped,
        bytes=total, documents=counts.documents, train_tokens=written["train"],
        val_tokens=written["val"], seconds=round(time.time() - started, 3),
        train_path="train.bin", val_path="val.bin")


def _builtin_bytes() -> bytes:
    from gptcore.corpus import builtin_text

    return builtin_text().encode("utf-8")


def _piece_chars(total_bytes: int) -> int:
    """About a thousand pieces for the split to choose from, each 256 B to 64 KiB: enough
    that a small corpus still gets its validation share, few enough to cost nothing."""
    return int(min(65536, max(256, total_bytes // 1000)))


def _move_tail(folder: Path, count: int, dtype: np.dtype) -> None:
    train = folder / "train.bin"
    size = train.stat().st_size
    with train.open("r+b") as f:
        f.seek(size - count * dtype.itemsize)
        tail = f.read()
        f.truncate(size - count * dtype.itemsize)
    (folder / "val.bin").write_bytes(tail)


def _nanogpt_manifest(source: Source, corpus_fingerprint: str, tok, dtype: np.dtype,
                      started: float) -> Manifest:
    counts = {}
    for f, split in zip(source.files, ("train", "val"), strict=True):
        if f.size % 2:
            raise GptdashError(f"{f.path} is {f.size} bytes, not a whole number of uint16 ids: "
                               "is it a nanoGPT prepared file?")
        top = _largest_id(f.path)
        if top >= tok.n_vocab:
            raise GptdashError(f"{f.path} holds id {top}, past the {tok.name} tokenizer's "
                               f"{tok.n_vocab} ids: name the tokenizer it was prepared with")
        counts[split] = f.size // 2
    if counts["train"] == 0:
        raise GptdashError(f"corpus {source.corpus!r} is empty: its train.bin has no ids")
    return Manifest(
        format=FORMAT, corpus=source.corpus, kind="nanogpt", fingerprint=corpus_fingerprint,
        tokenizer=tok.name, text_field="", val_fraction=0.0, dtype="uint16", files=2,
        skipped=[], bytes=source.total_bytes, documents=0, train_tokens=counts["train"],
        val_tokens=counts["val"], seconds=round(time.time() - started, 3),
        train_path=str(source.files[0].path.resolve()),
        val_path=str(source.files[1].path.resolve()))


def _largest_id(path: Path, chunk: int = 1 << 24) -> int:
    """The largest uint16 id in a file, -1 for none; read in 32 MB chunks, not mapped, so a
    10 GB file does not sit in this process's resident memory once scanned."""
    top = -1
    with path.open("rb") as f:
        while (ids := np.fromfile(f, dtype=np.uint16, count=chunk)).size:
            top = max(top, int(ids.max()))
    return top


def in_validation(text: str, val_fraction: float) -> bool:
    """Whether a piece belongs to the validation split: a seeded hash of its text, so the
    same on every machine and in every order."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=8, key=SPLIT_SEED).digest()
    return int.from_bytes(digest, "little") < val_fraction * 2**64


def _by_document(source: Source) -> bool:
    """Whether the split takes whole documents: yes, unless the corpus is a few text files
    (a book or three), whose documents are too few and too long to split by, so their
    pieces are the unit."""
    if source.kind == "builtin":
        return False
    few = len(source.files) < MIN_DOCUMENTS_TO_SPLIT_BY
    return not (few and all(f.kind == "text" for f in source.files))


def _split(stream: Iterator[Piece], val_fraction: float,
           by_document: bool) -> Iterator[Piece]:
    """Each piece with its split: its document's (decided by the document's first piece)
    or, not ``by_document``, its own."""
    split = None
    for piece in stream:
        if split is None or not by_document:
            split = "val" if in_validation(piece.text, val_fraction) else "train"
        piece.split = split
        yield piece
        if piece.last:
            split = None


def _encoded(stream: Iterator[Piece], tokenizer: str,
             parallel: bool) -> Iterator[list[tuple[str, np.ndarray]]]:
    """Batches of (split, ids) in the corpus's order, encoded on every core when
    ``parallel`` (bytes need no help)."""
    batches = _batches(stream)
    if tokenizer == "byte" or not parallel:
        for batch in batches:
            yield _encode_batch(batch, tokenizer)
        return
    workers = max(1, len(os.sched_getaffinity(0)))
    context = multiprocessing.get_context("forkserver")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context,
                                                initializer=_start_encoder,
                                                initargs=(os.getpid(),)) as pool:
        pending: list[concurrent.futures.Future] = []
        for batch in batches:
            pending.append(pool.submit(_encode_batch, batch, tokenizer))
            if len(pending) >= 2 * workers:  # bounded: a few MB of text in flight
                yield pending.pop(0).result()
        for future in pending:
            yield future.result()


def _start_encoder(preparer: int) -> None:
    """In each encoding process: Ctrl-C (sent to the terminal's whole process group) is the
    preparing process's to handle, and the process ends when the preparing one is gone (kill
    -9), which would otherwise leave it, and the forkserver, waiting for work forever."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_end_with, args=(preparer,), name="end-with-preparer",
                     daemon=True).start()


def _end_with(preparer: int) -> None:
    while pid_alive(preparer):
        time.sleep(0.5)
    os._exit(1)


def _batches(stream: Iterator[Piece]) -> Iterator[list[Piece]]:
    batch, size = [], 0
    for piece in stream:
        batch.append(piece)
        size += len(piece.text)
        if size >= BATCH_CHARS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _encode_batch(batch: list[Piece], tokenizer: str) -> list[tuple[str, np.ndarray]]:
    """Each piece's ids (with end-of-text after a document's last), by split; runs in an
    encoding process."""
    tok = get_tokenizer(tokenizer)
    out = []
    for piece in batch:
        ids = tok.encode_array(piece.text)
        if piece.last:
            ids = np.append(ids, np.asarray([tok.eot_id], dtype=ids.dtype))
        out.append((piece.split, ids))
    return out


class _Reporter:
    """Progress to the caller and to ``progress.json``, at most every half second."""

    def __init__(self, corpus: str, tokenizer: str, total: int, started: float, folder: Path,
                 progress: Callable[[Progress], None] | None):
        self.corpus, self.tokenizer, self.total, self.started = corpus, tokenizer, total, started
        self.folder, self.progress = folder, progress
        self.last = 0.0

    def __call__(self, counts: ReadCounts, tokens: int, final: bool = False) -> None:
        now = time.monotonic()
        if now - self.last < PROGRESS_EVERY_S and not final:
            return
        self.last = now
        state = Progress(self.corpus, self.tokenizer, counts.bytes_read, self.total, tokens,
                         counts.documents, self.started, os.getpid())
        with contextlib.suppress(OSError):
            tmp = self.folder / "progress.json.tmp"
            tmp.write_text(json.dumps(asdict(state)))
            os.replace(tmp, self.folder / "progress.json")
        if self.progress is not None:
            self.progress(state)


def _mb(n: int) -> str:
    if n >= 1e9:
        return f"{n / 1e9:.1f} GB"
    return f"{n / 1e6:.0f} MB" if n >= 1e7 else f"{n / 1e6:.1f} MB"
