"""The corpora the pages offer and what the token cache knows of each, without tokenizing."""

import gzip
import json
import os
import time

import numpy as np

from gptcore.corpus import BUILTIN
from gptcore.tokens import Progress, prepare
from ui.corpora import (
    BUILTIN_LABEL,
    NOT_YET,
    kind,
    look,
    look_all,
    offered,
    option_label,
    progress_for,
    table_rows,
)

TEXT = "A short document about tokens.\n\n" * 200


def _progress(corpus: str, tokenizer: str = "gpt2", read: int = 450, total: int = 1000):
    return Progress(corpus, tokenizer, read, total, tokens=12_000, documents=3,
                    started=time.time() - 10, pid=os.getpid())


def test_the_pages_offer_the_builtin_text_then_corpus_files_and_folders_by_name(tmp_path):
    uploads, data = tmp_path / "uploads", tmp_path / "data"
    (data / "owt").mkdir(parents=True)
    uploads.mkdir()
    for name in ("b.txt", "a.jsonl", "c.parquet", "d.txt.zst", "e.ndjson.gz", "photo.png",
                 ".1234.upload"):
        (uploads / name).write_bytes(b"x")
    (data / "notes.md").write_text("x")
    (data / "elsewhere").symlink_to(tmp_path)  # a link out of data/: never offered
    assert offered([uploads, data, tmp_path / "missing"]) == [
        BUILTIN, *(str(uploads / n) for n in ("a.jsonl", "b.txt", "c.parquet", "d.txt.zst",
                                              "e.ndjson.gz")),
        str(data / "notes.md"), str(data / "owt")]


def test_a_tokenized_corpus_shows_its_documents_tokens_and_tokenizers(tmp_path):
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"document {i} " * 50}) + "\n"
                              for i in range(30)))
    cache = tmp_path / "cache"
    ready = prepare(str(corpus), "byte", cache, 0.1)
    [row] = table_rows(look_all([str(corpus)], cache).values())
    assert row == {"corpus": f"{tmp_path.name}/docs.jsonl", "kind": "JSON Lines",
                   "size": "0.02 MB", "documents": "30",
                   "tokens": f"{ready.manifest.tokens / 1000:.3g} k (byte)",
                   "state": "tokenized: byte"}


def test_a_corpus_edited_since_it_was_tokenized_is_not_tokenized_yet(tmp_path):
    corpus = tmp_path / "a.txt"
    corpus.write_text(TEXT)
    cache = tmp_path / "cache"
    prepare(str(corpus), "byte", cache, 0.1)
    corpus.write_text(TEXT + "One more line.\n")
    [row] = table_rows(look_all([str(corpus)], cache).values())
    assert (row["state"], row["tokens"], row["documents"]) == (NOT_YET, "—", "—")


def test_a_corpus_saved_again_unchanged_shows_as_the_next_run_finds_it(tmp_path):
    """Saved again with the same bytes (a new modification time): the next run tokenizes it
    anew, so the page does not say it is tokenized; prepared again, it is."""
    corpus = tmp_path / "a.txt"
    corpus.write_text(TEXT)
    cache = tmp_path / "cache"
    prepare(str(corpus), "byte", cache, 0.1)
    stat = corpus.stat()
    os.utime(corpus, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    [row] = table_rows(look_all([str(corpus)], cache).values())
    assert row["state"] == NOT_YET
    prepare(str(corpus), "byte", cache, 0.1)
    [row] = table_rows(look_all([str(corpus)], cache).values())
    assert row["state"] != NOT_YET


def test_a_corpus_being_tokenized_shows_how_far_it_has_got(tmp_path):
    corpus = tmp_path / "big.txt"
    corpus.write_text(TEXT)
    # The same file written another way, as a run's config may name it.
    under_way = [_progress(str(tmp_path / "." / "big.txt")), _progress("builtin", "byte")]
    c = look(str(corpus), [], under_way)
    assert table_rows([c])[0]["state"] == "tokenizing 45% (gpt2)"
    assert progress_for(str(corpus), "gpt2", under_way) is under_way[0]
    assert progress_for(str(corpus), "byte", under_way) is None  # another tokenizer's
    assert progress_for(BUILTIN, "byte", under_way) is under_way[1]


def test_preparations_under_way_are_read_from_the_cache_folder(tmp_path):
    corpus = tmp_path / "big.txt"
    corpus.write_text(TEXT)
    cache = tmp_path / "cache"
    folder = cache / "tokens-abc-gpt2.123-x.tmp"
    folder.mkdir(parents=True)
    state = _progress(str(corpus), read=900, total=1000)
    (folder / "progress.json").write_text(json.dumps(state.__dict__))
    [c] = look_all([str(corpus)], cache).values()
    assert table_rows([c])[0]["state"] == "tokenizing 90% (gpt2)"


def test_kinds_sizes_and_problems_read_as_a_person_names_them(tmp_path):
    packed = tmp_path / "docs.jsonl.gz"
    packed.write_bytes(gzip.compress(b'{"text": "a"}\n'))
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "a.txt").write_text("text")
    (folder / "b.md").write_text("text")
    (folder / "logo.png").write_bytes(b"\x89PNG")
    pair = tmp_path / "shakespeare"
    pair.mkdir()
    for name in ("train.bin", "val.bin"):
        np.arange(10, dtype=np.uint16).tofile(pair / name)
    empty = tmp_path / "empty"
    empty.mkdir()
    looks = look_all([BUILTIN, str(packed), str(folder), str(pair), str(empty)],
                     tmp_path / "cache")
    assert [kind(c) for c in looks.values()] == [
        "built-in text", "JSON Lines (gzip)", "folder: 2 files (1 skipped)",
        "nanoGPT train.bin/val.bin", "—"]
    assert option_label(looks[BUILTIN]) == f"{BUILTIN_LABEL} (0.44 MB)"
    assert option_label(looks[str(pair)]) == f"{tmp_path.name}/shakespeare (0.00 MB)"
    row = table_rows([looks[str(empty)]])[0]
    assert "has no text, JSON Lines or Parquet files" in row["state"]
    assert looks[str(packed)].compressed and not looks[str(folder)].compressed
