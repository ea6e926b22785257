"""The corpora the pages offer, and what each holds: its size, documents and tokens, and
whether the shared token cache has it (tokenized, being tokenized, or not yet).

Everything here reads the files' stat, a few KiB of each (``gptcore.corpus.fingerprint``)
and the cache's manifests and progress files (``gptcore.tokens.prepared``/``in_progress``);
nothing tokenizes. A corpus not tokenized yet is tokenized by the worker that trains the
first run on it, which is never the pages' process.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from gptcore.corpus import (
    BUILTIN,
    COMPRESSED_SUFFIXES,
    JSONL_SUFFIXES,
    PARQUET_SUFFIXES,
    Source,
    builtin_text,
    find_source,
    fingerprint,
)
from gptcore.errors import GptdashError
from gptcore.tokens import Manifest, Progress, cache_key, in_progress, prepared
from ui.format import DASH, human_bytes_mb, human_count
from ui.paths import shown_path

TEXT_SUFFIXES = (".txt", ".md", ".text", ".csv", ".json", ".py", ".rst", ".html", ".xml")
# Files a page lists as corpora; any folder is listed too (a folder of them, or a nanoGPT
# train.bin/val.bin pair).
CORPUS_SUFFIXES = frozenset({*TEXT_SUFFIXES, *JSONL_SUFFIXES, *PARQUET_SUFFIXES,
                             *COMPRESSED_SUFFIXES})
BUILTIN_LABEL = "built-in: Python reference docs"
NOT_YET = "not tokenized yet"
FORMATS = {"text": "text", "jsonl": "JSON Lines", "parquet": "Parquet"}


def offered(folders: Iterable[Path]) -> list[str]:
    """The built-in text, then the corpus files and folders directly inside each of
    ``folders`` (uploads/ and data/), by name. Hidden names (an upload on its way) and
    links that lead out of their folder are left out: ``ui.uploads.page_corpus_problem``
    would refuse them."""
    found = [BUILTIN]
    for folder in folders:
        inside = folder.resolve()
        for path in sorted(folder.iterdir()) if folder.is_dir() else []:
            if path.name.startswith(".") or not path.resolve().is_relative_to(inside):
                continue
            if path.is_dir() or (path.is_file() and path.suffix.lower() in CORPUS_SUFFIXES):
                found.append(str(path))
    return found


@dataclass
class Corpus:
    """One corpus as the pages see it: its files (or why it cannot be read), and the token
    cache's tokenizations of exactly this text (same fingerprint) and those under way."""

    corpus: str
    source: Source | None
    problem: str | None = None  # why it cannot be read (missing, empty folder, …)
    manifests: list[Manifest] = field(default_factory=list)  # newest first
    preparing: list[Progress] = field(default_factory=list)

    @property
    def size(self) -> int | None:
        """Bytes as stored (compressed files count compressed)."""
        if self.source is None:
            return None
        return builtin_bytes() if self.source.kind == "builtin" else self.source.total_bytes

    @property
    def compressed(self) -> bool:
        """Whether its size understates its text (gzip, zstd, Parquet)."""
        return self.source is not None and any(
            f.path.suffix.lower() in COMPRESSED_SUFFIXES or f.kind == "parquet"
            for f in self.source.files)

    def manifest(self, tokenizer: str) -> Manifest | None:
        """The newest tokenization with ``tokenizer``, any split."""
        return next((m for m in self.manifests if m.tokenizer == tokenizer), None)


@functools.cache
def builtin_bytes() -> int:
    return len(builtin_text().encode("utf-8"))


def look(corpus: str, manifests: list[Manifest], progress: list[Progress]) -> Corpus:
    """What the cache knows of ``corpus``, from ``manifests`` (``tokens.prepared``) and
    ``progress`` (``tokens.in_progress``). A manifest counts when its cache key is the
    files' now (fingerprint and modification times): a file edited, or only saved again,
    since it was tokenized is not tokenized yet, as the next run will find."""
    try:
        source = find_source(corpus)
        print_ = fingerprint(source)
    except (GptdashError, OSError) as exc:
        return Corpus(corpus, None, problem=str(exc))
    return Corpus(corpus, source,
                  manifests=[m for m in manifests if m.fingerprint == print_ and m.key
                             == cache_key(source, print_, m.tokenizer, m.text_field,
                                          m.val_fraction)],
                  preparing=[p for p in progress if same_corpus(p.corpus, corpus)])


def look_all(corpora: Iterable[str], cache_dir: Path) -> dict[str, Corpus]:
    """``look`` at each corpus, reading the cache's manifests and progress files once."""
    manifests, progress = prepared(cache_dir), in_progress(cache_dir)
    return {c: look(c, manifests, progress) for c in dict.fromkeys(corpora)}


def same_corpus(a: str, b: str) -> bool:
    """Whether two corpus values name the same corpus (a path written two ways)."""
    if a == b:
        return True
    if BUILTIN in (a, b):
        return False
    try:
        return Path(a).resolve() == Path(b).resolve()
    except (OSError, RuntimeError, ValueError):
        return False


def progress_for(corpus: str, tokenizer: str, progress: list[Progress]) -> Progress | None:
    """The preparation under way of ``corpus`` with ``tokenizer``, if one is."""
    return next((p for p in progress
                 if p.tokenizer == tokenizer and same_corpus(p.corpus, corpus)), None)


def label(corpus: str) -> str:
    """How a corpus is named on a page: ``uploads/big.txt``, the built-in text, or a path."""
    if corpus == BUILTIN:
        return BUILTIN_LABEL
    path = Path(corpus)
    return f"{path.parent.name}/{path.name}" if path.exists() else shown_path(corpus)


def option_label(c: Corpus) -> str:
    """The corpus picker's line: ``uploads/big.txt (1.2 MB)``."""
    size = c.size
    return label(c.corpus) + (f" ({_size(size)})" if size is not None else "")


def kind(c: Corpus) -> str:
    """``text``, ``JSON Lines (gzip)``, ``folder: 12 files (1 skipped)``, …"""
    source = c.source
    if source is None:
        return DASH
    if source.kind == "builtin":
        return "built-in text"
    if source.kind == "nanogpt":
        return "nanoGPT train.bin/val.bin"
    if source.single:
        f = source.files[0]
        packed = {".gz": " (gzip)", ".zst": " (zstd)", ".zstd": " (zstd)"}
        return FORMATS[f.kind] + packed.get(f.path.suffix.lower(), "")
    skipped = f" ({len(source.skipped)} skipped)" if source.skipped else ""
    n = len(source.files)
    return f"folder: {n:,} file{'s' if n != 1 else ''}{skipped}"


def state(c: Corpus) -> str:
    """``tokenized: gpt2, byte``, ``tokenizing 45% (gpt2)``, ``not tokenized yet``, or why
    it cannot be read."""
    if c.problem is not None:
        return c.problem
    parts = [f"tokenizing {p.fraction:.0%} ({p.tokenizer})" for p in c.preparing]
    done = list(dict.fromkeys(m.tokenizer for m in c.manifests))
    if done:
        parts.insert(0, "tokenized: " + ", ".join(done))
    return "; ".join(parts) or NOT_YET


def table_rows(corpora: Iterable[Corpus]) -> list[dict[str, str]]:
    """One row per corpus for the pages' corpora table (plain strings, shown as text)."""
    rows = []
    for c in corpora:
        tokens = {m.tokenizer: m.tokens for m in reversed(c.manifests)}  # newest wins
        documents = [m.documents for m in c.manifests if m.kind != "nanogpt"]
        rows.append({  # what a person looks for first, first: a narrow table cuts the last
            "corpus": label(c.corpus),
            "state": state(c),
            "size": _size(c.size),
            "documents": f"{documents[0]:,}" if documents else DASH,
            "tokens": " · ".join(f"{human_count(n)} ({name})" for name, n in tokens.items())
                      or DASH,
            "kind": kind(c),
        })
    return rows


def _size(n: int | None) -> str:
    return DASH if n is None else human_bytes_mb(n / 1024**2)
