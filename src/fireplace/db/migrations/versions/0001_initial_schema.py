"""initial schema

Revision ID: 0001
Revises: 
"""
from alembic import op
import sqlalchemy as sa
import fireplace.db.base


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('accounts',
    sa.Column('account_id', sa.String(length=63), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('display_name', sa.String(length=4096), nullable=False),
    sa.Column('account_type', sa.String(length=32), nullable=False),
    sa.Column('state', sa.String(length=32), nullable=False),
    sa.Column('suspend_state', sa.String(length=32), nullable=False),
    sa.Column('is_public', sa.Boolean(), nullable=False),
    sa.Column('create_time', fireplace.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('update_time', fireplace.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('etag', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('account_id', name=op.f('pk_accounts')),
    sa.UniqueConstraint('email', name='uq_accounts_email')
    )
    op.create_table('datasets',
    sa.Column('account_id', sa.String(length=63), nullable=False),
    sa.Column('dataset_id', sa.String(length=63), nullable=False),
    sa.Column('state', sa.String(length=32), nullable=False),
    sa.Column('format', sa.String(length=32), nullable=False),
    sa.Column('example_count', sa.BigInteger(), nullable=False),
    sa.Column('estimated_token_count', sa.BigInteger(), nullable=False),
    sa.Column('size_bytes', sa.BigInteger(), nullable=False),
    sa.Column('blob_key', sa.String(length=1024), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('display_name', sa.String(length=4096), nullable=False),
    sa.Column('created_by', sa.String(length=320), nullable=False),
    sa.Column('create_time', fireplace.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('update_time', fireplace.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('etag', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('account_id', 'dataset_id', name=op.f('pk_datasets'))
    )
    op.create_table('deployed_models',
    sa.Column('account_id', sa.String(length=63), nullable=False),
    sa.Column('deployed_model_id', sa.String(length=63), nullable=False),
    sa.Column('model', sa.String(length=300), nullable=False),
    sa.Column('deployment', sa.String(length=300), nullable=False),
    sa.Column('state', sa.String(length=32), nullable=False),
    sa.Column('is_default', sa.Boolean(), nullable=False),
    sa.Column('is_addon', sa.Boolean(), nullable=False),
    sa.Column('description', sa.String(length=4096), nullable=False),
    sa.Column('public', sa.Boolean(), nullable=False),
    sa.Column('status_code', sa.String(length=32), nullable=False),
    sa.Column('status_message', sa.String(length=4096), nullable=False),
    sa.Column('display_name', sa.String(length=4096), nullable=False),
    sa.Column('created_by', sa.String(length=320), nullable=False),
    sa.Column('create_time', fireplace.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('update_time', fireplace.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('etag', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('account_id', 'deployed_model_id', name=op.f('pk_deployed_models')),
    sa.UniqueConstraint('account_id', 'model', 'deployment', name='uq_deployed_models_model_deployment')
    )
    with op.batch_alter_table('deployed_models', schema=None) as batch_op:
        batch_op.create_index('ix_deployed_models_deployment', ['deployment'], unique=False)
        batch_op.create_index('ix_deployed_models_model', ['model'], unique=False)

    op.create_table('deployments',
    sa.Column('account_id', sa.String(length=63), nullable=False),
    sa.Column('deployment_id', sa.String(length=63), nullable=False),
    sa.Column('base_model', sa.String(length=300), nullable=False),
    sa.Column('state', sa.String(length=32), nullable=False),
    sa.Column('description', sa.String(length=4096), nullable=False),
    sa.Column('enable_addons', sa.Boolean(), nullable=False),
    sa.Column('min_replica_count', sa.Integer(), nullable=False),
    sa.Column('max_replica_count', sa.Integer(), nullable=False),
    sa.Column('replica_count', sa.Integer(), nullable=False),
    sa.Column('desired_replica_count', sa.Integer(), nullable=False),
    sa.Column('status_code', sa.String(length=32), nullable=False),
    sa.Column('status_message', sa.String(length=4096), nullable=False),
    sa.Column('delete_time', fireplace.db.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('purge_time', fireplace.db.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('display_name', sa.String(length=4096), nullable=False),
    sa.Column('created_by', sa.String(length=320), nullable=False),
    sa.Column('create_time', fireplace.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('update_time', fireplace.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('etag', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('account_id', 'deployment_id', name=op.f('pk_deployments'))
    )
    with op.batch_alter_table('deployments', schema=None) as batch_op:
        batch_op.create_index('ix_deployments_base_model', ['base_model'], unique=False)

    op.create_table('models',
    sa.Column('account_id', sa.String(length=63), nullable=False),
    sa.Column('model_id', sa.String(length=63), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('state', sa.String(length=32), nullable=False),
    sa.Column('base_model', sa.String(length=300), nullable=False),
    sa.Column('public', sa.Boolean(), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('display_name', sa.String(length=4096), nullable=False),
    sa.Column('created_by', sa.String(length=320), nullable=False),
    sa.Column('create_time', fireplace.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('update_time', fireplace.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('etag', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('account_id', 'model_id', name=op.f('pk_models'))
    )
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_models_base_model'), ['base_model'], unique=False)

    op.create_table('platform_secrets',
    sa.Column('secret_id', sa.String(length=63), nullable=False),
    sa.Column('value', sa.String(length=128), nullable=False),
    sa.PrimaryKeyConstraint('secret_id', name=op.f('pk_platform_secrets'))
    )
    op.create_table('supervised_fine_tuning_jobs',
    sa.Column('account_id', sa.String(length=63), nullable=False),
    sa.Column('job_id', sa.String(length=63), nullable=False),
    sa.Column('state', sa.String(length=40), nullable=False),
    sa.Column('dataset', sa.String(length=300), nullable=False),
    sa.Column('evaluation_dataset', sa.String(length=300), nullable=False),
    sa.Column('base_model', sa.String(length=300), nullable=False),
    sa.Column('warm_start_from', sa.String(length=300), nullable=False),
    sa.Column('training_base_model', sa.String(length=300), nullable=False),
    sa.Column('output_model', sa.String(length=300), nullable=False),
    sa.Column('status_code', sa.String(length=32), nullable=False),
    sa.Column('status_message', sa.String(length=4096), nullable=False),
    sa.Column('completed_time', fireplace.db.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('job_progress', sa.JSON(), nullable=False),
    sa.Column('spec', sa.JSON(), nullable=False),
    sa.Column('display_name', sa.String(length=4096), nullable=False),
    sa.Column('created_by', sa.String(length=320), nullable=False),
    sa.Column('create_time', fireplace.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('update_time', fireplace.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('etag', sa.Integer(), nullable=False),
    sa.PrimaryKeyConstraint('account_id', 'job_id', name=op.f('pk_supervised_fine_tuning_jobs'))
    )
    with op.batch_alter_table('supervised_fine_tuning_jobs', schema=None) as batch_op:
        batch_op.create_index('ix_supervised_fine_tuning_jobs_dataset', ['dataset'], unique=False)
        batch_op.create_index('ix_supervised_fine_tuning_jobs_output_model', ['output_model'], unique=False)

    op.create_table('model_files',
    sa.Column('account_id', sa.String(length=63), nullable=False),
    sa.Column('model_id', sa.String(length=63), nullable=False),
    sa.Column('filename', sa.String(length=255), nullable=False),
    sa.Column('declared_size', sa.BigInteger(), nullable=True),
    sa.Column('size', sa.BigInteger(), nullable=True),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('staged_key', sa.String(length=600), nullable=False),
    sa.Column('create_time', fireplace.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('update_time', fireplace.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('etag', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['account_id', 'model_id'], ['models.account_id', 'models.model_id'], name=op.f('fk_model_files_account_id_models'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('account_id', 'model_id', 'filename', name=op.f('pk_model_files'))
    )
    op.create_table('quotas',
    sa.Column('account_id', sa.String(length=63), nullable=False),
    sa.Column('quota_id', sa.String(length=63), nullable=False),
    sa.Column('max_value', sa.BigInteger(), nullable=False),
    sa.Column('create_time', fireplace.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('update_time', fireplace.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('etag', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.account_id'], name=op.f('fk_quotas_account_id_accounts')),
    sa.PrimaryKeyConstraint('account_id', 'quota_id', name=op.f('pk_quotas'))
    )
    op.create_table('users',
    sa.Column('account_id', sa.String(length=63), nullable=False),
    sa.Column('user_id', sa.String(length=63), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('display_name', sa.String(length=4096), nullable=False),
    sa.Column('role', sa.String(length=32), nullable=False),
    sa.Column('state', sa.String(length=32), nullable=False),
    sa.Column('service_account', sa.Boolean(), nullable=False),
    sa.Column('is_platform_admin', sa.Boolean(), nullable=False),
    sa.Column('create_time', fireplace.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('update_time', fireplace.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('etag', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['accounts.account_id'], name=op.f('fk_users_account_id_accounts')),
    sa.PrimaryKeyConstraint('account_id', 'user_id', name=op.f('pk_users')),
    sa.UniqueConstraint('account_id', 'email', name='uq_users_account_email')
    )
    op.create_table('api_keys',
    sa.Column('account_id', sa.String(length=63), nullable=False),
    sa.Column('key_id', sa.String(length=63), nullable=False),
    sa.Column('user_id', sa.String(length=63), nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('display_name', sa.String(length=4096), nullable=False),
    sa.Column('expire_time', fireplace.db.base.UTCDateTime(timezone=True), nullable=True),
    sa.Column('revoked', sa.Boolean(), nullable=False),
    sa.Column('create_time', fireplace.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('update_time', fireplace.db.base.UTCDateTime(timezone=True), nullable=False),
    sa.Column('etag', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['account_id', 'user_id'], ['users.account_id', 'users.user_id'], name=op.f('fk_api_keys_account_id_users')),
    sa.PrimaryKeyConstraint('account_id', 'key_id', name=op.f('pk_api_keys')),
    sa.UniqueConstraint('key_hash', name=op.f('uq_api_keys_key_hash'))
    )


def downgrade() -> None:
    op.drop_table('api_keys')
    op.drop_table('users')
    op.drop_table('quotas')
    op.drop_table('model_files')
    with op.batch_alter_table('supervised_fine_tuning_jobs', schema=None) as batch_op:
        batch_op.drop_index('ix_supervised_fine_tuning_jobs_output_model')
        batch_op.drop_index('ix_supervised_fine_tuning_jobs_dataset')

    op.drop_table('supervised_fine_tuning_jobs')
    op.drop_table('platform_secrets')
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_models_base_model'))

    op.drop_table('models')
    with op.batch_alter_table('deployments', schema=None) as batch_op:
        batch_op.drop_index('ix_deployments_base_model')

    op.drop_table('deployments')
    with op.batch_alter_table('deployed_models', schema=None) as batch_op:
        batch_op.drop_index('ix_deployed_models_model')
        batch_op.drop_index('ix_deployed_models_deployment')

    op.drop_table('deployed_models')
    op.drop_table('datasets')
    op.drop_table('accounts')
