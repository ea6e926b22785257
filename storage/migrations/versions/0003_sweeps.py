"""Sweeps: a sweeps table and ``runs.sweep_id`` pointing at the sweep a run belongs to.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("cut", sa.Boolean(), nullable=False),
        sa.Column("notes", sa.Text(), nullable=False),
    )
    if op.get_bind().dialect.name == "sqlite":
        # SQLite adds a column with its foreign key in place; Alembic's generic path would
        # rebuild runs, and a rebuild forgets the AUTOINCREMENT high-water mark of deleted runs.
        op.execute("ALTER TABLE runs ADD COLUMN sweep_id INTEGER "
                   "REFERENCES sweeps (id) ON DELETE SET NULL")
    else:
        op.add_column("runs", sa.Column("sweep_id", sa.Integer(), nullable=True))
        op.create_foreign_key(None, "runs", "sweeps", ["sweep_id"], ["id"], ondelete="SET NULL")
    op.create_index("ix_runs_sweep_id", "runs", ["sweep_id"])
