"""metered inference usage per (account, UTC day, model) (gateway metering)

Revision ID: 0005
Revises: 0004
"""
from alembic import op
import sqlalchemy as sa
import fireplace.db.base


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('inference_usage',
    sa.Column('account_id', sa.String(length=63), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('model', sa.String(length=300), nullable=False),
    sa.Column('requests', sa.BigInteger(), nullable=False),
    sa.Column('prompt_tokens', sa.BigInteger(), nullable=False),
    sa.Column('completion_tokens', sa.BigInteger(), nullable=False),
    sa.Column('update_time', fireplace.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('account_id', 'day', 'model', name=op.f('pk_inference_usage'))
    )


def downgrade() -> None:
    op.drop_table('inference_usage')
