"""event_inbox.stores: the stores the token of the call that queued an event may use, so that the inbox routes
its commercetools resources to no other store (docs/track-event.md#stores)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04 10:00:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('event_inbox', schema=None) as batch_op:
        batch_op.add_column(sa.Column('stores', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('event_inbox', schema=None) as batch_op:
        batch_op.drop_column('stores')
