"""order_summary.shipment_state: the shipment state of the order version applied, so that review_request starts
when an order becomes Delivered, whichever message of the update brings it (NULL: a row written before this
revision, whose shipment state is not known)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 10:00:00.000000
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('order_summary', schema=None) as batch_op:
        batch_op.add_column(sa.Column('shipment_state', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('order_summary', schema=None) as batch_op:
        batch_op.drop_column('shipment_state')
