"""Shared pytest fixtures."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from storage.store import RunStore


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh gptdash home folder (GPTDASH_HOME) with the default SQLite database URL."""
    monkeypatch.setenv("GPTDASH_HOME", str(tmp_path))
    monkeypatch.delenv("GPTDASH_DB_URL", raising=False)
    return tmp_path


@pytest.fixture
def store(home: Path) -> Iterator[RunStore]:
    """A RunStore on a real SQLite file in the temporary home folder."""
    run_store = RunStore()
    yield run_store
    run_store.close()


@pytest.fixture(autouse=True)
def _keep_main_module() -> Iterator[None]:
    """AppTest installs app.py as __main__; restore it, or multiprocessing's spawn children
    would re-run the app (and its job manager) when a later test starts them."""
    main = sys.modules["__main__"]
    yield
    sys.modules["__main__"] = main
