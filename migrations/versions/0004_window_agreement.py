"""Window ``agreement``: the validators' standing on chain (stake, Yuma trust, overlap) after each window.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 20:05:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('windows') as batch:
        batch.add_column(sa.Column('agreement', sa.JSON().with_variant(
            postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('windows') as batch:
        batch.drop_column('agreement')
