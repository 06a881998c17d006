"""Evaluation status ``unevaluated``: passed Stage 1 but left out by the window's time budget.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01 19:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_OLD = "status IN ('accepted', 'rejected', 'missing')"
_NEW = "status IN ('accepted', 'rejected', 'missing', 'unevaluated')"


def upgrade() -> None:
    with op.batch_alter_table('evaluations') as batch:
        batch.drop_constraint(op.f('ck_evaluations_status'), type_='check')
        batch.create_check_constraint('status', _NEW)


def downgrade() -> None:
    op.execute("UPDATE evaluations SET status = 'accepted' WHERE status = 'unevaluated'")
    with op.batch_alter_table('evaluations') as batch:
        batch.drop_constraint(op.f('ck_evaluations_status'), type_='check')
        batch.create_check_constraint('status', _OLD)
