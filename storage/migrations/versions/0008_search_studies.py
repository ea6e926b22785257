"""Search sweeps on Optuna: ``sweeps.study`` and ``sweeps.told``, and Optuna's own tables.

``study`` names the Optuna study (in this same database) a search sweep's trials belong to
(NULL: a grid or random sweep); ``told`` is the mark of its ended runs (their number plus
their claims) the study was last told at, so a worker sees without opening the study
whether it has news.
Optuna's tables come from ``storage.optuna_tables`` (see there why not from Optuna).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from storage.optuna_tables import create_optuna_tables

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("sweeps", sa.Column("study", sa.String(200), nullable=True))
    op.add_column("sweeps", sa.Column("told", sa.Integer(), nullable=False,
                                      server_default="0"))
    create_optuna_tables(op.get_bind())
