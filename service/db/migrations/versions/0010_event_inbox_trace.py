"""event_inbox.trace: the W3C trace context of the call that queued an event (issue 19)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03 09:15:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('event_inbox', schema=None) as batch_op:
        batch_op.add_column(sa.Column('trace', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('event_inbox', schema=None) as batch_op:
        batch_op.drop_column('trace')
