"""writeback_write: the back-sync's own last write per commercetools resource (issue 18)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03 09:00:00.000000
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('writeback_write',
    sa.Column('project_key', sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
    sa.Column('resource_type', sqlmodel.sql.sqltypes.AutoString(length=50), nullable=False),
    sa.Column('resource_id', sqlmodel.sql.sqltypes.AutoString(length=300), nullable=False),
    sa.Column('version', sa.BigInteger(), nullable=False),
    sa.Column('shop_modified_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    sa.Column('updated_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('project_key', 'resource_type', 'resource_id', name=op.f('pk_writeback_write'))
    )


def downgrade() -> None:
    op.drop_table('writeback_write')
