"""Peers' ``evaluated_windows``: the count that removes the start-up bias of ``bma`` (scoring.work).

Peers already in the table get 1000: their history is unknown, and a long one makes the bias
correction a no-op, so their proof of work is their ``bma`` as it stands.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 22:20:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('peers') as batch:
        batch.add_column(sa.Column('evaluated_windows', sa.Integer(), nullable=False, server_default='0'))
    op.execute("UPDATE peers SET evaluated_windows = 1000")


def downgrade() -> None:
    with op.batch_alter_table('peers') as batch:
        batch.drop_column('evaluated_windows')
