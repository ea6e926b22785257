"""``runs.trained_s``: the seconds a run spent training, summed over its attempts.

A run's duration used to be ``finished_at - started_at``, which counts the days a
stopped run waited before it was resumed. Rows that finished before this revision
get that old value (the best there is); others stay NULL until their trainer writes.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("trained_s", sa.Float(), nullable=True))
    runs = sa.table("runs", sa.column("id", sa.Integer()),
                    sa.column("started_at", sa.DateTime(timezone=True)),
                    sa.column("finished_at", sa.DateTime(timezone=True)),
                    sa.column("trained_s", sa.Float()))
    bind = op.get_bind()
    ended = bind.execute(sa.select(runs.c.id, runs.c.started_at, runs.c.finished_at).where(
        runs.c.started_at.is_not(None), runs.c.finished_at.is_not(None))).all()
    if ended:
        bind.execute(runs.update().where(runs.c.id == sa.bindparam("run_id"))
                     .values(trained_s=sa.bindparam("seconds")),
                     [{"run_id": row.id,
                       "seconds": max((row.finished_at - row.started_at).total_seconds(), 0.0)}
                      for row in ended])
