"""RunStore metrics: upserts, incremental reads, keys, and SQL downsampling."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from storage.errors import StorageError
from storage.store import METRIC_COLUMNS, RunStore

# Every test here runs on SQLite and on PostgreSQL (see conftest.pytest_generate_tests).
pytestmark = pytest.mark.backends("sqlite", "postgresql")


def _log_series(store: RunStore, run_id: int, key: str, values: np.ndarray,
                batch: int = 50_000) -> None:
    for start in range(0, len(values), batch):
        store.log_metrics(run_id, [(key, step, float(values[step]), float(step))
                                   for step in range(start, min(start + batch, len(values)))])


def test_log_metrics_upsert_keeps_last(store: RunStore) -> None:
    run_id = store.create_run("r", {})
    store.log_metrics(run_id, [("loss", 1, 5.0, 10.0), ("loss", 2, 4.0, 11.0)])
    store.log_metrics(run_id, [("loss", 2, 3.5, 12.0)])
    store.log_metrics(run_id, [("lr", 1, 0.1, 1.0), ("lr", 1, 0.2, 2.0)])  # twice in one call
    frame = store.metrics([run_id])
    assert list(frame.columns) == METRIC_COLUMNS
    assert frame.to_dict("records") == [
        {"run_id": run_id, "key": "loss", "step": 1, "value": 5.0, "wall_time": 10.0},
        {"run_id": run_id, "key": "loss", "step": 2, "value": 3.5, "wall_time": 12.0},
        {"run_id": run_id, "key": "lr", "step": 1, "value": 0.2, "wall_time": 2.0},
    ]


def test_log_metrics_generic_fallback_upserts(store: RunStore,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # Backends without ON CONFLICT get delete + insert; SQLite under another name runs that path.
    monkeypatch.setattr(store.engine.dialect, "name", "generic")
    run_id = store.create_run("r", {})
    store.log_metrics(run_id, [("loss", 1, 5.0, 1.0), ("loss", 2, 4.0, 2.0)])
    store.log_metrics(run_id, [("loss", 2, 3.0, 3.0), ("loss", 3, 2.0, 4.0)])
    frame = store.metrics([run_id])
    assert list(frame["value"]) == [5.0, 3.0, 2.0]


def test_log_metrics_empty_and_missing_run(store: RunStore) -> None:
    run_id = store.create_run("r", {})
    store.log_metrics(run_id, [])
    assert store.metrics([run_id]).empty
    with pytest.raises(StorageError, match="run 404 does not exist"):
        store.log_metrics(404, [("loss", 1, 1.0, 0.0)])


def test_nan_and_inf_values_round_trip(store: RunStore) -> None:
    run_id = store.create_run("diverged", {})
    store.log_metrics(run_id, [("loss", 1, math.nan, 0.0), ("loss", 2, math.inf, 0.0)])
    values = store.metrics([run_id])["value"]
    assert math.isnan(values[0]) and values[1] == math.inf


def test_metrics_after_step_returns_only_newer_rows(store: RunStore) -> None:
    run_id = store.create_run("r", {})
    store.log_metrics(run_id, [("loss", s, 1.0 / (s + 1), float(s)) for s in range(0, 100, 10)])
    newer = store.metrics([run_id], ["loss"], after_step=50)
    assert list(newer["step"]) == [60, 70, 80, 90]
    assert store.metrics([run_id], ["loss"], after_step=90).empty
    window = store.metrics([run_id], ["loss"], after_step=20, max_step=50)
    assert list(window["step"]) == [30, 40, 50]


def test_metrics_for_several_runs_and_keys(store: RunStore) -> None:
    a, b, c = (store.create_run(name, {}) for name in "abc")
    for run_id in (b, a, c):
        store.log_metrics(run_id, [(key, s, run_id * 100.0 + s, 0.0)
                                   for s in (3, 1, 2) for key in ("train/loss", "lr", "val/loss")])
    frame = store.metrics([b, a], ["val/loss", "train/loss"])
    assert sorted(set(frame["run_id"])) == [a, b]
    assert set(frame["key"]) == {"train/loss", "val/loss"}
    assert len(frame) == 2 * 2 * 3
    ordered = frame.sort_values(["run_id", "key", "step"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(frame, ordered)
    assert list(frame.dtypes) == [np.int64, frame["key"].dtype, np.int64, np.float64, np.float64]
    assert store.metrics([a], []).empty
    assert store.metrics([]).empty
    assert len(store.metrics([a, b, c])) == 27


def test_metric_keys_and_last_step(store: RunStore) -> None:
    a, b, empty = (store.create_run(name, {}) for name in "abe")
    store.log_metrics(a, [("train/loss", 5, 1.0, 0.0), ("lr", 7, 1.0, 0.0)])
    store.log_metrics(b, [("val/loss", 3, 1.0, 0.0), ("lr", 9, 1.0, 0.0)])
    assert store.metric_keys([a, b]) == ["lr", "train/loss", "val/loss"]
    assert store.metric_keys([b]) == ["lr", "val/loss"]
    assert store.metric_keys([empty]) == []
    assert store.metric_keys([]) == []
    assert store.last_step(a, "lr") == 7
    assert store.last_step(b, "lr") == 9
    assert store.last_step(a, "val/loss") is None


def test_downsample_short_series_comes_back_whole(store: RunStore) -> None:
    run_id = store.create_run("short", {})
    _log_series(store, run_id, "loss", np.linspace(5, 1, 300))
    frame = store.metrics_downsampled([run_id], "loss", buckets=150)
    pd.testing.assert_frame_equal(frame, store.metrics([run_id], ["loss"]))
    assert store.metrics_downsampled([run_id], "other").empty
    assert store.metrics_downsampled([], "loss").empty


def test_downsample_keeps_spike_and_ends(store: RunStore) -> None:
    run_id = store.create_run("spiky", {})
    values = np.random.default_rng(1).normal(3.0, 0.1, 100_000)
    values[54_321] = 1e6
    _log_series(store, run_id, "loss", values)
    frame = store.metrics_downsampled([run_id], "loss", buckets=1000)
    assert len(frame) <= 2 * 1000 + 2
    assert frame["value"].max() == 1e6
    assert frame.loc[frame["value"].idxmax(), "step"] == 54_321
    assert frame["step"].iloc[0] == 0 and frame["step"].iloc[-1] == 99_999
    assert frame["step"].is_monotonic_increasing and frame["step"].is_unique
    assert list(frame.columns) == METRIC_COLUMNS
    assert (frame["wall_time"] == frame["step"]).all()  # whole rows, not mixed columns


def _check_downsample_against_numpy(store: RunStore, n: int, buckets: int) -> None:
    """Downsample n random points at steps 1000..1000+n-1 and compare with a numpy reference."""
    run_id = store.create_run("long", {})
    offset = 1_000  # the range need not start at 0
    values = np.random.default_rng(2).normal(size=n)
    store_values = np.zeros(offset + n)
    store_values[offset:] = values
    for start in range(offset, offset + n, 50_000):
        store.log_metrics(run_id, [("loss", s, float(store_values[s]), float(s))
                                   for s in range(start, min(start + 50_000, offset + n))])
    frame = store.metrics_downsampled([run_id], "loss", buckets=buckets)

    steps = np.arange(offset, offset + n)
    bucket = (steps - offset) * buckets // n
    expected = {int(steps[0]), int(steps[-1])}
    for b in range(buckets):
        in_bucket = np.flatnonzero(bucket == b)
        expected.add(int(steps[in_bucket[np.argmin(values[in_bucket])]]))
        expected.add(int(steps[in_bucket[np.argmax(values[in_bucket])]]))
    assert set(frame["step"]) == expected
    assert np.allclose(frame["value"], store_values[frame["step"]])


@pytest.mark.backends("sqlite")
def test_downsample_matches_numpy_reference_on_200k_rows(store: RunStore) -> None:
    _check_downsample_against_numpy(store, 200_000, 700)


@pytest.mark.backends("postgresql")
def test_downsample_matches_numpy_reference_on_postgresql(store: RunStore) -> None:
    # Fewer rows than on SQLite, for suite time (PostgreSQL inserts them ~5x slower);
    # the bucket arithmetic under test is the same at any size.
    _check_downsample_against_numpy(store, 30_000, 700)


def test_downsample_several_runs_and_step_window(store: RunStore) -> None:
    long_run, short_run = store.create_run("long", {}), store.create_run("short", {})
    _log_series(store, long_run, "loss", np.arange(10_000, dtype=float))
    _log_series(store, short_run, "loss", np.arange(50, dtype=float))
    store.log_metrics(long_run, [("lr", 1, 0.1, 0.0)])  # another key must not leak in
    frame = store.metrics_downsampled([short_run, long_run], "loss", buckets=100)
    assert list(frame["run_id"].unique()) == [long_run, short_run]
    assert set(frame["key"]) == {"loss"}
    assert len(frame[frame["run_id"] == short_run]) == 50
    long_part = frame[frame["run_id"] == long_run]
    assert len(long_part) <= 2 * 100 + 2
    assert long_part["step"].min() == 0 and long_part["step"].max() == 9_999

    window = store.metrics_downsampled([long_run], "loss", buckets=100,
                                       min_step=2_000, max_step=5_999)
    assert window["step"].min() == 2_000 and window["step"].max() == 5_999
    assert len(window) <= 202
    small_window = store.metrics_downsampled([long_run], "loss", buckets=100,
                                             min_step=100, max_step=149)
    assert list(small_window["step"]) == list(range(100, 150))
