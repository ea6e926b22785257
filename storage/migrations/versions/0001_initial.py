"""The schema before migrations existed: runs, metrics and samples.

A database made by gptdash before Alembic (no ``alembic_version`` table) is
exactly this revision, so ``storage.migrate`` stamps it 0001 and upgrades from here.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("notes", sa.Text(), nullable=False),
        sa.Column("device", sa.String(100), nullable=True),
        sa.Column("n_params", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("stop_requested", sa.Boolean(), nullable=False),
        sa.Column("checkpoint_path", sa.Text(), nullable=True),
        sa.Column("parent_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="SET NULL"),
                  nullable=True),
        sa.Column("worker", sa.String(200), nullable=True),
        sa.Column("last_step", sa.Integer(), nullable=False),
        sa.Column("max_steps", sa.Integer(), nullable=False),
        sa.Column("tokens_seen", sa.BigInteger(), nullable=False),
        sa.Column("best_val_loss", sa.Float(), nullable=True),
        sa.Column("last_train_loss", sa.Float(), nullable=True),
        # SQLite would otherwise reuse a deleted run's id and with it its checkpoint folder.
        sqlite_autoincrement=True,
    )
    op.create_index("ix_runs_status", "runs", ["status"])
    op.create_table(
        "metrics",
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="CASCADE"),
                  primary_key=True),
        sa.Column("key", sa.String(100), primary_key=True),
        sa.Column("step", sa.Integer(), primary_key=True),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("wall_time", sa.Float(), nullable=False),
        # Rows live in the primary-key b-tree: a step range is one sequential read.
        sqlite_with_rowid=False,
    )
    op.create_table(
        "samples",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("prompt", sa.Text(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_samples_run_step", "samples", ["run_id", "step"])

