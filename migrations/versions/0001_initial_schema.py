"""Initial schema: windows, peers, evaluations (score receipts), weight_sets, run_config.

Revision ID: 0001
Revises: 
Create Date: 2026-11-23 11:26:30.936467
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('peers',
    sa.Column('hotkey', sa.String(length=64), nullable=False),
    sa.Column('uid', sa.Integer(), nullable=True),
    sa.Column('first_seen_window', sa.Integer(), nullable=True),
    sa.Column('last_seen_window', sa.Integer(), nullable=True),
    sa.Column('rating_mu', sa.Double(), nullable=False),
    sa.Column('rating_sigma', sa.Double(), nullable=False),
    sa.Column('bma', sa.Double(), nullable=False),
    sa.Column('score', sa.Double(), nullable=False),
    sa.Column('weight', sa.Double(), nullable=False),
    sa.Column('inactive_windows', sa.Integer(), server_default='0', nullable=False),
    sa.Column('banned_until_window', sa.Integer(), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('hotkey', name=op.f('pk_peers')),
    sa.UniqueConstraint('uid', name=op.f('uq_peers_uid'))
    )
    op.create_index('ix_peers_score_desc', 'peers', [sa.literal_column('score DESC'), 'hotkey'], unique=False)
    op.create_table('run_config',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=True),
    sa.Column('hotkey', sa.String(length=64), nullable=True),
    sa.Column('config', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_run_config'))
    )
    op.create_table('weight_sets',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('window', sa.Integer(), nullable=False),
    sa.Column('block', sa.BigInteger(), nullable=True),
    sa.Column('version_key', sa.BigInteger(), nullable=False),
    sa.Column('uids', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('weights', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('set_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('tx_status', sa.String(length=16), server_default='pending', nullable=False),
    sa.Column('tx_detail', sa.Text(), nullable=True),
    sa.CheckConstraint("tx_status IN ('pending', 'success', 'failed')", name=op.f('ck_weight_sets_tx_status')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_weight_sets')),
    sa.UniqueConstraint('window', name=op.f('uq_weight_sets_window'))
    )
    op.create_table('windows',
    sa.Column('window', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('status', sa.String(length=16), server_default='open', nullable=False),
    sa.Column('base_model_hash', sa.String(length=128), nullable=True),
    sa.Column('random_seed_hex', sa.String(length=128), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('scored_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('stage_timings', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('aggregate_hash', sa.String(length=128), nullable=True),
    sa.Column('num_submitted', sa.Integer(), server_default='0', nullable=False),
    sa.Column('num_evaluated', sa.Integer(), server_default='0', nullable=False),
    sa.CheckConstraint("status IN ('open', 'scoring', 'scored', 'weights_set')", name=op.f('ck_windows_status')),
    sa.PrimaryKeyConstraint('window', name=op.f('pk_windows'))
    )
    op.create_index(op.f('ix_windows_status_window'), 'windows', ['status', 'window'], unique=False)
    op.create_table('evaluations',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('window', sa.Integer(), nullable=False),
    sa.Column('hotkey', sa.String(length=64), nullable=False),
    sa.Column('uid', sa.Integer(), nullable=True),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('payload_hash', sa.String(length=128), nullable=True),
    sa.Column('upload_bytes', sa.BigInteger(), nullable=True),
    sa.Column('uploaded_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('filters_passed', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('reject_reason', sa.String(length=64), nullable=True),
    sa.Column('reject_detail', sa.Text(), nullable=True),
    sa.Column('copy_of_hotkey', sa.String(length=64), nullable=True),
    sa.Column('assigned_page_ids', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('random_page_ids', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('random_seed_hex', sa.String(length=128), nullable=True),
    sa.Column('base_model_hash', sa.String(length=128), nullable=True),
    sa.Column('loss_before_assigned', sa.Double(), nullable=True),
    sa.Column('loss_after_assigned', sa.Double(), nullable=True),
    sa.Column('loss_before_random', sa.Double(), nullable=True),
    sa.Column('loss_after_random', sa.Double(), nullable=True),
    sa.Column('contribution', sa.Double(), nullable=True),
    sa.Column('indicator', sa.Double(), nullable=True),
    sa.Column('bma_after', sa.Double(), nullable=True),
    sa.Column('estimate', sa.Double(), nullable=True),
    sa.Column('sync_score', sa.Double(), nullable=True),
    sa.Column('rating_mu_before', sa.Double(), nullable=True),
    sa.Column('rating_sigma_before', sa.Double(), nullable=True),
    sa.Column('rating_mu_after', sa.Double(), nullable=True),
    sa.Column('rating_sigma_after', sa.Double(), nullable=True),
    sa.Column('final_score', sa.Double(), nullable=True),
    sa.Column('weight', sa.Double(), nullable=True),
    sa.Column('eval_seconds', sa.Double(), nullable=True),
    sa.Column('details', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.CheckConstraint("status IN ('accepted', 'rejected', 'missing')", name=op.f('ck_evaluations_status')),
    sa.ForeignKeyConstraint(['window'], ['windows.window'], name=op.f('fk_evaluations_window_windows'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_evaluations')),
    sa.UniqueConstraint('window', 'hotkey', name=op.f('uq_evaluations_window_hotkey'))
    )
    op.create_index('ix_evaluations_hotkey_window_desc', 'evaluations', ['hotkey', sa.literal_column('"window" DESC')], unique=False)
    op.create_index(op.f('ix_evaluations_window_status'), 'evaluations', ['window', 'status'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_evaluations_window_status'), table_name='evaluations')
    op.drop_index('ix_evaluations_hotkey_window_desc', table_name='evaluations')
    op.drop_table('evaluations')
    op.drop_index(op.f('ix_windows_status_window'), table_name='windows')
    op.drop_table('windows')
    op.drop_table('weight_sets')
    op.drop_table('run_config')
    op.drop_index('ix_peers_score_desc', table_name='peers')
    op.drop_table('peers')
