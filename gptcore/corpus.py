"""What a corpus is on disk, and its documents, read as a stream.

A corpus is ``"builtin"`` (the English text of Python's reference topics, shipped with
CPython in ``pydoc_data.topics``, so nothing is downloaded) or a path to:

- a UTF-8 text file (any name), one document;
- a JSON Lines file (``.jsonl``/``.ndjson``): one document per line, its text in a field;
- a Parquet file (``.parquet``): one document per row, its text in a column;
- any of the text or JSON Lines files compressed with gzip (``.gz``) or zstd (``.zst``);
- a folder of any of these, read recursively in the order of their relative paths. Hidden
  files are left out; a file that is not text (a NUL byte in its first 8 KiB, or a name such
  as ``.png`` or ``.zip``) is skipped and counted, so a stray image does not end the run;
  a file that looks like text but is not valid UTF-8 is refused with its name and offset;
- a nanoGPT-style prepared pair: a folder holding ``train.bin`` and ``val.bin`` of uint16
  token ids (or the path of its ``train.bin``), used as they are with the tokenizer the run
  names.

Nothing here reads a corpus whole: documents stream in pieces of bounded size.
"""

from __future__ import annotations

import codecs
import gzip
import hashlib
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gptcore.errors import GptdashError

BUILTIN = "builtin"
DEFAULT_TEXT_FIELD = "text"
JSONL_SUFFIXES = {".jsonl", ".ndjson"}
PARQUET_SUFFIXES = {".parquet"}
COMPRESSED_SUFFIXES = {".gz", ".zst", ".zstd"}
# Names that are never text, skipped in a folder without opening them.
NOT_TEXT_SUFFIXES = {
    ".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".ico", ".pdf", ".zip", ".tar", ".7z",
    ".rar", ".bz2", ".xz", ".exe", ".so", ".dll", ".bin", ".npy", ".npz", ".pt", ".pkl",
    ".pyc", ".mp3", ".mp4", ".wav", ".db", ".sqlite"}
BINARY_PROBE = 8192  # a NUL byte in a file's first 8 KiB says it is not text
READ_BYTES = 1024**2
SAMPLE_BYTES = 4096  # read from each end of a file for its fingerprint
NANOGPT_FILES = ("train.bin", "val.bin")


@dataclass(frozen=True)
class CorpusFile:
    """One file of a corpus, with the stat that its fingerprint is made of."""

    path: Path
    rel: str  # its path inside the corpus, posix style: the reading order
    size: int
    mtime_ns: int

    @property
    def kind(self) -> str:
        """``text``, ``jsonl`` or ``parquet``, by its name (under any compression)."""
        suffixes = [s.lower() for s in self.path.suffixes]
        if suffixes and suffixes[-1] in COMPRESSED_SUFFIXES:
            suffixes = suffixes[:-1]
        last = suffixes[-1] if suffixes else ""
        if last in JSONL_SUFFIXES:
            return "jsonl"
        if last in PARQUET_SUFFIXES:
            return "parquet"
        return "text"


@dataclass
class Source:
    """A corpus found on disk: its kind and files, not yet read."""

    corpus: str
    kind: str  # builtin, files or nanogpt
    files: list[CorpusFile] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # not-text files of a folder, by rel

    @property
    def single(self) -> bool:
        """One file named by its own path, not a folder."""
        return self.kind == "files" and Path(self.corpus).is_file()

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def builtin_text() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name] for name in sorted(topics))


def find_source(corpus: str) -> Source:
    """The corpus's files by their names and stat alone (milliseconds): a GptdashError when
    it is missing or holds nothing to train on."""
    if corpus == BUILTIN:
        return Source(corpus, "builtin")
    p = Path(corpus)
    if p.is_file() and p.name == NANOGPT_FILES[0]:
        p = p.parent
    if p.is_dir() and all((p / name).is_file() for name in NANOGPT_FILES):
        return Source(corpus, "nanogpt", [_stat(p / name, p) for name in NANOGPT_FILES])
    if p.is_file():
        return Source(corpus, "files", [_stat(p, p.parent)])
    if not p.exists():
        raise GptdashError(f"corpus {corpus!r} does not exist")
    if not p.is_dir():
        raise GptdashError(f"corpus {corpus!r} is neither a file nor a folder")
    files, skipped = [], []
    for path in sorted(_walk(p), key=lambda q: q.relative_to(p).as_posix()):
        entry = _stat(path, p)
        (skipped if _not_text_by_name(path) else files).append(entry)
    if not files:
        raise GptdashError(f"corpus folder {corpus!r} has no text, JSON Lines or Parquet "
                           "files in it")
    return Source(corpus, "files", files, [f.rel for f in skipped])


def _walk(folder: Path) -> Iterator[Path]:
    """The folder's files, hidden ones and links left out: a link could lead anywhere the
    server can read, past the folders the pages offer."""
    for root, dirs, names in os.walk(folder):  # never into a linked folder
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        for name in names:
            path = Path(root) / name
            if not name.startswith(".") and not path.is_symlink() and path.is_file():
                yield path


def _stat(path: Path, root: Path) -> CorpusFile:
    st = path.stat()
    return CorpusFile(path, path.relative_to(root).as_posix() if path != root else path.name,
                      st.st_size, st.st_mtime_ns)


def _not_text_by_name(path: Path) -> bool:
    suffixes = [s.lower() for s in path.suffixes]
    return bool(suffixes) and suffixes[-1] in NOT_TEXT_SUFFIXES


def fingerprint(source: Source) -> str:
    """Which text a corpus is, from its files' names and sizes and samples of their bytes
    (the first, middle and last 4 KiB of each), never their whole content: a 10 GB corpus is
    fingerprinted in milliseconds. Modification times are left out, so a file restored by a
    copy is the same corpus again; the token cache adds them (``gptcore.tokens``), so a file
    saved anew is always tokenized anew. An edit that keeps a file's size and misses its
    samples goes unseen here."""
    h = hashlib.sha256()
    if source.kind == "builtin":
        h.update(builtin_text().encode("utf-8"))
        return h.hexdigest()
    h.update(source.kind.encode())
    for f in source.files:
        h.update(json.dumps([f.rel, f.size]).encode())
        with f.path.open("rb") as stream:
            for at in sorted({0, max(0, f.size // 2 - SAMPLE_BYTES // 2),
                              max(0, f.size - SAMPLE_BYTES)}):
                stream.seek(at)
                h.update(stream.read(SAMPLE_BYTES))
    return h.hexdigest()


# ---- reading -----------------------------------------------------------------------------

@dataclass
class Piece:
    """A stretch of one document's text; ``last`` when the document ends with it. Its
    ``split`` is set by whoever splits the corpus (``gptcore.tokens``)."""

    text: str
    last: bool
    split: str = "train"


@dataclass
class ReadCounts:
    """What reading has got through, for progress and the manifest."""

    bytes_read: int = 0  # of the files as stored (compressed bytes for .gz/.zst)
    documents: int = 0
    skipped: list[str] = field(default_factory=list)  # files found not to be text


def pieces(source: Source, text_field: str, piece_chars: int,
           counts: ReadCounts | None = None) -> Iterator[Piece]:
    """Every document of the corpus, in order, as pieces of about ``piece_chars`` characters
    cut at blank lines (a line end, or anywhere, for text without them): the units the
    validation split takes whole."""
    counts = counts if counts is not None else ReadCounts()
    if source.kind == "builtin":
        text = builtin_text()
        counts.bytes_read += len(text.encode("utf-8"))
        counts.documents += 1
        yield from _cut(text, piece_chars, last=True)
        return
    if source.kind == "nanogpt":
        raise GptdashError("a nanoGPT .bin pair holds token ids, not text to read")
    for f in source.files:
        if f.kind == "parquet":
            docs = _parquet_documents(f, text_field, counts)
        else:
            stream = _opened(f, counts)
            if stream is None and source.single:
                raise GptdashError(f"corpus {f.rel!r} looks binary (it has NUL bytes): choose "
                                   "a plain UTF-8 text, JSON Lines or Parquet file")
            if stream is None:
                counts.skipped.append(f.rel)
                counts.bytes_read += f.size
                continue
            with stream:
                if f.kind == "jsonl":
                    docs = _jsonl_documents(f, stream, text_field, counts)
                    yield from _documents_to_pieces(docs, piece_chars, counts)
                else:
                    yield from _text_pieces(f, stream, piece_chars, counts)
            continue
        yield from _documents_to_pieces(docs, piece_chars, counts)


def _documents_to_pieces(docs: Iterator[str], piece_chars: int,
                         counts: ReadCounts) -> Iterator[Piece]:
    for doc in docs:
        if doc.strip():
            counts.documents += 1
            yield from _cut(doc, piece_chars, last=True)


class _Counted(io.RawIOBase):
    """A binary file that counts the bytes read from it (the stored bytes, compressed or not)."""

    def __init__(self, raw, counts: ReadCounts):
        self.raw, self.counts = raw, counts

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.raw.readinto(buffer)
        self.counts.bytes_read += n or 0
        return n

    def close(self) -> None:
        self.raw.close()
        super().close()


class _Opened:
    """A corpus file opened for reading as decompressed bytes, closed with ``with``."""

    def __init__(self, f: CorpusFile, counts: ReadCounts):
        self.file = f
        raw = _Counted(f.path.open("rb"), counts)
        suffix = f.path.suffix.lower()
        if suffix == ".gz":
            self.stream = gzip.GzipFile(fileobj=io.BufferedReader(raw), mode="rb")
        elif suffix in (".zst", ".zstd"):
            import zstandard

            self.stream = zstandard.ZstdDecompressor().stream_reader(io.BufferedReader(raw))
        else:
            self.stream = io.BufferedReader(raw, READ_BYTES)
        self._raw = raw
        self.offset = 0  # decompressed bytes handed out so far

    def read(self, n: int = READ_BYTES) -> bytes:
        try:
            chunk = self.stream.read(n)
        except (OSError, EOFError, ValueError) as exc:  # gzip.BadGzipFile, zstd errors
            raise GptdashError(f"corpus file {self.file.rel!r} is not a valid "
                               f"{self.file.path.suffix} file: {exc}") from None
        self.offset += len(chunk)
        return chunk

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stream.close()
        self._raw.close()


def _opened(f: CorpusFile, counts: ReadCounts | None = None) -> _Opened | None:
    """The file opened, or None when its first 8 KiB (decompressed) hold a NUL byte."""
    probe = _Opened(f, ReadCounts())
    with probe:
        head = probe.read(BINARY_PROBE)
    if b"\x00" in head:
        return None
    return _Opened(f, counts if counts is not None else ReadCounts())


class Utf8Decoder:
    """Bytes to text chunk by chunk, naming what is read (``label``: "corpus file 'a.txt'")
    and the byte offset of a bad byte."""

    def __init__(self, label: str):
        self.label = label
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self.seen = 0  # bytes decoded so far

    def decode(self, chunk: bytes, final: bool = False) -> str:
        pending = len(self._decoder.getstate()[0])  # an earlier chunk's unfinished character
        try:
            text = self._decoder.decode(chunk, final)
        except UnicodeDecodeError as exc:
            raise GptdashError(
                f"{self.label} is not UTF-8 text (bad byte at offset "
                f"{self.seen - pending + exc.start}): save it as UTF-8 and try again") from None
        self.seen += len(chunk)
        return text


def _text_pieces(f: CorpusFile, stream: _Opened, piece_chars: int,
                 counts: ReadCounts) -> Iterator[Piece]:
    """A text file as one document; nothing at all when it holds only white space."""
    decoder = Utf8Decoder(f"corpus file {f.rel!r}")
    buffer, has_text = "", False
    while True:
        chunk = stream.read()
        buffer += decoder.decode(chunk, final=not chunk)
        if not chunk:
            break
        if b"\x00" in chunk:
            raise GptdashError(f"corpus file {f.rel!r} has NUL bytes past its start: it is "
                               "not plain text")
        has_text = has_text or bool(buffer.strip())
        while has_text and len(buffer) >= 2 * piece_chars:
            at = _cut_at(buffer, piece_chars)
            yield Piece(buffer[:at], last=False)
            buffer = buffer[at:]
    if has_text or buffer.strip():
        counts.documents += 1
        yield from _cut(buffer, piece_chars, last=True)


def _cut(text: str, piece_chars: int, last: bool) -> Iterator[Piece]:
    while len(text) >= 2 * piece_chars:
        at = _cut_at(text, piece_chars)
        yield Piece(text[:at], last=False)
        text = text[at:]
    yield Piece(text, last=last)


def _cut_at(text: str, piece_chars: int) -> int:
    """Where to end a piece of about ``piece_chars`` (never more than twice that): after a
    blank line, else a line end, else a space, else anywhere."""
    for mark in ("\n\n", "\n", " "):
        at = text.find(mark, piece_chars, 2 * piece_chars)
        if at >= 0:
            return at + len(mark)
    return piece_chars


def _jsonl_documents(f: CorpusFile, stream: _Opened, text_field: str,
                     counts: ReadCounts) -> Iterator[str]:
    decoder = Utf8Decoder(f"corpus file {f.rel!r}")
    text_stream = io.TextIOWrapper(io.BufferedReader(_Reader(stream, decoder)),
                                   encoding="utf-8", newline="\n")
    for number, line in enumerate(text_stream, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise GptdashError(f"corpus file {f.rel!r} line {number} is not JSON: {exc.msg}"
                               ) from None
        if not isinstance(row, dict) or text_field not in row:
            fields = ", ".join(list(row)[:8]) if isinstance(row, dict) else type(row).__name__
            raise GptdashError(f"corpus file {f.rel!r} line {number} has no field "
                               f"{text_field!r} (it has: {fields}): set text_field to the "
                               "field that holds the text")
        value = row[text_field]
        if not isinstance(value, str):
            raise GptdashError(f"corpus file {f.rel!r} line {number}: field {text_field!r} "
                               f"is {type(value).__name__}, not text")
        yield value


class _Reader(io.RawIOBase):
    """Raw bytes from an _Opened file, checked as UTF-8 on the way (with the offset)."""

    def __init__(self, stream: _Opened, decoder: Utf8Decoder):
        self.stream, self.decoder = stream, decoder

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        chunk = self.stream.read(len(buffer))
        self.decoder.decode(chunk, final=not chunk)
        buffer[: len(chunk)] = chunk
        return len(chunk)


def _parquet_documents(f: CorpusFile, text_field: str, counts: ReadCounts) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(f.path)
    except (pa.ArrowException, OSError) as exc:
        raise GptdashError(f"corpus file {f.rel!r} is not a Parquet file: {exc}") from None
    names = table.schema_arrow.names
    if text_field not in names:
        raise GptdashError(f"corpus file {f.rel!r} has no column {text_field!r} (its columns: "
                           f"{', '.join(names[:8])}): set text_field to the column that holds "
                           "the text")
    column_type = table.schema_arrow.field(text_field).type
    if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type)):
        raise GptdashError(f"corpus file {f.rel!r}: column {text_field!r} is {column_type}, "
                           "not text")
    rows = max(1, table.metadata.num_rows)
    done = 0
    for batch in table.iter_batches(batch_size=1024, columns=[text_field]):
        for value in batch.column(0).to_pylist():
            if value:
                yield value
        done += batch.num_rows
        counts.bytes_read += f.size * batch.num_rows // rows  # Parquet reads by row group


def preflight(source: Source, text_field: str, chars: int = READ_BYTES) -> None:
    """Read the corpus's first ``chars`` characters as training would: a missing field or
    column, a wrong format or bad UTF-8 at the start is refused before a run is queued (the
    rest is checked as it is tokenized)."""
    if source.kind == "nanogpt":
        for f in source.files:
            if f.size % 2:
                raise GptdashError(f"{f.path} is {f.size} bytes, not a whole number of uint16 "
                                   "ids: is it a nanoGPT prepared file?")
        return
    seen = 0
    for piece in pieces(source, text_field, piece_chars=chars):
        seen += len(piece.text)
        if seen >= chars:
            return
