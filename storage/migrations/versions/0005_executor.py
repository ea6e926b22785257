"""``runs.executor``: where a run is trained, ``local`` (a plain worker or the CLI) or ``ray``
(a Ray job of its own, ``--on ray``); plain workers never claim a ``ray`` run.

Every row made before this revision was trained locally, so the column's server default
fills them in.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("executor", sa.String(20), nullable=False,
                                    server_default="local"))
