"""Run ownership and heartbeats, the workers table, the events table.

Also gives an old SQLite ``runs`` table AUTOINCREMENT: a database made before
gptdash asked for it reuses the id of the newest deleted run, and with it that
run's checkpoint folder ``runs/<id>/``. The table is rebuilt keeping every row
and id, so new ids continue past the highest one.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def _runs_lacks_autoincrement() -> bool:
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return False
    ddl = bind.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'runs'").scalar()
    return "AUTOINCREMENT" not in (ddl or "").upper()


def upgrade() -> None:
    ownership = [
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("owner_host", sa.String(200), nullable=True),
        sa.Column("owner_pid", sa.Integer(), nullable=True),
    ]
    if _runs_lacks_autoincrement():
        # Copy-and-move (storage.migrate has turned foreign keys off, so dropping the old
        # table does not cascade into metrics and samples); ids are copied as they are.
        with op.batch_alter_table("runs", recreate="always",
                                  table_kwargs={"sqlite_autoincrement": True}) as batch:
            for column in ownership:
                batch.add_column(column)
    else:
        for column in ownership:
            op.add_column("runs", column)

    op.create_table(
        "workers",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("host", sa.String(200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("device", sa.String(100), nullable=True),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("current_run_id", sa.Integer(),
                  sa.ForeignKey("runs.id", ondelete="SET NULL"), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("wall_time", sa.Float(), nullable=False),
    )
    op.create_index("ix_events_run_step", "events", ["run_id", "step"])
