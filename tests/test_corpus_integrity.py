"""A corpus never changes under a run: uploads never overwrite one, a run records its corpus's
fingerprint, and a resume on other text is refused in one line with nothing written."""

import gzip
import hashlib
import io
import threading

import pytest
from test_cli import gptdash
from test_jobs import micro

from gptcore.config import CORPUS_FINGERPRINT, CORPUS_SHA256, TrainConfig
from gptcore.corpus import find_source, fingerprint
from gptcore.errors import GptdashError
from jobs import actions, runner
from jobs.manager import claim_here
from storage import home as home_folder
from storage.status import RunStatus
from ui.uploads import CHUNK_BYTES, renamed_note, save_upload

TEXT_A = "The first corpus, the one the run trained on.\n" * 400
TEXT_B = "A second text that happens to have the same file name.\n" * 30


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _print(path) -> str:
    return fingerprint(find_source(str(path)))


def _upload(text: str | bytes, name: str = "big.txt"):
    raw = text.encode("utf-8") if isinstance(text, str) else text
    return save_upload(io.BytesIO(raw), name, home_folder.uploads_dir())


# ---- uploads --------------------------------------------------------------------------------

def test_an_upload_of_a_taken_name_with_other_text_gets_a_new_name_and_keeps_both(home):
    first = _upload(TEXT_A)
    second = _upload(TEXT_B)
    assert first.name == "big.txt" and second.name == "big-2.txt"
    assert first.read_text() == TEXT_A and second.read_text() == TEXT_B
    third = _upload("Yet another text.\n")
    assert third.name == "big-3.txt" and first.read_text() == TEXT_A
    assert renamed_note("big.txt", first) is None
    assert renamed_note("big.txt", second) == ("uploads/big.txt already holds other text and "
                                               "is kept as it was: this upload is "
                                               "uploads/big-2.txt")


def test_the_same_text_uploaded_again_is_not_stored_twice(home):
    first, second = _upload(TEXT_A), _upload(TEXT_B)
    assert _upload(TEXT_A) == first
    assert _upload(TEXT_B) == second  # found under the name it got
    assert sorted(p.name for p in home_folder.uploads_dir().iterdir()) == ["big-2.txt",
                                                                           "big.txt"]


class _Reads(io.BytesIO):
    """A file-like upload that remembers the largest read it was asked for."""

    largest = 0

    def read(self, size=-1):
        self.largest = max(self.largest, size if size >= 0 else len(self.getvalue()))
        return super().read(size)


def test_an_upload_streams_in_chunks_and_a_character_split_between_them_is_text(home):
    raw = b"a" * (CHUNK_BYTES - 1) + "é".encode() + b" more text\n" * 10
    source = _Reads(raw)
    path = save_upload(source, "long.txt", home_folder.uploads_dir())
    assert path.read_bytes() == raw
    assert source.largest == CHUNK_BYTES


@pytest.mark.parametrize("raw, message", [
    (b"a" * (CHUNK_BYTES + 5) + b"caf\xe9", rf"not UTF-8 text \(bad byte at offset "
                                             rf"{CHUNK_BYTES + 8}\)"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "looks binary"),
    (b" \n\n", "is empty"),
])
def test_a_refused_upload_leaves_nothing_behind(home, raw, message):
    kept = _upload(TEXT_A)
    with pytest.raises(GptdashError, match=message):
        _upload(raw)
    assert list(home_folder.uploads_dir().iterdir()) == [kept]
    assert kept.read_text() == TEXT_A


def _parquet_bytes() -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = io.BytesIO()
    pq.write_table(pa.table({"text": ["one document", "another"]}), out)
    return out.getvalue()


def _zstd_bytes() -> bytes:
    import zstandard

    return zstandard.ZstdCompressor().compress(b'{"text": "a document"}\n')


@pytest.mark.parametrize("name, make", [
    ("docs.jsonl", lambda: '{"text": "caf\u00e9"}\n'.encode()),
    ("docs.ndjson", lambda: b'{"text": "a"}\n'),
    ("shard.parquet", _parquet_bytes),
    ("docs.jsonl.gz", lambda: gzip.compress(b'{"text": "a"}\n')),
    ("book.txt.zst", _zstd_bytes),
])
def test_json_lines_parquet_and_compressed_corpora_are_kept_byte_for_byte(home, name, make):
    raw = make()
    path = _upload(raw, name)
    assert path.name == name and path.read_bytes() == raw
    assert _upload(raw, name) == path  # the same bytes again: not stored twice


@pytest.mark.parametrize("name, raw, message", [
    # Binary formats are checked by their first bytes, not the text decoder.
    ("shard.parquet", b"text pretending to be Parquet", "does not start as a Parquet file"),
    ("docs.jsonl.gz", b'{"text": "not compressed"}\n', "does not start as a gzip file"),
    ("book.txt.zst", b"\x1f\x8b\x08", "does not start as a zstd file"),
    ("shard.parquet", b"PA", "does not start as a Parquet file"),  # shorter than its magic
    ("empty.gz", b"", "is empty"),
    # JSON Lines is text: checked as UTF-8 like any.
    ("docs.jsonl", b'{"text": "caf\xe9"}\n', r"not UTF-8 text \(bad byte at offset 13\)"),
    ("tool.exe", b"MZ\x90\x00", "is not a corpus file the page takes"),
])
def test_an_upload_that_is_not_what_its_name_says_is_refused_and_leaves_nothing(
        home, name, raw, message):
    with pytest.raises(GptdashError, match=message):
        _upload(raw, name)
    assert list(home_folder.uploads_dir().iterdir()) == []


# ---- runs record their corpus, and resume only on the same text ----------------------------

def _stopped_run(store, corpus) -> int:
    """A run on ``corpus`` that trained, stopped at its first step with a checkpoint."""
    run_id = runner.create_run(store, micro(corpus=str(corpus)), check_device=False)
    claim_here(store, run_id)
    stop = threading.Event()
    stop.set()
    result = runner.execute_run(store, run_id, stop_event=stop)
    assert result.status == RunStatus.STOPPED and runner.has_checkpoint(store.get_run(run_id))
    return run_id


def test_a_run_records_the_fingerprint_of_its_corpus(store, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT_A)
    cfg = micro(corpus=str(corpus))
    run = store.get_run(runner.create_run(store, cfg, check_device=False))
    assert run.config[CORPUS_FINGERPRINT] == _print(corpus)
    assert TrainConfig.from_dict(run.config) == cfg  # a clone or a resume reads its settings


def test_resume_on_a_changed_corpus_is_refused_in_one_line_and_writes_nothing(store, home):
    corpus = _upload(TEXT_A)
    run_id = _stopped_run(store, corpus)
    before = store.get_run(run_id)
    was = _print(corpus)
    corpus.write_text(TEXT_B)  # what the old upload did: the same name, other text
    with pytest.raises(GptdashError) as err:
        actions.resume(store, run_id)
    message = str(err.value)
    assert "\n" not in message
    assert (f"run {run_id}'s corpus {str(corpus)!r} has changed since the run recorded it "
            f"(was {was[:12]}…, now {_print(corpus)[:12]}…)") in message
    assert "start a new run on it, or restore the file" in message
    assert store.get_run(run_id) == before  # nothing written: still stopped, as it was

    corpus.write_text(TEXT_A)  # restored: the run goes on with its own text
    assert actions.resume(store, run_id) == f"run {run_id} resumes from its last checkpoint"
    assert store.get_run(run_id).status == RunStatus.QUEUED


def test_a_queued_run_whose_corpus_changed_fails_before_it_trains(store, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT_A)
    run_id = runner.create_run(store, micro(corpus=str(corpus)), check_device=False)
    corpus.write_text(TEXT_B)
    claim_here(store, run_id)
    result = runner.execute_run(store, run_id)
    run = store.get_run(run_id)
    assert result.status == run.status == RunStatus.FAILED
    assert run.error.startswith(f"run {run_id}'s corpus") and "has changed" in run.error
    assert run.last_step == 0 and run.checkpoint_path is None


def test_a_run_recorded_before_corpora_were_hashed_still_resumes(store, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT_A)
    old_config = micro(corpus=str(corpus)).to_dict()  # as runs were stored before
    run_id = store.create_run("old", old_config, status=RunStatus.QUEUED)
    claim_here(store, run_id)
    store.set_status(run_id, RunStatus.STOPPED)
    corpus.write_text(TEXT_B)
    actions.resume(store, run_id)
    assert store.get_run(run_id).status == RunStatus.QUEUED


def test_gptdash_resume_refuses_a_corpus_file_edited_in_place(store, home):
    corpus = home / "mine.txt"
    corpus.write_text(TEXT_A)
    made = gptdash(home, "submit", "--preset", "tiny", "--set", f"corpus={corpus}",
                   "--set", "max_steps=20")
    assert made.returncode == 0, made.stderr
    run_id = int(made.stdout.split()[0])
    claim_here(store, run_id)
    store.set_status(run_id, RunStatus.STOPPED)
    before = store.get_run(run_id)
    corpus.write_text(TEXT_A.replace("first", "edited"))
    for flags in ([], ["--queue"]):  # trained here, or queued for a worker
        out = gptdash(home, "resume", str(run_id), *flags)
        assert out.returncode == 2, out.stderr
        lines = out.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"gptdash: run {run_id}'s corpus")
        assert "has changed since the run recorded it" in lines[0]
        assert store.get_run(run_id) == before  # nothing written: still stopped, as it was


def test_the_pages_offer_builtin_uploads_data_and_recorded_corpora_only(home, tmp_path):
    from ui.uploads import page_corpus_problem

    uploads, data = home / "uploads", home / "data"
    for folder in (uploads, data):
        folder.mkdir(exist_ok=True)
    assert page_corpus_problem("builtin", set()) is None
    assert page_corpus_problem(str(uploads / "a.txt"), set()) is None
    assert page_corpus_problem(str(data / "sub" / "b.txt"), set()) is None
    assert page_corpus_problem("/etc/passwd", {"/home/me/corpus.txt"})
    assert page_corpus_problem("/home/me/corpus.txt", {"/home/me/corpus.txt"}) is None
    escape = str(uploads / ".." / ".." / "elsewhere.txt")
    assert "is not one the pages offer" in page_corpus_problem(escape, set())
    link = uploads / "link.txt"
    link.symlink_to("/etc/passwd")
    assert page_corpus_problem(str(link), set())  # a link out of uploads/ leads nowhere


def test_a_run_recorded_with_its_corpus_sha256_is_still_checked_against_the_whole_text(
        store, home):
    """Runs recorded by an older release kept the sha256 of the whole text, not a
    fingerprint: a resume of one on changed text is refused all the same."""
    corpus = _upload(TEXT_A)
    run_id = _stopped_run(store, corpus)
    config = dict(store.get_run(run_id).config)
    config.pop(CORPUS_FINGERPRINT)
    store.update_run(run_id, config={**config, CORPUS_SHA256: _sha256(TEXT_A)})
    corpus.write_text(TEXT_B)
    with pytest.raises(GptdashError, match=f"was {_sha256(TEXT_A)[:12]}…, now "
                                           f"{_sha256(TEXT_B)[:12]}…"):
        actions.resume(store, run_id)
    corpus.write_text(TEXT_A)
    assert actions.resume(store, run_id) == f"run {run_id} resumes from its last checkpoint"
