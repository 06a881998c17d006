"""Weight sets' retry state: sends made and the block of the next try (``validator.setweights``).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 01:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('weight_sets') as batch:
        batch.add_column(sa.Column('sends', sa.Integer(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('next_try_block', sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('weight_sets') as batch:
        batch.drop_column('next_try_block')
        batch.drop_column('sends')
