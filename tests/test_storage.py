"""RunStore: runs, their lifecycle, filters, samples, stop requests, the queue, deletion."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import timedelta, timezone
from pathlib import Path

import pytest
from sqlalchemy import inspect, text

from storage.errors import StorageError
from storage.home import checkpoints_dir
from storage.store import INTERRUPTED_ERROR, RUNS_FRAME_COLUMNS, RunStore

# Every test here runs on SQLite and on PostgreSQL (see conftest.pytest_generate_tests).
pytestmark = pytest.mark.backends("sqlite", "postgresql")


def test_create_and_get_run(store: RunStore) -> None:
    config = {"model": {"emb_dim": 64, "n_heads": 4}, "lr": 3e-4, "name": "ü"}
    run_id = store.create_run("first", config, tags=["base", "tiny"], notes="hello",
                              max_steps=500, n_params=1234)
    run = store.get_run(run_id)
    assert run.id == run_id
    assert (run.name, run.status, run.notes) == ("first", "queued", "hello")
    assert run.config == config
    assert run.tags == ["base", "tiny"]
    assert (run.max_steps, run.n_params, run.last_step, run.tokens_seen) == (500, 1234, 0, 0)
    assert run.stop_requested is False
    assert run.started_at is None and run.finished_at is None and run.duration_s is None
    assert run.created_at.tzinfo is not None
    assert run.created_at.utcoffset() == timedelta(0)
    assert (run.device, run.error, run.checkpoint_path, run.parent_id, run.worker) == (
        None, None, None, None, None)
    assert (run.best_val_loss, run.last_train_loss) == (None, None)


def test_create_running_run_starts_clock(store: RunStore) -> None:
    run = store.get_run(store.create_run("cli", {}, status="running"))
    assert run.started_at is not None and run.duration_s is not None


def test_get_missing_run_raises_user_error(store: RunStore) -> None:
    with pytest.raises(StorageError, match="run 42 does not exist"):
        store.get_run(42)


def test_create_run_with_unknown_parent(store: RunStore) -> None:
    with pytest.raises(StorageError, match="parent run 9 does not exist"):
        store.create_run("child", {}, parent_id=9)


def test_create_run_rejects_unknown_status(store: RunStore) -> None:
    with pytest.raises(ValueError, match="unknown run status"):
        store.create_run("x", {}, status="paused")


def test_update_run(store: RunStore) -> None:
    run_id = store.create_run("r", {"a": 1})
    store.update_run(run_id, device="cuda:0", last_step=120, tokens_seen=2**40,
                     best_val_loss=2.5, last_train_loss=2.75, checkpoint_path="/c/ckpt.pt",
                     config={"a": 2}, tags=["x"], notes="n")
    run = store.get_run(run_id)
    assert run.device == "cuda:0"
    assert (run.last_step, run.tokens_seen) == (120, 2**40)
    assert (run.best_val_loss, run.last_train_loss) == (2.5, 2.75)
    assert (run.checkpoint_path, run.config, run.tags, run.notes) == (
        "/c/ckpt.pt", {"a": 2}, ["x"], "n")


def test_update_run_rejects_unknown_fields_and_missing_runs(store: RunStore) -> None:
    run_id = store.create_run("r", {})
    with pytest.raises(ValueError, match="colour"):
        store.update_run(run_id, colour="red")
    with pytest.raises(ValueError, match="id"):
        store.update_run(run_id, id=5)
    with pytest.raises(ValueError, match="unknown run status"):
        store.update_run(run_id, status="paused")
    with pytest.raises(StorageError, match="run 99 does not exist"):
        store.update_run(99, notes="x")
    with pytest.raises(StorageError, match="run 99 does not exist"):
        store.update_run(99)


def test_status_timestamps(store: RunStore) -> None:
    run_id = store.create_run("r", {})
    store.set_status(run_id, "running")
    started = store.get_run(run_id).started_at
    assert started is not None and store.get_run(run_id).finished_at is None

    store.set_status(run_id, "failed", error="CUDA out of memory")
    run = store.get_run(run_id)
    assert run.status == "failed" and run.error == "CUDA out of memory"
    assert run.finished_at is not None and run.finished_at >= started
    assert run.duration_s == (run.finished_at - started).total_seconds()

    store.set_status(run_id, "running")  # resumed: the clock keeps its first start
    run = store.get_run(run_id)
    assert run.started_at == started
    assert run.finished_at is None and run.error is None

    for status in ("completed", "stopped", "interrupted"):
        store.set_status(run_id, status)
        run = store.get_run(run_id)
        assert run.status == status and run.finished_at is not None and run.error is None

    store.set_status(run_id, "queued")
    run = store.get_run(run_id)
    assert run.finished_at is None and run.error is None and run.started_at == started


def test_update_run_with_status_keeps_timestamps_consistent(store: RunStore) -> None:
    run_id = store.create_run("r", {})
    store.update_run(run_id, status="running", worker="host:1")
    run = store.get_run(run_id)
    assert run.started_at is not None and run.worker == "host:1"
    store.update_run(run_id, status="failed", error="boom")
    run = store.get_run(run_id)
    assert run.finished_at is not None and run.error == "boom"
    explicit = run.started_at - timedelta(hours=1)
    store.update_run(run_id, status="completed", finished_at=explicit)  # explicit value wins
    assert store.get_run(run_id).finished_at == explicit


def test_set_status_rejects_unknown_status_and_missing_run(store: RunStore) -> None:
    run_id = store.create_run("r", {})
    with pytest.raises(ValueError):
        store.set_status(run_id, "done")
    with pytest.raises(StorageError, match="run 77 does not exist"):
        store.set_status(77, "running")


def test_duration_grows_while_running(store: RunStore) -> None:
    run_id = store.create_run("r", {}, status="running")
    first = store.get_run(run_id).duration_s
    time.sleep(0.02)
    assert store.get_run(run_id).duration_s > first


def _make_runs(store: RunStore) -> dict[str, int]:
    ids = {
        "alpha": store.create_run("Alpha baseline", {}, tags=["base", "gpt2"], notes="first"),
        "beta": store.create_run("beta", {}, tags=["ablation"], notes="Try LOWER lr"),
        "gamma": store.create_run("gamma 50%_done", {}, tags=['x"base', "basement"]),
        "delta": store.create_run("delta", {}, tags=["Ünïcode"]),
    }
    store.set_status(ids["beta"], "running")
    store.set_status(ids["gamma"], "running")
    store.set_status(ids["gamma"], "completed")
    return ids


def test_list_runs_newest_first(store: RunStore) -> None:
    ids = _make_runs(store)
    assert [r.id for r in store.list_runs()] == sorted(ids.values(), reverse=True)
    assert [r.id for r in store.list_runs(limit=2)] == [ids["delta"], ids["gamma"]]


def test_list_runs_filter_by_status(store: RunStore) -> None:
    ids = _make_runs(store)
    assert [r.id for r in store.list_runs(status="running")] == [ids["beta"]]
    assert [r.id for r in store.list_runs(status=["queued", "completed"])] == [
        ids["delta"], ids["gamma"], ids["alpha"]]
    assert store.list_runs(status=[]) == []


def test_list_runs_filter_by_tag_is_exact(store: RunStore) -> None:
    ids = _make_runs(store)
    # 'x"base' and 'basement' contain "base" but are other tags.
    assert [r.id for r in store.list_runs(tag="base")] == [ids["alpha"]]
    assert [r.id for r in store.list_runs(tag='x"base')] == [ids["gamma"]]
    assert [r.id for r in store.list_runs(tag="Ünïcode")] == [ids["delta"]]
    assert store.list_runs(tag="bas") == []
    assert store.list_runs(tag="base", status="running") == []


def test_list_runs_text_search(store: RunStore) -> None:
    ids = _make_runs(store)
    assert [r.id for r in store.list_runs(text="alpha")] == [ids["alpha"]]  # name, any case
    assert [r.id for r in store.list_runs(text="lower LR")] == [ids["beta"]]  # notes
    assert [r.id for r in store.list_runs(text="ABLATION")] == [ids["beta"]]  # tags
    assert [r.id for r in store.list_runs(text="ünï")] == [ids["delta"]]  # tags, non-ASCII
    assert [r.id for r in store.list_runs(text='x"ba')] == [ids["gamma"]]  # quote inside a tag
    # LIKE wildcards in the search text are literal characters.
    assert [r.id for r in store.list_runs(text="50%_")] == [ids["gamma"]]
    assert store.list_runs(text="%") == [store.get_run(ids["gamma"])]
    assert store.list_runs(text="_") == [store.get_run(ids["gamma"])]
    assert len(store.list_runs(text="")) == 4


def test_list_runs_filter_by_ids_and_limit(store: RunStore) -> None:
    ids = _make_runs(store)
    wanted = [ids["alpha"], ids["gamma"]]
    assert [r.id for r in store.list_runs(ids=wanted)] == [ids["gamma"], ids["alpha"]]
    assert store.list_runs(ids=[]) == []
    tagged = [store.create_run(f"t{i}", {}, tags=["many"]) for i in range(5)]
    assert [r.id for r in store.list_runs(tag="many", limit=2)] == tagged[::-1][:2]


def test_runs_frame(store: RunStore) -> None:
    ids = _make_runs(store)
    store.update_run(ids["alpha"], best_val_loss=1.5, n_params=10, parent_id=ids["beta"])
    frame = store.runs_frame()
    assert list(frame.columns) == RUNS_FRAME_COLUMNS
    assert list(frame["id"]) == sorted(ids.values(), reverse=True)
    alpha = frame.set_index("id").loc[ids["alpha"]]
    assert alpha["tags"] == "base, gpt2"
    assert alpha["best_val_loss"] == 1.5
    assert alpha["n_params"] == 10 and alpha["parent_id"] == ids["beta"]
    assert frame["created_at"].dt.tz is not None
    durations = frame.set_index("id")["duration_s"]
    assert durations.isna()[ids["alpha"]]  # never started
    assert durations[ids["beta"]] >= 0  # running: up to now
    assert durations[ids["gamma"]] >= 0  # completed
    assert list(store.runs_frame(tag="base")["id"]) == [ids["alpha"]]
    assert list(store.runs_frame(status="running", text="beta")["id"]) == [ids["beta"]]
    assert list(store.runs_frame(ids=[ids["delta"]], limit=1)["id"]) == [ids["delta"]]


def test_runs_frame_empty(store: RunStore) -> None:
    frame = store.runs_frame()
    assert list(frame.columns) == RUNS_FRAME_COLUMNS and frame.empty


def test_runs_frame_500_runs_is_fast(store: RunStore) -> None:
    for i in range(500):
        store.create_run(f"run {i}", {"lr": i}, tags=["sweep", f"n{i}"], status="completed")
    started = time.perf_counter()
    frame = store.runs_frame()
    assert time.perf_counter() - started < 1.0
    assert len(frame) == 500


def test_samples_newest_first(store: RunStore) -> None:
    run_id = store.create_run("r", {})
    store.log_sample(run_id, 100, "Once", "Once upon")
    store.log_sample(run_id, 300, "The", "The end")
    store.log_sample(run_id, 200, "A", "A middle")
    frame = store.samples(run_id)
    assert list(frame.columns) == ["step", "prompt", "text", "created_at"]
    assert list(frame["step"]) == [300, 200, 100]
    assert frame.iloc[0]["text"] == "The end"
    assert frame["created_at"].dt.tz is not None
    assert store.samples(run_id + 1).empty


def test_log_sample_for_missing_run(store: RunStore) -> None:
    with pytest.raises(StorageError, match="run 5 does not exist"):
        store.log_sample(5, 1, "p", "t")


def test_stop_request(store: RunStore) -> None:
    run_id = store.create_run("r", {}, status="running")
    assert store.stop_requested(run_id) is False
    store.request_stop(run_id)
    assert store.stop_requested(run_id) is True
    # Queued again later: the old request must not stop the new attempt at once.
    store.set_status(run_id, "stopped")
    store.set_status(run_id, "queued")
    assert store.stop_requested(run_id) is False
    with pytest.raises(StorageError):
        store.request_stop(123)


def test_deleted_run_reads_as_stop_requested(store: RunStore) -> None:
    run_id = store.create_run("r", {}, status="stopped")
    store.delete_run(run_id)
    assert store.stop_requested(run_id) is True


def test_delete_run(store: RunStore, home: Path) -> None:
    parent = store.create_run("parent", {}, status="completed")
    child = store.create_run("child", {}, parent_id=parent, status="failed")
    other = store.create_run("other", {})
    for run_id in (parent, other):
        store.log_metrics(run_id, [("loss", s, 1.0, 0.0) for s in range(10)])
        store.log_sample(run_id, 5, "p", "t")
    folder = checkpoints_dir(parent)
    (folder / "ckpt.pt").write_bytes(b"weights")

    store.delete_run(parent)

    assert not folder.exists()
    with pytest.raises(StorageError):
        store.get_run(parent)
    assert store.metrics([parent]).empty and store.samples(parent).empty
    assert store.get_run(child).parent_id is None
    assert len(store.metrics([other])) == 10 and len(store.samples(other)) == 1
    with store.engine.connect() as conn:
        counts = [conn.execute(text(f"SELECT count(*) FROM {t} WHERE run_id = :r"),
                               {"r": parent}).scalar() for t in ("metrics", "samples")]
    assert counts == [0, 0]
    store.delete_run(child)  # no checkpoint folder: fine
    with pytest.raises(StorageError, match=f"run {parent} does not exist"):
        store.delete_run(parent)


def test_claim_next_queued_takes_oldest(store: RunStore) -> None:
    assert store.claim_next_queued("w") is None
    first, second = store.create_run("a", {}), store.create_run("b", {})
    store.create_run("done", {}, status="completed")
    assert store.queued_ids() == [first, second]
    assert store.claim_next_queued("host:1").run_id == first
    run = store.get_run(first)
    assert (run.status, run.worker) == ("running", "host:1") and run.started_at is not None
    assert store.queued_ids() == [second]
    assert store.claim_next_queued("host:1").run_id == second
    assert store.claim_next_queued("host:1") is None


def test_mark_interrupted(store: RunStore) -> None:
    mine = store.create_run("mine", {})
    theirs = store.create_run("theirs", {})
    done = store.create_run("done", {}, status="completed")
    queued = store.create_run("queued", {})
    store.update_run(mine, status="running", worker="host-a:123",
                     checkpoint_path="/c/latest.pt")
    store.update_run(theirs, status="running", worker="host-b:9")

    assert store.mark_interrupted(worker_prefix="host-a") == [mine]
    run = store.get_run(mine)
    assert run.status == "interrupted" and run.error == INTERRUPTED_ERROR
    assert run.finished_at is not None
    assert store.get_run(theirs).status == "running"

    assert store.mark_interrupted() == [theirs]
    assert store.mark_interrupted() == []
    assert store.get_run(done).status == "completed"
    assert store.get_run(queued).status == "queued"


def test_sql_in_user_strings_is_stored_verbatim(store: RunStore) -> None:
    nasty = "x'); DROP TABLE runs;--"
    run_id = store.create_run(nasty, {nasty: nasty}, tags=[nasty], notes=nasty)
    store.log_metrics(run_id, [(nasty, 1, 1.0, 0.0)])
    store.log_sample(run_id, 1, nasty, nasty)
    run = store.get_run(run_id)
    assert (run.name, run.notes, run.tags, run.config) == (nasty, nasty, [nasty], {nasty: nasty})
    assert [r.id for r in store.list_runs(text=nasty)] == [run_id]
    assert [r.id for r in store.list_runs(tag=nasty)] == [run_id]
    assert store.metric_keys([run_id]) == [nasty]
    assert store.samples(run_id).iloc[0]["prompt"] == nasty
    assert {"runs", "metrics", "samples"} <= set(inspect(store.engine).get_table_names())


@pytest.mark.backends("sqlite")
def test_sqlite_pragmas(store: RunStore) -> None:
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10000
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 1  # NORMAL


@pytest.mark.backends("sqlite")
def test_store_uses_home_database(store: RunStore, home: Path) -> None:
    assert (home / "gptdash.db").is_file()
    assert store.url == f"sqlite:///{home / 'gptdash.db'}"


def test_store_reopens_existing_database(store: RunStore) -> None:
    run_id = store.create_run("persisted", {"x": 1})
    again = RunStore(store.url)
    try:
        assert again.get_run(run_id).config == {"x": 1}
    finally:
        again.close()


def test_in_memory_database(home: Path) -> None:
    memory = RunStore("sqlite://")
    try:
        run_id = memory.create_run("m", {})
        memory.log_metrics(run_id, [("loss", 1, 2.0, 0.0)])
        assert memory.get_run(run_id).name == "m"
        assert len(memory.metrics([run_id])) == 1
    finally:
        memory.close()
    assert not (home / "gptdash.db").exists()


def test_naive_datetimes_are_taken_as_utc(store: RunStore) -> None:
    run_id = store.create_run("r", {})
    aware = store.get_run(run_id).created_at
    store.update_run(run_id, started_at=aware.replace(tzinfo=None))
    assert store.get_run(run_id).started_at == aware
    store.update_run(run_id, started_at=aware.astimezone(timezone(timedelta(hours=5))))
    assert store.get_run(run_id).started_at == aware


def test_storage_imports_no_torch_streamlit_gptcore_or_jobs() -> None:
    # Creating a database also runs the migration environment (storage/migrations/env.py).
    code = ("import sys, storage.store, storage.home, storage.schema, storage.migrate; "
            "storage.store.RunStore('sqlite://').close(); "
            "print(sorted(m for m in ('torch', 'streamlit', 'gptcore', 'jobs') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_nul_characters_are_stored_visibly_on_every_backend(store: RunStore) -> None:
    """A byte-level model can generate NUL; PostgreSQL refuses it in text, so it is kept as
    the symbol U+2400 rather than failing the run at its first sample."""
    run_id = store.create_run("nul", {}, notes="a\x00b")  # a name refuses control characters
    store.log_sample(run_id, 0, "The ", "x\x00y")
    store.log_event(run_id, 0, "spike", "m\x00n")
    store.set_status(run_id, "failed", error="e\x00f")
    run = store.get_run(run_id)
    assert (run.notes, run.error) == ("a\u2400b", "e\u2400f")
    assert store.samples(run_id)["text"].tolist() == ["x\u2400y"]
    assert store.events([run_id])["message"].tolist() == ["m\u2400n"]


def test_a_name_over_200_characters_is_one_line_refusal_on_every_database(store: RunStore) -> None:
    # PostgreSQL's VARCHAR(200) used to answer with a 70-line StringDataRightTruncation
    # traceback while SQLite kept the name: one limit now, checked before the database.
    with pytest.raises(StorageError, match=r"is 300 characters long: use at most 200$"):
        store.create_run("n" * 300, {})
    with pytest.raises(StorageError, match="sweep name 'nnnn"):
        store.create_sweep("n" * 201, {})
    run_id = store.create_run("n" * 200, {})  # the limit itself is fine
    with pytest.raises(StorageError, match="at most 200"):
        store.update_run(run_id, name="n" * 201)
    assert store.get_run(run_id).name == "n" * 200
    assert [r.id for r in store.list_runs()] == [run_id] and not store.list_sweeps()


def test_bidi_controls_are_refused_in_names_tags_and_notes(store: RunStore) -> None:
    for char in ("\u202e", "\u2066", "\u200f", "\u061c"):
        with pytest.raises(StorageError, match="control character"):
            store.create_run(f"evil{char}gpj.exe", {})
        with pytest.raises(StorageError, match="tag .* control character"):
            store.create_run("ok", {}, tags=[f"t{char}"])
        with pytest.raises(StorageError, match="notes hold a bidirectional control"):
            store.create_run("ok", {}, notes=f"line one\nline {char}two")
    assert store.list_runs() == []
    run_id = store.create_run("ok", {}, notes="two\nlines are fine")
    with pytest.raises(StorageError, match="bidirectional"):
        store.update_run(run_id, notes="\u202eevil")
    with pytest.raises(StorageError, match="tag 't\\\\nag' holds a control character"):
        store.update_run(run_id, tags=["t\nag"])
    assert store.get_run(run_id).notes == "two\nlines are fine"
    assert store.get_run(run_id).tags == []
