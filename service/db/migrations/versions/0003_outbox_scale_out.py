"""outbox scale-out: coalescing (merged_into), bulk import tracking, indexes for claims, heartbeats, rescues

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""
from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('outbox_message', schema=None) as batch_op:
        batch_op.add_column(sa.Column('merged_into', sa.BigInteger(), nullable=True))
        batch_op.add_column(sa.Column('bulk_import_id', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))
        batch_op.create_index('ix_outbox_message_in_flight_lease', ['lease_owner', 'lease_expires_at'], unique=False, sqlite_where=sa.text("status = 'in_flight'"), postgresql_where=sa.text("status = 'in_flight'"))
        batch_op.create_index('ix_outbox_message_merged_into', ['merged_into'], unique=False, sqlite_where=sa.text('merged_into IS NOT NULL'), postgresql_where=sa.text('merged_into IS NOT NULL'))
        batch_op.create_index('ix_outbox_message_pending_claim_order', ['priority', 'id'], unique=False, sqlite_where=sa.text("status = 'pending'"), postgresql_where=sa.text("status = 'pending'"))
        batch_op.create_index('ix_outbox_message_unsettled_partition_sequence', ['partition_key', 'sequence'], unique=False, sqlite_where=sa.text("status IN ('pending', 'in_flight', 'parked')"), postgresql_where=sa.text("status IN ('pending', 'in_flight', 'parked')"))


def downgrade() -> None:
    with op.batch_alter_table('outbox_message', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_message_unsettled_partition_sequence', sqlite_where=sa.text("status IN ('pending', 'in_flight', 'parked')"), postgresql_where=sa.text("status IN ('pending', 'in_flight', 'parked')"))
        batch_op.drop_index('ix_outbox_message_pending_claim_order', sqlite_where=sa.text("status = 'pending'"), postgresql_where=sa.text("status = 'pending'"))
        batch_op.drop_index('ix_outbox_message_merged_into', sqlite_where=sa.text('merged_into IS NOT NULL'), postgresql_where=sa.text('merged_into IS NOT NULL'))
        batch_op.drop_index('ix_outbox_message_in_flight_lease', sqlite_where=sa.text("status = 'in_flight'"), postgresql_where=sa.text("status = 'in_flight'"))
        batch_op.drop_column('bulk_import_id')
        batch_op.drop_column('merged_into')
