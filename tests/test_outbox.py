"""The outbox keeps a run's writes in order through an outage, in bounded memory."""

from __future__ import annotations

from pathlib import Path

import pytest

from jobs.outbox import Op, Outbox


class Down(Exception):
    pass


def test_writes_come_out_in_the_order_they_went_in_across_memory_and_spool(tmp_path: Path):
    box = Outbox(tmp_path / "spool.jsonl", memory_limit=5)
    for step in range(23):
        box.put("metrics", rows=[["loss", step, 1.0 / (step + 1), 0.0]])
        if step % 4 == 0:
            box.put("event", step=step, kind="note", message=f"e{step}")
    assert (tmp_path / "spool.jsonl").exists()  # it overflowed memory
    seen: list[tuple] = []
    written = box.drain(lambda op: seen.append(
        (op.kind, op.args["rows"][0][1] if op.kind == "metrics" else op.args["step"])))
    expected = []
    for step in range(23):
        expected.append(("metrics", step))
        if step % 4 == 0:
            expected.append(("event", step))
    assert seen == expected
    assert written == len(expected)
    assert box.pending() == 0
    assert not (tmp_path / "spool.jsonl").exists()  # a drained spool is removed


def test_memory_stays_bounded_however_long_the_outage(tmp_path: Path):
    box = Outbox(tmp_path / "spool.jsonl", memory_limit=100)
    for step in range(5_000):
        box.put("metrics", rows=[["loss", step, 1.0, 0.0], ["lr", step, 0.1, 0.0]])
        assert box._memory_rows <= 100
    assert box.pending() == 10_000


def test_a_failed_write_stays_queued_with_everything_after_it(tmp_path: Path):
    box = Outbox(tmp_path / "spool.jsonl", memory_limit=3)
    for i in range(8):
        box.put("sample", step=i, prompt="p", text=str(i))
    applied: list[int] = []
    down = {"now": True}

    def flaky(op: Op) -> None:
        if op.args["step"] == 5 and down["now"]:
            raise Down("the database is away")
        applied.append(op.args["step"])

    with pytest.raises(Down):
        box.drain(flaky)
    assert applied == [0, 1, 2, 3, 4]
    assert box.pending() == 3
    box.put("sample", step=8, prompt="p", text="8")
    down["now"] = False
    assert box.drain(flaky) == 4
    assert applied == list(range(9))  # each exactly once, in order


def test_a_write_that_fails_inside_the_spool_is_retried_from_the_same_line(tmp_path: Path):
    box = Outbox(tmp_path / "spool.jsonl", memory_limit=2)
    for i in range(6):
        box.put("event", step=i, kind="k", message="m")
    fails = {"left": 2}
    applied: list[int] = []

    def flaky(op: Op) -> None:
        if op.args["step"] == 1 and fails["left"]:
            fails["left"] -= 1
            raise Down()
        applied.append(op.args["step"])

    for _ in range(2):
        with pytest.raises(Down):
            box.drain(flaky)
    box.drain(flaky)
    assert applied == [0, 1, 2, 3, 4, 5]
