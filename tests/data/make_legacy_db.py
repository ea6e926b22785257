"""Write the SQLite databases that tests/test_storage_migrations.py upgrades.

They must be made by the old code itself, so run this with the storage package of
commit 8635e74 (the last schema before migrations) first on the path:

    git worktree add /tmp/gptdash-old 8635e74
    PYTHONPATH=/tmp/gptdash-old .venv/bin/python tests/data/make_legacy_db.py tests/data
    git worktree remove /tmp/gptdash-old

It writes ``gptdash-8635e74.db`` (as that release made it: runs with
AUTOINCREMENT) and ``gptdash-8635e74-no-autoincrement.db`` (the same rows in a
runs table made from the same DDL minus AUTOINCREMENT, like a database created
before gptdash asked for it). In both the newest run was deleted, so its id is
the one a table without AUTOINCREMENT would hand out again.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import storage.store
from storage.store import RunStore

NAME = "gptdash-8635e74.db"
NO_AUTOINCREMENT = "gptdash-8635e74-no-autoincrement.db"


def write_database(path: Path) -> None:
    """A few runs in several states, with metrics (a NaN among them), samples and a child run."""
    os.environ["GPTDASH_HOME"] = str(path.parent / "home")  # delete_run removes folders there
    store = RunStore(f"sqlite:///{path}")
    base = store.create_run("baseline", {"model": {"emb_dim": 64}, "lr": 3e-4},
                            tags=["base", "ü"], notes="first", max_steps=100, n_params=1234)
    store.set_status(base, "running")
    store.log_metrics(base, [(key, step, 5.0 - step / 50, float(step))
                             for step in range(0, 100, 10) for key in ("train/loss", "lr")])
    store.log_metrics(base, [("val/loss", 50, float("nan"), 50.0)])
    store.log_sample(base, 50, "Once", "Once upon a time")
    store.update_run(base, last_step=90, best_val_loss=3.25, checkpoint_path="runs/1/ckpt.pt")
    store.set_status(base, "completed")
    child = store.create_run("fine-tune", {"lr": 1e-4}, parent_id=base, status="running")
    store.log_metrics(child, [("train/loss", 1, 2.5, 1.0)])
    store.set_status(child, "failed", error="CUDA out of memory")
    store.create_run("waiting", {}, tags=["queued"])
    doomed = store.create_run("deleted", {})
    store.delete_run(doomed)
    store.close()


def without_autoincrement(source: Path, target: Path) -> None:
    """Copy ``source`` and rebuild its runs table from the same DDL minus AUTOINCREMENT."""
    shutil.copyfile(source, target)
    db = sqlite3.connect(target, isolation_level=None)
    ddl = db.execute("SELECT sql FROM sqlite_master WHERE name = 'runs'").fetchone()[0]
    indexes = [row[0] for row in db.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'runs' "
        "AND sql IS NOT NULL")]
    # SQLite's recipe for changing a table: build the new one beside it, then swap names
    # (renaming the old one instead would repoint metrics' and samples' foreign keys).
    db.execute("PRAGMA foreign_keys=OFF")
    db.execute("BEGIN")
    db.execute(ddl.replace("CREATE TABLE runs (", "CREATE TABLE runs_new (", 1)
               .replace(" AUTOINCREMENT", ""))
    db.execute("INSERT INTO runs_new SELECT * FROM runs")
    db.execute("DROP TABLE runs")
    db.execute("ALTER TABLE runs_new RENAME TO runs")
    for index in indexes:
        db.execute(index)
    db.execute("DELETE FROM sqlite_sequence WHERE name = 'runs'")
    db.execute("COMMIT")
    db.execute("VACUUM")
    db.close()


def main(folder: str) -> None:
    """Write both databases into ``folder``."""
    checkout = Path(storage.store.__file__).resolve().parent.parent
    commit = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"],
                            capture_output=True, text=True, check=True).stdout
    if not commit.startswith("8635e74"):
        sys.exit(f"storage comes from {checkout}, not commit 8635e74: see this file's docstring")
    out = Path(folder)
    for name in (NAME, NO_AUTOINCREMENT):
        (out / name).unlink(missing_ok=True)
    write_database(out / NAME)
    shutil.rmtree(out / "home", ignore_errors=True)
    without_autoincrement(out / NAME, out / NO_AUTOINCREMENT)


if __name__ == "__main__":
    main(sys.argv[1])
