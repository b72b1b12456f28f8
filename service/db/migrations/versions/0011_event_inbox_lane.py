"""event_inbox.lane: a hash of the event's contact identity, so that the apply lanes of a worker take disjoint
contacts (issue 16)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03 19:00:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('event_inbox', schema=None) as batch_op:
        batch_op.add_column(sa.Column('lane', sa.SmallInteger(), nullable=False, server_default='0'))


def downgrade() -> None:
    with op.batch_alter_table('event_inbox', schema=None) as batch_op:
        batch_op.drop_column('lane')
