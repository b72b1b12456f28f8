"""resource_state.deleted: a commercetools customer deleted ("deleted") or deleted with dataErasure ("erased"), so
that a later message of one of its orders neither links the deleted customer id to a contact again nor, after an
erasure, brings the erased contact back (NULL: not deleted)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04 10:00:00.000000
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('resource_state', schema=None) as batch_op:
        batch_op.add_column(sa.Column('deleted', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('resource_state', schema=None) as batch_op:
        batch_op.drop_column('deleted')
