"""Sweeps: a spec that groups runs; runs point to it and filter by it."""

from __future__ import annotations

import pandas as pd
import pytest

from storage.errors import StorageError
from storage.store import RunStore, SweepRecord

# Every test here runs on SQLite and on PostgreSQL (see conftest.pytest_generate_tests).
pytestmark = pytest.mark.backends("sqlite", "postgresql")


def test_sweep_round_trip(store: RunStore) -> None:
    spec = {"grid": {"lr": [1e-3, 3e-4]}, "base": {"n_layers": 2}, "name": "ü"}
    sweep_id = store.create_sweep("lr grid", spec)
    sweep = store.get_sweep(sweep_id)
    assert isinstance(sweep, SweepRecord)
    assert (sweep.id, sweep.name, sweep.spec, sweep.cut, sweep.notes) == (
        sweep_id, "lr grid", spec, False, "")
    assert sweep.created_at.tzinfo is not None
    cut = store.create_sweep("halving", {}, cut=True)
    assert store.get_sweep(cut).cut is True
    assert [s.id for s in store.list_sweeps()] == [cut, sweep_id]  # newest first


def test_get_missing_sweep(store: RunStore) -> None:
    with pytest.raises(StorageError, match="sweep 3 does not exist"):
        store.get_sweep(3)
    with pytest.raises(StorageError, match="sweep 3 does not exist"):
        store.create_run("orphan", {}, sweep_id=3)


def test_runs_of_a_sweep(store: RunStore) -> None:
    sweep_id = store.create_sweep("s", {})
    other = store.create_sweep("t", {})
    members = [store.create_run(f"s{i}", {}, sweep_id=sweep_id) for i in range(3)]
    store.create_run("t0", {}, sweep_id=other)
    loner = store.create_run("alone", {})
    assert store.get_run(members[0]).sweep_id == sweep_id
    assert store.get_run(loner).sweep_id is None
    assert [r.id for r in store.list_runs(sweep_id=sweep_id)] == members[::-1]
    assert [r.id for r in store.list_runs(sweep_id=sweep_id, limit=1)] == [members[-1]]
    frame = store.runs_frame(sweep_id=sweep_id)
    assert list(frame["id"]) == members[::-1]
    assert set(frame["sweep_id"]) == {sweep_id}
    assert pd.isna(store.runs_frame().set_index("id").loc[loner, "sweep_id"])


def test_runs_frame_has_worker_and_sweep(store: RunStore) -> None:
    sweep_id = store.create_sweep("s", {})
    run_id = store.create_run("r", {}, sweep_id=sweep_id)
    store.claim_run(run_id, "gpu-box:12", host="gpu-box", pid=12)
    row = store.runs_frame().set_index("id").loc[run_id]
    assert (row["worker"], row["sweep_id"]) == ("gpu-box:12", sweep_id)
