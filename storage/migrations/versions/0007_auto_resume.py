"""Runs resume themselves: ``runs.attempts``, ``auto_resumes``, ``max_auto_resumes`` and
``resume_after``.

``attempts`` counts a run's claims (each try at training it); ``auto_resumes`` how many of
them were automatic resumes after its owner was lost, up to ``max_auto_resumes`` (NULL: the
claiming worker's default); ``resume_after`` is when an interrupted run may be resumed
automatically (NULL: never). A run that was claimed before this revision counts one attempt.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("attempts", sa.Integer(), nullable=False,
                                    server_default="0"))
    op.add_column("runs", sa.Column("auto_resumes", sa.Integer(), nullable=False,
                                    server_default="0"))
    op.add_column("runs", sa.Column("max_auto_resumes", sa.Integer(), nullable=True))
    op.add_column("runs", sa.Column("resume_after", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE runs SET attempts = 1 WHERE started_at IS NOT NULL")
