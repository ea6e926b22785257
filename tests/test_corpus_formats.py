"""Every corpus format as a user brings it: what is read, in which order, what is refused
with which line, and how documents and the validation split come out."""

import gzip
import json
import random

import numpy as np
import pytest

from gptcore.corpus import find_source, pieces
from gptcore.errors import GptdashError
from gptcore.tokenizer import ENDOFTEXT_ID, get_tokenizer
from gptcore.tokens import in_progress, lookup, prepare, prepared


def ids_of(ready) -> np.ndarray:
    return np.concatenate([np.asarray(ready.train), np.asarray(ready.val)])


def documents_of(ids: np.ndarray) -> list[str]:
    """Byte-tokenized ids back to their documents (the byte tokenizer ends each with 0)."""
    text = bytes(ids.astype(np.uint8)).decode("utf-8")
    assert text.endswith("\x00")
    return text[:-1].split("\x00")


def assert_nothing_cached(cache) -> None:
    """Nothing a run could read: no prepared folder, no temporary one left behind."""
    assert prepared(cache) == []
    assert [p.name for p in cache.glob("tokens-*") if p.is_dir()] == []


def jsonl(path, rows) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def test_a_folder_is_read_recursively_in_the_order_of_its_paths(tmp_path):
    corpus = tmp_path / "corpus"
    for rel, text in [("b/2.txt", "two"), ("a/1.md", "one"), ("c.txt", "three"),
                      ("a/0/deep.txt", "zero"), (".hidden.txt", "hidden"),
                      (".git/config.txt", "git"), ("a/.notes.txt", "notes")]:
        (corpus / rel).parent.mkdir(parents=True, exist_ok=True)
        (corpus / rel).write_text(text)
    source = find_source(str(corpus))
    assert [f.rel for f in source.files] == ["a/0/deep.txt", "a/1.md", "b/2.txt", "c.txt"]
    texts = [p.text for p in pieces(source, "text", 1000)]
    assert texts == ["zero", "one", "two", "three"]


def test_a_binary_file_in_a_folder_is_skipped_and_counted(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("some text " * 50)
    (corpus / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    (corpus / "blob.dat").write_bytes(b"abc\x00\x01\x02" * 100)  # a NUL byte: not text
    ready = prepare(str(corpus), "byte", tmp_path / "cache", 0.1)
    assert sorted(ready.manifest.skipped) == ["blob.dat", "image.png"]
    assert ready.manifest.documents == 1
    assert ready.manifest.tokens == len("some text " * 50) + 1  # and its end-of-text


def test_a_single_binary_file_is_refused(tmp_path):
    path = tmp_path / "data.dat"
    path.write_bytes(b"abc\x00" * 100)
    with pytest.raises(GptdashError, match=r"looks binary \(it has NUL bytes\)"):
        prepare(str(path), "byte", tmp_path / "cache", 0.1)
    assert_nothing_cached(tmp_path / "cache")


def test_jsonl_reads_the_named_field_one_document_a_line(tmp_path):
    path = tmp_path / "docs.jsonl"
    docs = [f"document number {i} " * 5 for i in range(20)]
    jsonl(path, [{"body": d, "id": i} for i, d in enumerate(docs)])
    ready = prepare(str(path), "byte", tmp_path / "cache", 0.2, text_field="body")
    assert ready.manifest.documents == 20
    assert sorted(documents_of(ids_of(ready))) == sorted(docs)


def test_a_jsonl_line_without_the_field_is_one_line_with_the_file_and_line(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    jsonl(folder / "shard.jsonl", [{"text": "fine"}, {"text": "also fine"}, {"body": "no"}])
    with pytest.raises(GptdashError) as err:
        prepare(str(folder), "byte", tmp_path / "cache", 0.1)
    message = str(err.value)
    assert "\n" not in message
    assert message.startswith("corpus file 'shard.jsonl' line 3 has no field 'text' (it has: "
                              "body): set text_field")
    assert_nothing_cached(tmp_path / "cache")


def test_parquet_reads_the_named_column_and_names_a_missing_one(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "shard.parquet"
    docs = [f"parquet row {i} says hello" for i in range(30)]
    pq.write_table(pa.table({"content": docs, "n": list(range(30))}), path, row_group_size=8)
    ready = prepare(str(path), "byte", tmp_path / "cache", 0.2, text_field="content")
    assert ready.manifest.documents == 30
    assert sorted(documents_of(ids_of(ready))) == sorted(docs)
    with pytest.raises(GptdashError) as err:
        prepare(str(path), "byte", tmp_path / "other", 0.2)
    assert str(err.value) == ("corpus file 'shard.parquet' has no column 'text' (its columns: "
                              "content, n): set text_field to the column that holds the text")
    assert_nothing_cached(tmp_path / "other")


@pytest.mark.parametrize("kind", ["txt", "jsonl"])
def test_gzip_and_zstd_read_as_their_plain_file(tmp_path, kind):
    zstandard = pytest.importorskip("zstandard")
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "épsilon", "数据"]
    docs = [" ".join(rng.choice(words) for _ in range(200)) for _ in range(40)]
    raw = ("\n\n".join(docs) if kind == "txt"
           else "".join(json.dumps({"text": d}) + "\n" for d in docs)).encode("utf-8")
    plain = tmp_path / f"c.{kind}"
    plain.write_bytes(raw)
    (tmp_path / f"c.{kind}.gz").write_bytes(gzip.compress(raw))
    (tmp_path / f"c.{kind}.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    expected = prepare(str(plain), "gpt2", tmp_path / "cache", 0.1)
    for suffix in ("gz", "zst"):
        ready = prepare(str(tmp_path / f"c.{kind}.{suffix}"), "gpt2", tmp_path / "cache", 0.1)
        assert ready.manifest.documents == expected.manifest.documents
        assert np.array_equal(ready.train, expected.train)
        assert np.array_equal(ready.val, expected.val)


def test_a_corrupt_gzip_file_is_one_line(tmp_path):
    path = tmp_path / "c.txt.gz"
    path.write_bytes(gzip.compress(b"hello world " * 1000)[:40])
    with pytest.raises(GptdashError, match=r"corpus file 'c.txt.gz' is not a valid .gz file"):
        prepare(str(path), "byte", tmp_path / "cache", 0.1)
    assert_nothing_cached(tmp_path / "cache")


@pytest.mark.parametrize("at", [6, 3 * 1024**2 + 5])
def test_invalid_utf8_in_a_folder_names_the_file_and_byte_offset(tmp_path, at):
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "good.txt").write_text("fine text")
    (folder / "sub" / "bad.txt").write_bytes(b"x" * at + b"\xff and more text")
    with pytest.raises(GptdashError) as err:
        prepare(str(folder), "byte", tmp_path / "cache", 0.1)
    assert str(err.value) == (f"corpus file 'sub/bad.txt' is not UTF-8 text (bad byte at offset "
                              f"{at}): save it as UTF-8 and try again")
    assert_nothing_cached(tmp_path / "cache")


def test_invalid_utf8_in_a_jsonl_file_names_it(tmp_path):
    path = tmp_path / "docs.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "bad \xc3\x28"}\n')
    with pytest.raises(GptdashError, match=r"corpus file 'docs.jsonl' is not UTF-8 text \(bad "
                                           r"byte at offset 29\)"):
        prepare(str(path), "byte", tmp_path / "cache", 0.1)


@pytest.mark.parametrize("files", [{"empty.txt": ""}, {"a.txt": "  \n\n ", "b.txt": "\n"},
                                   {"docs.jsonl": '{"text": ""}\n{"text": "   "}\n'}])
def test_an_empty_corpus_is_refused_and_nothing_is_cached(tmp_path, files):
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    with pytest.raises(GptdashError, match=r"corpus '.*corpus' is empty: it has no text to "
                                           r"train on"):
        prepare(str(folder), "byte", tmp_path / "cache", 0.1)
    assert_nothing_cached(tmp_path / "cache")


def test_a_folder_of_nothing_but_binary_files_is_refused(tmp_path):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"\x89PNG")
    with pytest.raises(GptdashError, match="has no text, JSON Lines or Parquet files in it"):
        prepare(str(folder), "byte", tmp_path / "cache", 0.1)


def write_pair(folder, train, val) -> None:
    folder.mkdir()
    np.asarray(train, dtype=np.uint16).tofile(folder / "train.bin")
    np.asarray(val, dtype=np.uint16).tofile(folder / "val.bin")


def test_a_nanogpt_pair_is_used_where_it_lies(tmp_path):
    rng = np.random.default_rng(0)
    train, val = rng.integers(0, 50257, 5000), rng.integers(0, 50257, 600)
    write_pair(tmp_path / "owt", train, val)
    cache = tmp_path / "cache"
    for corpus in (tmp_path / "owt", tmp_path / "owt" / "train.bin"):
        ready = prepare(str(corpus), "gpt2", cache, 0.1)
        assert np.array_equal(ready.train, train) and np.array_equal(ready.val, val)
        assert ready.manifest.kind == "nanogpt"
        assert ready.manifest.train_path == str((tmp_path / "owt" / "train.bin").resolve())
    # Only a manifest in the cache (one: the folder and its train.bin are one corpus), the
    # ids are not copied.
    assert [p.name for p in cache.rglob("*") if p.is_file()
            and p.suffix != ".lock"] == ["manifest.json"]
    assert lookup(str(tmp_path / "owt"), "gpt2", cache, 0.1) is not None


def test_a_nanogpt_pair_past_the_tokenizers_ids_is_refused(tmp_path):
    write_pair(tmp_path / "owt", [1, 2, 300, 4] * 100, [5, 6] * 50)
    with pytest.raises(GptdashError) as err:
        prepare(str(tmp_path / "owt"), "byte", tmp_path / "cache", 0.1)
    assert str(err.value) == (f"{tmp_path / 'owt' / 'train.bin'} holds id 300, past the byte "
                              "tokenizer's 256 ids: name the tokenizer it was prepared with")
    assert_nothing_cached(tmp_path / "cache")


@pytest.mark.parametrize("tokenizer", ["byte", "gpt2"])
def test_documents_are_separated_by_the_end_of_text_id(tmp_path, tokenizer):
    docs = ["first document.", "second <|endoftext|> one", "third"]
    jsonl(tmp_path / "docs.jsonl", [{"text": d} for d in docs])
    ready = prepare(str(tmp_path / "docs.jsonl"), tokenizer, tmp_path / "cache", 0.3)
    tok = get_tokenizer(tokenizer)
    ids = ids_of(ready)
    # One end-of-text per document, each at a document's end: the literal text
    # "<|endoftext|>" inside a document is ordinary text, never the id.
    assert int((ids == tok.eot_id).sum()) == 3
    assert tok.eot_id == (ENDOFTEXT_ID if tokenizer == "gpt2" else 0)
    assert ids[-1] == tok.eot_id


def test_the_validation_split_takes_whole_documents_reproducibly(tmp_path):
    docs = [f"doc {i}: " + "words " * (i % 7 + 1) for i in range(300)]
    jsonl(tmp_path / "a.jsonl", [{"text": d} for d in docs])
    shuffled = docs[:]
    random.Random(1).shuffle(shuffled)
    jsonl(tmp_path / "b.jsonl", [{"text": d} for d in shuffled])
    first = prepare(str(tmp_path / "a.jsonl"), "byte", tmp_path / "one", 0.2)
    again = prepare(str(tmp_path / "a.jsonl"), "byte", tmp_path / "two", 0.2)
    assert np.array_equal(first.train, again.train) and np.array_equal(first.val, again.val)
    val_docs = documents_of(np.asarray(first.val))
    assert set(val_docs) <= set(docs)  # whole documents, never a document's tail
    assert 0.1 < len(val_docs) / len(docs) < 0.3
    assert set(documents_of(np.asarray(first.train))) == set(docs) - set(val_docs)
    other_order = prepare(str(tmp_path / "b.jsonl"), "byte", tmp_path / "one", 0.2)
    assert sorted(documents_of(np.asarray(other_order.val))) == sorted(val_docs)


def test_a_preparation_left_by_a_killed_process_is_not_under_way(tmp_path):
    cache = tmp_path / "cache"
    left = cache / "tokens-abc-byte.999999999-deadbeef.tmp"
    left.mkdir(parents=True)
    (left / "progress.json").write_text(json.dumps(
        {"corpus": "c", "tokenizer": "byte", "bytes_read": 1, "bytes_total": 2, "tokens": 1,
         "documents": 0, "started": 0.0, "pid": 999999999}))
    assert in_progress(cache) == []
