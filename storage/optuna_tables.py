"""Optuna's tables in gptdash's own database: a search sweep's study lives beside its runs.

Optuna's RDB storage (``optuna.storages.RDBStorage``) is SQLAlchemy, so a study can share
the database (SQLite or PostgreSQL) with the runs it proposes, and ``optuna-dashboard
<database URL>`` opens it there. Its tables (``studies``, ``trials``, ...) are created by our
own migration (revision 0008) and by ``storage.migrate`` for a new database, in the same
transaction as ours, never by Optuna when it connects: Optuna stamps its own schema version
in ``alembic_version`` too, which here holds gptdash's revision. So gptdash opens the storage
with ``skip_table_creation`` and ``skip_compatibility_check`` (as optuna-dashboard does), and
``optuna storage upgrade`` must not be run on a gptdash database: a change of Optuna's schema
(none since its schema version 12, Optuna 3.2) comes as a gptdash revision.
"""

from __future__ import annotations

from sqlalchemy import Connection, insert, select


def optuna_table_names() -> set[str]:
    """The names of the tables Optuna's RDB storage keeps."""
    from optuna.storages._rdb import models

    return set(models.BaseModel.metadata.tables)


def create_optuna_tables(connection: Connection) -> None:
    """Create Optuna's tables on ``connection`` (inside the caller's transaction) and record
    their schema version as Optuna would, so Optuna finds them ready."""
    from optuna import version
    from optuna.storages._rdb import models

    models.BaseModel.metadata.create_all(connection)
    info = models.VersionInfoModel.__table__
    if connection.execute(select(info.c.version_info_id)).first() is None:
        connection.execute(insert(info).values(version_info_id=1,
                                               schema_version=models.SCHEMA_VERSION,
                                               library_version=version.__version__))
