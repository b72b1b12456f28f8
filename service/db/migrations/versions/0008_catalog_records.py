"""catalog: the per-store catalog records and their content hashes (issue 15)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03 04:55:00.000000
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('catalog_record',
    sa.Column('store_key', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
    sa.Column('collection', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
    sa.Column('record_key', sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
    sa.Column('kind', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=False),
    sa.Column('product_id', sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    sa.Column('version', sa.BigInteger(), nullable=True),
    sa.Column('record', sa.JSON(), nullable=True),
    sa.Column('hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('sent_hash', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('rejected', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('pending', sa.Boolean(), nullable=False),
    sa.Column('import_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('seen_run', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
    sa.Column('updated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('store_key', 'collection', 'record_key', name=op.f('pk_catalog_record'))
    )
    with op.batch_alter_table('catalog_record', schema=None) as batch_op:
        batch_op.create_index('ix_catalog_record_pending', ['store_key', 'pending'], unique=False)
        batch_op.create_index('ix_catalog_record_product', ['store_key', 'product_id'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('catalog_record', schema=None) as batch_op:
        batch_op.drop_index('ix_catalog_record_product')
        batch_op.drop_index('ix_catalog_record_pending')
    op.drop_table('catalog_record')
