"""control plane hardening: single-use upload nonces for model files; at most one default
deployed model per (account, model), enforced by a partial unique index

Revision ID: 0004
Revises: 0003
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('model_files', schema=None) as batch_op:
        batch_op.add_column(sa.Column('upload_nonce', sa.String(length=40), nullable=False, server_default=''))
    with op.batch_alter_table('deployed_models', schema=None) as batch_op:
        batch_op.create_index('uq_deployed_models_default', ['account_id', 'model'], unique=True,
                              sqlite_where=sa.text('is_default'), postgresql_where=sa.text('is_default'))


def downgrade() -> None:
    with op.batch_alter_table('deployed_models', schema=None) as batch_op:
        batch_op.drop_index('uq_deployed_models_default')
    with op.batch_alter_table('model_files', schema=None) as batch_op:
        batch_op.drop_column('upload_nonce')
