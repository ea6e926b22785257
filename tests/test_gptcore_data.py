"""Corpora: the built-in one, files, caching, clear errors on bad input."""

import numpy as np
import pytest
import torch

from gptcore.corpus import find_source
from gptcore.data import BUILTIN, TokenData, builtin_text, check_corpus, load_data
from gptcore.errors import GptdashError
from gptcore.tokens import lookup, prepare


def test_builtin_corpus_is_english_text_from_the_standard_library():
    text = builtin_text()
    assert len(text) > 100_000
    assert "assert" in text and "statement" in text


def test_token_ids_are_cached_and_memory_mapped(tmp_path):
    ids = prepare(BUILTIN, "byte", tmp_path, 0.1)
    assert isinstance(ids.train, np.memmap) and isinstance(ids.val, np.memmap)
    assert len(list(tmp_path.glob("tokens-*-byte/train.bin"))) == 1
    again = lookup(BUILTIN, "byte", tmp_path, 0.1)
    assert again is not None and np.array_equal(ids.train[:1000], again.train[:1000])


def test_the_byte_ids_are_the_texts_bytes_with_a_document_end(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("hello world")
    ready = prepare(str(f), "byte", tmp_path / "c", 0.1)
    ids = np.concatenate([ready.train, ready.val])
    assert bytes(ids[:-1].astype(np.uint8)) == b"hello world" and ids[-1] == 0  # NUL ends it


def test_cache_is_per_content_and_tokenizer(tmp_path):
    a = tmp_path / "a.txt"
    a.write_text("hello world " * 100)
    prepare(str(a), "byte", tmp_path / "c", 0.1)
    prepare(str(a), "gpt2", tmp_path / "c", 0.1)
    a.write_text("other text " * 100)
    prepare(str(a), "byte", tmp_path / "c", 0.1)
    assert len(list((tmp_path / "c").glob("tokens-*/manifest.json"))) == 3


def test_split_and_windows(tmp_path):
    data = load_data(BUILTIN, "byte", 0.1, tmp_path)
    assert len(data.val) == pytest.approx(0.1 * (len(data.train) + len(data.val)), rel=0.15)
    x, y = data.batch("train", 4, 16, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 16)
    assert torch.equal(x[:, 1:], y[:, :-1])  # y is x shifted by one


@pytest.mark.parametrize(
    "content, message",
    [(b"", "is empty"), (b"   \n", "is empty"), (b"\x89PNG\r\n\x1a\n\x00\x00\x00", "looks binary"),
     (b"caf\xe9 latin-1", "is not UTF-8")],
)
def test_bad_corpus_files_are_clear_errors(tmp_path, content, message):
    f = tmp_path / "bad.txt"
    f.write_bytes(content)
    with pytest.raises(GptdashError, match=message):
        prepare(str(f), "byte", tmp_path / "c", 0.1)
    assert not list((tmp_path / "c").glob("tokens-*/manifest.json"))  # nothing cached


def test_missing_corpus_file(tmp_path):
    with pytest.raises(GptdashError, match="does not exist"):
        prepare(str(tmp_path / "nope.txt"), "byte", tmp_path, 0.1)


def test_corpus_too_short_for_context(tmp_path):
    f = tmp_path / "short.txt"
    f.write_text("just a few words here, not many at all " * 3)
    data = load_data(str(f), "byte", 0.1, tmp_path)
    with pytest.raises(GptdashError, match="too few for context_length 64"):
        data.check_context(64)


@pytest.mark.parametrize("val_fraction, split, hint", [
    (0.1, "training", "lower val_fraction"),  # more training tokens: a smaller val share
    (0.01, "validation", "raise val_fraction"),
])
def test_a_split_too_short_says_which_way_to_move_val_fraction(tmp_path, val_fraction,
                                                               split, hint):
    f = tmp_path / "short.txt"
    f.write_text("x" * (20 if split == "training" else 2000))
    data = load_data(str(f), "byte", val_fraction, tmp_path)
    with pytest.raises(GptdashError, match=f"{split} tokens.*{hint}"):
        data.check_context(64)


def test_check_corpus_refuses_a_short_corpus_before_a_run_is_queued(tmp_path):
    f = tmp_path / "short.txt"
    f.write_text("a few words " * 3)
    with pytest.raises(GptdashError, match="too few for context_length 64"):
        check_corpus(str(f), "byte", 0.1, tmp_path / "c", 64)


def test_a_run_queued_for_a_worker_leaves_a_large_corpus_for_the_worker_to_tokenize(tmp_path):
    """The pages queue runs: a corpus past a megabyte is only checked there, never tokenized
    in the pages' process; a foreground run (trains_here) tokenizes it at once."""
    f = tmp_path / "big.txt"
    f.write_text("Enough words to pass a megabyte of text in this corpus file. " * 20_000)
    cache = tmp_path / "c"
    check_corpus(str(f), "byte", 0.1, cache, 64)
    assert lookup(str(f), "byte", cache, 0.1) is None
    check_corpus(str(f), "byte", 0.1, cache, 64, trains_here=True)
    assert lookup(str(f), "byte", cache, 0.1) is not None


def test_a_large_corpus_with_a_bad_start_is_refused_before_it_is_queued(tmp_path):
    f = tmp_path / "docs.jsonl"
    f.write_text('{"body": "no text field here"}\n' * 50_000)
    with pytest.raises(GptdashError, match=r"line 1 has no field 'text' \(it has: body\)"):
        check_corpus(str(f), "byte", 0.1, tmp_path / "c", 64)


def test_a_folder_corpus_leaves_out_links_and_hidden_files(tmp_path):
    outside = tmp_path / "secret.txt"
    outside.write_text("a file the pages must never offer")
    folder = tmp_path / "corpus"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("one")
    (folder / "sub" / "b.txt").write_text("two")
    (folder / ".hidden.txt").write_text("hidden")
    (folder / "link.txt").symlink_to(outside)
    (folder / "linked").symlink_to(tmp_path, target_is_directory=True)
    assert [f.rel for f in find_source(str(folder)).files] == ["a.txt", "sub/b.txt"]


def test_batches_from_a_token_file_are_read_not_kept_mapped(tmp_path):
    """Windows of a memory-mapped token file are read with pread, so the pages a run
    touched do not stay resident in it; a slice of a map (no file offset of its own) is
    sliced. Both give the windows of the ids."""
    data = load_data(BUILTIN, "byte", 0.1, tmp_path)
    assert isinstance(data.train, np.memmap)
    x, _ = data.batch("train", 8, 32, torch.Generator().manual_seed(3))
    starts = torch.randint(len(data.train) - 33, (8,),
                           generator=torch.Generator().manual_seed(3)).tolist()
    expected = np.stack([np.asarray(data.train[s:s + 32]) for s in starts]).astype(np.int64)
    assert torch.equal(x, torch.from_numpy(expected))
    assert list(data._fds) == [data.train.filename]  # read through the file
    sliced = TokenData(train=data.train[1000:], val=data.val, corpus_fingerprint="")
    x, _ = sliced.batch("train", 8, 32, torch.Generator().manual_seed(3))
    starts = torch.randint(len(sliced.train) - 33, (8,),
                           generator=torch.Generator().manual_seed(3)).tolist()
    expected = np.stack([np.asarray(data.train[1000 + s:1000 + s + 32]) for s in starts])
    assert torch.equal(x, torch.from_numpy(expected.astype(np.int64)))


def test_a_long_document_goes_whole_to_one_split(tmp_path):
    """Documents, not their pieces, are the split's unit (once there are enough of them)."""
    import json

    rng = np.random.default_rng(0)
    words = builtin_text().split()
    docs = [" ".join(rng.choice(words, 3000 if i == 7 else 60)) for i in range(300)]
    f = tmp_path / "docs.jsonl"
    f.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    ready = prepare(str(f), "byte", tmp_path / "c", 0.1)
    long_doc = docs[7].encode()
    in_train = long_doc in bytes(np.asarray(ready.train, dtype=np.uint8))
    in_val = long_doc in bytes(np.asarray(ready.val, dtype=np.uint8))
    assert in_train != in_val  # all of it in exactly one split
