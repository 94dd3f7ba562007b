"""replicas registry and controller lease (serving)

Revision ID: 0002
Revises: 0001
"""
from alembic import op  # noqa: F401
import sqlalchemy as sa  # noqa: F401
import fireplace.db.base


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('replicas',
    sa.Column('replica_id', sa.String(length=63), nullable=False),
    sa.Column('deployment', sa.String(length=300), nullable=False),
    sa.Column('address', sa.String(length=300), nullable=False),
    sa.Column('secret', sa.String(length=128), nullable=False),
    sa.Column('state', sa.String(length=32), nullable=False),
    sa.Column('adapters', sa.JSON(), nullable=False),
    sa.Column('num_outstanding', sa.Integer(), nullable=False),
    sa.Column('deployment_etag', sa.Integer(), nullable=False),
    sa.Column('status_message', sa.String(length=4096), nullable=False),
    sa.Column('controller', sa.String(length=200), nullable=False),
    sa.Column('create_time', fireplace.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('update_time', fireplace.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('etag', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('replica_id', name=op.f('pk_replicas'))
    )
    op.create_index(op.f('ix_replicas_deployment'), 'replicas', ['deployment'], unique=False)
    op.create_table('controller_leases',
    sa.Column('name', sa.String(length=63), nullable=False),
    sa.Column('holder', sa.String(length=200), nullable=False),
    sa.Column('expire_time', fireplace.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_controller_leases'))
    )


def downgrade() -> None:
    op.drop_table('controller_leases')
    op.drop_index(op.f('ix_replicas_deployment'), table_name='replicas')
    op.drop_table('replicas')
