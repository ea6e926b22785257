"""Where gptdash keeps its files: one home folder holds everything by default.

The SQLite database lives in ``home_dir()``; checkpoints, uploaded corpora and token
caches live in ``artifacts_dir()``, which is the home folder unless
``$GPTDASH_ARTIFACTS`` names a folder that every machine reaches (a shared
filesystem, mounted at the same path everywhere), so a run trained by a worker on
one machine is resumed, sampled and fine-tuned from on another.
"""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

from storage.errors import StorageError

REPO_ROOT = Path(__file__).resolve().parent.parent


def home_dir() -> Path:
    """The home folder: ``$GPTDASH_HOME`` if set, else ``<repo>/.gptdash``. Created if missing."""
    env = os.environ.get("GPTDASH_HOME")
    return _folder(Path(env).expanduser() if env else REPO_ROOT / ".gptdash", "GPTDASH_HOME")


def artifacts_dir() -> Path:
    """Checkpoints, uploads and caches: ``$GPTDASH_ARTIFACTS`` if set, else the home folder."""
    env = os.environ.get("GPTDASH_ARTIFACTS")
    if not env:
        return home_dir()
    return _folder(Path(env).expanduser(), "GPTDASH_ARTIFACTS")


def _folder(path: Path, variable: str) -> Path:
    """``path`` created if missing, or a StorageError saying to set ``variable`` elsewhere."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        why = "it is a file" if path.is_file() else exc.strerror or str(exc)
        raise StorageError(f"cannot use {path} as the gptdash folder ({why}): set {variable} "
                           "to a folder you can write") from None
    return path


def _subdir(*parts: str, create: bool = True) -> Path:
    path = artifacts_dir().joinpath(*parts)
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def checkpoints_dir(run_id: int, *, create: bool = True) -> Path:
    """The folder holding one run's checkpoints: ``artifacts/runs/<id>/``.

    ``create=False`` only computes the path (used when deleting a run).
    """
    return _subdir("runs", str(int(run_id)), create=create)


def uploads_dir() -> Path:
    """Text files uploaded in the browser: ``artifacts/uploads``."""
    return _subdir("uploads")


def cache_dir() -> Path:
    """Token-id caches per (corpus, tokenizer): ``artifacts/cache``."""
    return _subdir("cache")


def exports_dir() -> Path:
    """Runs exported for Hugging Face transformers from the dashboard: ``artifacts/exports``."""
    return _subdir("exports")


def data_dir() -> Path:
    """Text corpora the user drops in by hand: ``artifacts/data``."""
    return _subdir("data")


def db_url() -> str:
    """The database URL: ``$GPTDASH_DB_URL`` if set, else the SQLite file in the home folder."""
    return os.environ.get("GPTDASH_DB_URL") or f"sqlite:///{home_dir() / 'gptdash.db'}"


def safe_path_in_home(name: str, folder: Path) -> Path:
    """Resolve a user-supplied file name inside ``folder``, refusing anything that escapes it.

    Refuses empty names, NUL bytes, absolute paths and any ``..`` component
    (checked under both POSIX and Windows rules, so ``..\\x`` is refused too),
    then checks the resolved path once more so a symlink cannot lead outside.
    """
    if not name or not name.strip():
        raise StorageError("the file name is empty; give a name such as corpus.txt")
    if "\x00" in name:
        raise StorageError("the file name contains a NUL byte; use plain characters")
    posix, windows = PurePosixPath(name), PureWindowsPath(name)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or windows.root:
        raise StorageError(f"{name!r} is an absolute path; give a name relative to {folder}")
    if ".." in posix.parts or ".." in windows.parts:
        raise StorageError(f"{name!r} contains '..'; give a name inside {folder}")
    base = Path(folder).resolve()
    path = (base / name).resolve()
    if path == base or not path.is_relative_to(base):
        raise StorageError(f"{name!r} points outside {folder}; give a plain file name")
    return path
