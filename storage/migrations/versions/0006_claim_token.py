"""``runs.claim_token``: the fencing token of a run's current claim.

Every claim of a run (and every declaration that its owner is gone) takes the next token,
and an owner's writes are refused once the row carries another one, so two processes
never both write one run. Rows made before this revision start at 0.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("claim_token", sa.Integer(), nullable=False,
                                    server_default="0"))
