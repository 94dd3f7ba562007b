"""fine-tuning runtime: progress, metrics, events, checkpoints (training)

Revision ID: 0003
Revises: 0002
"""
from alembic import op
import sqlalchemy as sa
import fireplace.db.base


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

_JOB_COLUMNS = ['account_id', 'job_id']
_JOB_REF = ['supervised_fine_tuning_jobs.account_id', 'supervised_fine_tuning_jobs.job_id']


def upgrade() -> None:
    with op.batch_alter_table('supervised_fine_tuning_jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('worker_attempt', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('worker_process_id', sa.String(length=63), nullable=False, server_default=''))
        batch_op.add_column(sa.Column('heartbeat_time', fireplace.db.base.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('restart_count', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('validation', sa.JSON(), nullable=False, server_default='{}'))

    op.create_table('sft_job_events',
    sa.Column('event_id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('account_id', sa.String(length=63), nullable=False),
    sa.Column('job_id', sa.String(length=63), nullable=False),
    sa.Column('create_time', fireplace.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('level', sa.String(length=16), nullable=False),
    sa.Column('type', sa.String(length=32), nullable=False),
    sa.Column('message', sa.String(length=4096), nullable=False),
    sa.Column('data', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(_JOB_COLUMNS, _JOB_REF, name=op.f('fk_sft_job_events_account_id_supervised_fine_tuning_jobs'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('event_id', name=op.f('pk_sft_job_events'))
    )
    with op.batch_alter_table('sft_job_events', schema=None) as batch_op:
        batch_op.create_index('ix_sft_job_events_job', ['account_id', 'job_id', 'event_id'], unique=False)

    op.create_table('sft_job_metrics',
    sa.Column('account_id', sa.String(length=63), nullable=False),
    sa.Column('job_id', sa.String(length=63), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('epoch', sa.Integer(), nullable=False),
    sa.Column('train_loss', sa.Float(), nullable=False),
    sa.Column('learning_rate', sa.Float(), nullable=False),
    sa.Column('grad_norm', sa.Float(), nullable=False),
    sa.Column('tokens', sa.BigInteger(), nullable=False),
    sa.Column('tokens_per_second', sa.Float(), nullable=False),
    sa.Column('eval_loss', sa.Float(), nullable=True),
    sa.Column('create_time', fireplace.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(_JOB_COLUMNS, _JOB_REF, name=op.f('fk_sft_job_metrics_account_id_supervised_fine_tuning_jobs'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('account_id', 'job_id', 'step', name=op.f('pk_sft_job_metrics'))
    )
    op.create_table('sft_job_checkpoints',
    sa.Column('account_id', sa.String(length=63), nullable=False),
    sa.Column('job_id', sa.String(length=63), nullable=False),
    sa.Column('step', sa.Integer(), nullable=False),
    sa.Column('epoch', sa.Integer(), nullable=False),
    sa.Column('blob_prefix', sa.String(length=600), nullable=False),
    sa.Column('is_final', sa.Boolean(), nullable=False),
    sa.Column('metrics', sa.JSON(), nullable=False),
    sa.Column('create_time', fireplace.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(_JOB_COLUMNS, _JOB_REF,
                            name=op.f('fk_sft_job_checkpoints_account_id_supervised_fine_tuning_jobs'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('account_id', 'job_id', 'step', name=op.f('pk_sft_job_checkpoints'))
    )


def downgrade() -> None:
    op.drop_table('sft_job_checkpoints')
    op.drop_table('sft_job_metrics')
    with op.batch_alter_table('sft_job_events', schema=None) as batch_op:
        batch_op.drop_index('ix_sft_job_events_job')
    op.drop_table('sft_job_events')
    with op.batch_alter_table('supervised_fine_tuning_jobs', schema=None) as batch_op:
        for column in ('validation', 'restart_count', 'heartbeat_time', 'worker_process_id', 'worker_attempt'):
            batch_op.drop_column(column)
