"""Shared model across validators: which proposal each window applied, and where this validator stands.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 12:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('follow_state',
    sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('window', sa.Integer(), nullable=True),
    sa.Column('model_hash', sa.String(length=128), nullable=True),
    sa.Column('publisher', sa.String(length=64), nullable=True),
    sa.Column('detail', sa.Text(), nullable=True),
    sa.Column('failovers', sa.Integer(), server_default='0', nullable=False),
    sa.Column('null_windows', sa.Integer(), server_default='0', nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_follow_state'))
    )
    with op.batch_alter_table('windows') as batch:
        batch.add_column(sa.Column('publisher', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('next_model_hash', sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('windows') as batch:
        batch.drop_column('next_model_hash')
        batch.drop_column('publisher')
    op.drop_table('follow_state')
