"""The home folder, its subfolders, the database URL and safe user file names."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage import home as home_module
from storage.errors import StorageError
from storage.home import (
    cache_dir,
    checkpoints_dir,
    data_dir,
    db_url,
    home_dir,
    safe_path_in_home,
    uploads_dir,
)


def test_home_dir_follows_environment(home: Path) -> None:
    assert home_dir() == home


def test_artifacts_move_checkpoints_uploads_and_caches_but_not_the_database(
        home: Path, tmp_path_factory: pytest.TempPathFactory,
        monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tmp_path_factory.mktemp("shared")
    monkeypatch.setenv("GPTDASH_ARTIFACTS", str(shared))
    assert checkpoints_dir(3) == shared / "runs" / "3"
    assert uploads_dir() == shared / "uploads"
    assert cache_dir() == shared / "cache"
    assert data_dir() == shared / "data"
    assert db_url() == f"sqlite:///{home / 'gptdash.db'}"


def test_home_dir_defaults_to_repo_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GPTDASH_HOME", raising=False)
    monkeypatch.setattr(home_module, "REPO_ROOT", tmp_path)
    assert home_dir() == tmp_path / ".gptdash"
    assert (tmp_path / ".gptdash").is_dir()


def test_repo_root_is_parent_of_storage_package() -> None:
    assert (home_module.REPO_ROOT / "storage" / "home.py").is_file()


def test_subfolders_are_created_on_demand(home: Path) -> None:
    assert checkpoints_dir(7) == home / "runs" / "7"
    assert uploads_dir() == home / "uploads"
    assert cache_dir() == home / "cache"
    assert data_dir() == home / "data"
    for folder in ("runs/7", "uploads", "cache", "data"):
        assert (home / folder).is_dir()


def test_checkpoints_dir_without_create(home: Path) -> None:
    assert checkpoints_dir(8, create=False) == home / "runs" / "8"
    assert not (home / "runs" / "8").exists()


def test_db_url_default_and_override(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert db_url() == f"sqlite:///{home / 'gptdash.db'}"
    monkeypatch.setenv("GPTDASH_DB_URL", "postgresql://u@h/db")
    assert db_url() == "postgresql://u@h/db"


@pytest.mark.parametrize(
    "name",
    ["../x", "/etc/passwd", "", "   ", "a/../../b", "..", "a/..", "x\x00y", "..\\x", "C:\\x"],
)
def test_safe_path_rejects_escapes(home: Path, name: str) -> None:
    with pytest.raises(StorageError):
        safe_path_in_home(name, uploads_dir())


def test_safe_path_accepts_plain_names(home: Path) -> None:
    folder = uploads_dir()
    assert safe_path_in_home("corpus.txt", folder) == folder.resolve() / "corpus.txt"
    assert safe_path_in_home("sub/corpus.txt", folder) == folder.resolve() / "sub" / "corpus.txt"


def test_safe_path_rejects_symlink_out_of_folder(home: Path, tmp_path: Path) -> None:
    folder = uploads_dir()
    outside = tmp_path.parent / "outside-target"
    (folder / "link").symlink_to(outside)
    with pytest.raises(StorageError):
        safe_path_in_home("link", folder)
