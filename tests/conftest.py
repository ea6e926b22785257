"""Shared pytest fixtures."""

from __future__ import annotations

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
