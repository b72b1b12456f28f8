"""Database tables (SQLModel). The schema is owned by the Alembic migrations in ``migrations/``;
``tests/test_migrations.py`` fails when these models and the migrations drift apart.

All timestamps are timezone-aware UTC (``ctdd.db.engine.utcnow``); SQLite stores them without offset.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Optional

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

# Naming convention so constraint names are identical on SQLite and PostgreSQL (migrations rely on it).
SQLModel.metadata.naming_convention = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

BigInt = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class OutboxStatus:
    """Lifecycle of an outbox message.

    ``pending`` -> ``in_flight`` (claimed, leased) -> ``delivered``; a retryable failure puts it back to
    ``pending`` with a later ``next_attempt_at``; a permanent failure (or too many attempts) makes it
    ``dead``; a message whose retryable failures outlast ``max_attempts`` is ``parked`` (kept, holding back the
    rest of its partition, until its account delivers again or an operator acts: ``ctdd.delivery.account_guard``).

    ``merged``: a pending contact upsert that nobody had claimed yet was coalesced into the earlier
    message of its partition (``merged_into``); it takes that message's final status (``delivered`` or
    ``dead``) when that message settles.
    """

    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    DELIVERED = "delivered"
    DEAD = "dead"
    PARKED = "parked"
    MERGED = "merged"
    #: dropped by an operator (``ctdd failures skip``) with a reason: final, it no longer holds back its partition
    SKIPPED = "skipped"

    #: statuses that still hold back later messages of the same partition
    BLOCKING = (PENDING, IN_FLIGHT, PARKED)


class Contact(SQLModel, table=True):
    """One person within one Dotdigital account: the unit of identity and of delivery order."""

    __tablename__ = "contact"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Optional[int] = Field(default=None, sa_column=sa.Column(BigInt, primary_key=True, autoincrement=True))
    account: str = Field(max_length=100, index=True)
    dotdigital_contact_id: Optional[int] = Field(default=None, sa_type=sa.BigInteger)
    #: current (normalised) email and E.164 mobile number as last accepted
    email: Optional[str] = Field(default=None, max_length=320)
    mobile_number: Optional[str] = Field(default=None, max_length=20)
    #: next per-partition outbox sequence number; updating it serialises writers of this contact
    next_sequence: int = Field(default=1, sa_type=sa.BigInteger)
    #: channel statuses as Dotdigital last reported them (upsert responses, back-sync) and since when:
    #: the consent rules compare shop opt-ins against these
    dd_email_status: Optional[str] = Field(default=None, max_length=40)
    dd_email_status_at: Optional[datetime] = None
    dd_sms_status: Optional[str] = Field(default=None, max_length=40)
    dd_sms_status_at: Optional[datetime] = None
    #: the newest consent decision the shop sent per channel ("subscribed"/"unsubscribed") and its time:
    #: back-sync skips a Dotdigital opt-out older than a later shop opt-in
    shop_email_consent: Optional[str] = Field(default=None, max_length=20)
    shop_email_consent_at: Optional[datetime] = None
    shop_sms_consent: Optional[str] = Field(default=None, max_length=20)
    shop_sms_consent_at: Optional[datetime] = None
    created_at: datetime
    updated_at: datetime


class ContactIdentifier(SQLModel, table=True):
    """An identifier (customer id, email, mobile, anonymous id, Dotdigital contact id) of a contact.

    Unique per account and kind: one identifier value can belong to one contact only.
    """

    __tablename__ = "contact_identifier"
    __table_args__ = (
        sa.UniqueConstraint("account", "kind", "value"),
        {"sqlite_autoincrement": True},
    )

    id: Optional[int] = Field(default=None, sa_column=sa.Column(BigInt, primary_key=True, autoincrement=True))
    account: str = Field(max_length=100)
    kind: str = Field(max_length=32)
    value: str = Field(max_length=400)
    contact_id: int = Field(sa_column=sa.Column(BigInt, sa.ForeignKey("contact.id"), nullable=False, index=True))
    created_at: datetime


class FieldState(SQLModel, table=True):
    """What was last enqueued for one Dotdigital field of a contact, and from which source version."""

    __tablename__ = "field_state"

    contact_id: int = Field(sa_column=sa.Column(BigInt, sa.ForeignKey("contact.id"), primary_key=True))
    field: str = Field(primary_key=True, max_length=200)
    value: Optional[Any] = Field(default=None, sa_column=sa.Column(sa.JSON, nullable=True))
    source_ref: Optional[str] = Field(default=None, max_length=300)
    source_version: Optional[int] = Field(default=None, sa_type=sa.BigInteger)
    source_ts: Optional[datetime] = None
    #: outbox message that carried this value (used to forget it when that message dies)
    message_id: Optional[int] = Field(default=None, sa_type=sa.BigInteger)
    updated_at: datetime


class OutboxMessage(SQLModel, table=True):
    """A unit of work for Dotdigital, delivered in ``sequence`` order within its ``partition_key``."""

    __tablename__ = "outbox_message"
    __table_args__ = (
        sa.UniqueConstraint("partition_key", "sequence"),
        sa.Index("ix_outbox_message_status_next_attempt_at", "status", "next_attempt_at"),
        # Backstop for ordering: at most one in-flight message per partition (procrastinate's lock index).
        sa.Index(
            "uq_outbox_message_in_flight_partition",
            "partition_key",
            unique=True,
            sqlite_where=sa.text("status = 'in_flight'"),
            postgresql_where=sa.text("status = 'in_flight'"),
        ),
        # Claims: scan only pending rows, in claim order (priority, id).
        sa.Index(
            "ix_outbox_message_pending_claim_order",
            "priority",
            "id",
            sqlite_where=sa.text("status = 'pending'"),
            postgresql_where=sa.text("status = 'pending'"),
        ),
        # The "earlier blocking message of my partition?" check looks only at unsettled rows, so it
        # stays cheap however much delivered history a contact has.
        sa.Index(
            "ix_outbox_message_unsettled_partition_sequence",
            "partition_key",
            "sequence",
            sqlite_where=sa.text("status IN ('pending', 'in_flight', 'parked')"),
            postgresql_where=sa.text("status IN ('pending', 'in_flight', 'parked')"),
        ),
        # Lease heartbeat and rescue.
        sa.Index(
            "ix_outbox_message_in_flight_lease",
            "lease_owner",
            "lease_expires_at",
            sqlite_where=sa.text("status = 'in_flight'"),
            postgresql_where=sa.text("status = 'in_flight'"),
        ),
        sa.Index(
            "ix_outbox_message_merged_into",
            "merged_into",
            sqlite_where=sa.text("merged_into IS NOT NULL"),
            postgresql_where=sa.text("merged_into IS NOT NULL"),
        ),
        {"sqlite_autoincrement": True},
    )

    id: Optional[int] = Field(default=None, sa_column=sa.Column(BigInt, primary_key=True, autoincrement=True))
    #: "<account>:<contact id>": messages of one partition are delivered strictly in sequence order
    partition_key: str = Field(max_length=200)
    sequence: int = Field(sa_type=sa.BigInteger)
    account: str = Field(max_length=100)
    contact_id: Optional[int] = Field(default=None, sa_type=sa.BigInteger)
    kind: str = Field(max_length=50)
    payload: Any = Field(sa_column=sa.Column(sa.JSON, nullable=False))
    #: 0 = live, higher = later (backfills); claims take lower values first across partitions
    priority: int = Field(default=0, sa_column=sa.Column(sa.SmallInteger, nullable=False, server_default="0"))
    status: str = Field(default=OutboxStatus.PENDING, max_length=20)
    attempts: int = 0
    next_attempt_at: datetime
    lease_owner: Optional[str] = Field(default=None, max_length=200)
    lease_expires_at: Optional[datetime] = None
    last_response_code: Optional[int] = None
    last_error: Optional[str] = Field(default=None, sa_type=sa.Text)
    store_key: Optional[str] = Field(default=None, max_length=100)
    record_type: Optional[str] = Field(default=None, max_length=50)
    record_id: Optional[str] = Field(default=None, max_length=200)
    record_version: Optional[int] = Field(default=None, sa_type=sa.BigInteger)
    #: set when this message was coalesced into an earlier pending message of its partition
    merged_into: Optional[int] = Field(default=None, sa_type=sa.BigInteger)
    #: the Dotdigital bulk import carrying this message while it is in flight; kept if its worker dies, so
    #: the next worker waits for that import to finish before sending anything newer for the contact
    bulk_import_id: Optional[str] = Field(default=None, max_length=64)
    created_at: datetime
    updated_at: datetime
    delivered_at: Optional[datetime] = None


class DeliveryAttempt(SQLModel, table=True):
    """One delivery attempt of an outbox message: the audit trail of response codes and errors."""

    __tablename__ = "delivery_attempt"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Optional[int] = Field(default=None, sa_column=sa.Column(BigInt, primary_key=True, autoincrement=True))
    message_id: int = Field(sa_column=sa.Column(BigInt, nullable=False, index=True))
    attempt: int
    #: delivered | retry | dead | parked; resumed (a parked message resumed because its account delivered another
    #: message: ctdd.delivery.pauses.park_counts); redriven | skipped (an operator's action)
    outcome: str = Field(max_length=20)
    response_code: Optional[int] = None
    error: Optional[str] = Field(default=None, sa_type=sa.Text)
    worker: Optional[str] = Field(default=None, max_length=200)
    started_at: datetime
    finished_at: datetime


class RejectedRecord(SQLModel, table=True):
    """A record refused at the API boundary, with the reason. Personal data is not stored here."""

    __tablename__ = "rejected_record"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Optional[int] = Field(default=None, sa_column=sa.Column(BigInt, primary_key=True, autoincrement=True))
    operation: str = Field(max_length=50)
    store_key: Optional[str] = Field(default=None, max_length=100)
    record_type: Optional[str] = Field(default=None, max_length=50)
    record_id: Optional[str] = Field(default=None, max_length=200)
    record_version: Optional[int] = Field(default=None, sa_type=sa.BigInteger)
    reason: str = Field(sa_type=sa.Text)
    violations: Any = Field(default=None, sa_column=sa.Column(sa.JSON, nullable=True))
    created_at: datetime


class IdentityConflictRecord(SQLModel, table=True):
    """An identifier that a request tried to give to a contact while another contact owned it."""

    __tablename__ = "identity_conflict"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Optional[int] = Field(default=None, sa_column=sa.Column(BigInt, primary_key=True, autoincrement=True))
    account: str = Field(max_length=100)
    kind: str = Field(max_length=32)
    #: sha256 of the identifier value (no personal data in the review log)
    value_hash: str = Field(max_length=64)
    owner_contact_id: int = Field(sa_type=sa.BigInteger)
    requested_contact_id: int = Field(sa_type=sa.BigInteger)
    rule: str = Field(max_length=200)
    created_at: datetime


class ProcessedEvent(SQLModel, table=True):
    """A commercetools notification or behavioural event already applied (the dedupe record).

    Inserted in the same transaction as the event's effects, so a redelivery is recognised exactly
    when the first delivery's effects were committed: at-least-once delivery, exactly-once effect.
    """

    __tablename__ = "processed_event"

    dedupe_key: str = Field(primary_key=True, max_length=300)
    store_key: str = Field(max_length=100)
    resource_type: Optional[str] = Field(default=None, max_length=50)
    resource_id: Optional[str] = Field(default=None, max_length=200)
    outcome: str = Field(max_length=20)
    processed_at: datetime


class ResourceState(SQLModel, table=True):
    """Highest commercetools resource version applied per resource: older notifications are stale."""

    __tablename__ = "resource_state"

    project_key: str = Field(primary_key=True, max_length=100)
    resource_type: str = Field(primary_key=True, max_length=50)
    resource_id: str = Field(primary_key=True, max_length=200)
    version: int = Field(sa_type=sa.BigInteger)
    contact_id: Optional[int] = Field(default=None, sa_type=sa.BigInteger)
    updated_at: datetime
    #: a customer deleted in commercetools: "deleted", or "erased" (deleted with dataErasure); None otherwise
    deleted: Optional[str] = Field(default=None, max_length=20)


class OrderSummary(SQLModel, table=True):
    """What ctdd-sync knows of one order of a contact; contact aggregates are recomputed from these rows,
    so they stay right whatever order (or how many times) the events arrive in."""

    __tablename__ = "order_summary"
    __table_args__ = (sa.Index("ix_order_summary_contact_id", "contact_id"),)

    project_key: str = Field(primary_key=True, max_length=100)
    order_id: str = Field(primary_key=True, max_length=200)
    contact_id: int = Field(sa_type=sa.BigInteger)
    order_key: str = Field(max_length=200)
    version: int = Field(sa_type=sa.BigInteger)
    created_at: datetime
    total: float
    currency: str = Field(max_length=3)
    store_key: Optional[str] = Field(default=None, max_length=100)
    locale: Optional[str] = Field(default=None, max_length=20)
    order_state: str = Field(max_length=20)
    #: the order's ``shipmentState`` ("" when it has none); NULL only in rows written before it was kept
    #: (unknown: review_request then starts on an ``OrderShipmentStateChanged`` to Delivered, as it did)
    shipment_state: Optional[str] = Field(default=None, max_length=20)
    refund_total: float = 0.0
    categories: Any = Field(default=None, sa_column=sa.Column(sa.JSON, nullable=True))
    updated_at: datetime


class BacksyncCursor(SQLModel, table=True):
    """Where the back-sync (``ctdd.backsync.feeds``) of one Dotdigital account stands.

    Each feed's cursor is the time its last complete poll started; the next poll asks the feed from the
    cursor minus ``[backsync] overlap_seconds``. A poll leases the row (``lease_owner`` until
    ``lease_expires_at``), so processes sharing one database poll an account in turn.
    """

    __tablename__ = "backsync_cursor"

    account: str = Field(primary_key=True, max_length=100)
    #: GET /v2/contacts/suppressed-since/{date}
    suppressed_since: Optional[datetime] = None
    #: GET /v2/contacts/unsubscribed-since/{date}
    unsubscribed_since: Optional[datetime] = None
    #: GET /contacts/v3?~modified=gte::<ts> (SMS channel changes)
    modified_since: Optional[datetime] = None
    last_poll_at: Optional[datetime] = None
    lease_owner: Optional[str] = Field(default=None, max_length=200)
    lease_expires_at: Optional[datetime] = None
    updated_at: datetime


class WritebackWrite(SQLModel, table=True):
    """The back-sync's last write of one commercetools resource (``ctdd.backsync.writeback``): the version
    commercetools answered the write with, and the last modification of the resource by anyone else before it.

    While the resource is still at ``version``, its ``lastModifiedAt`` is the back-sync's own write, not a shop
    change: a Dotdigital change is weighed against ``shop_modified_at`` instead. Any other write moves the
    version on, and its ``lastModifiedAt`` counts again.
    """

    __tablename__ = "writeback_write"

    project_key: str = Field(primary_key=True, max_length=100)
    #: ``customer`` or ``key-value-document`` (a guest's CustomObject)
    resource_type: str = Field(primary_key=True, max_length=50)
    #: the customer id, or ``<container>/<key>`` of the CustomObject
    resource_id: str = Field(primary_key=True, max_length=300)
    version: int = Field(sa_type=sa.BigInteger)
    shop_modified_at: Optional[datetime] = None
    updated_at: datetime


class InboxStatus:
    """Lifecycle of a queued event: ``pending`` -> ``done`` (applied, or found duplicate/stale/ignored),
    ``rejected`` (can never be applied: logged in ``rejected_record``) or ``failed`` (retryable errors
    until ``[inbox] max_attempts``: logged too)."""

    PENDING = "pending"
    DONE = "done"
    REJECTED = "rejected"
    FAILED = "failed"
    #: a failed or rejected event an operator dropped (``ctdd failures skip``); the reason is in ``outcome``
    SKIPPED = "skipped"


class EventInbox(SQLModel, table=True):
    """A TrackEvent accepted with PROCESSING_QUEUED, waiting for (or finished by) the inbox processor.

    The row holds the request as received (serialized ``TrackEventRequest``); ``dedupe_key`` (the
    commercetools message id or the behavioural event id, when the request has exactly one) answers
    a redelivery of a queued event with ``duplicate`` at once. Done rows stay as that dedupe record.
    """

    __tablename__ = "event_inbox"
    __table_args__ = (
        sa.UniqueConstraint("dedupe_key"),
        # Claims: pending rows in arrival order.
        sa.Index(
            "ix_event_inbox_pending_claim_order",
            "id",
            sqlite_where=sa.text("status = 'pending'"),
            postgresql_where=sa.text("status = 'pending'"),
        ),
        {"sqlite_autoincrement": True},
    )

    id: Optional[int] = Field(default=None, sa_column=sa.Column(BigInt, primary_key=True, autoincrement=True))
    dedupe_key: Optional[str] = Field(default=None, max_length=300)
    store_key: str = Field(max_length=100)
    #: the serialized TrackEventRequest
    request: bytes = Field(sa_column=sa.Column(sa.LargeBinary, nullable=False))
    status: str = Field(default=InboxStatus.PENDING, max_length=20)
    attempts: int = 0
    next_attempt_at: datetime
    lease_owner: Optional[str] = Field(default=None, max_length=200)
    lease_expires_at: Optional[datetime] = None
    #: outcome of each notification, comma-separated (applied, duplicate, stale, ignored)
    outcome: Optional[str] = Field(default=None, max_length=200)
    last_error: Optional[str] = Field(default=None, sa_type=sa.Text)
    received_at: datetime
    processed_at: Optional[datetime] = None
    #: the W3C trace context (``traceparent`` / ``tracestate``, JSON) of the call that queued the event, kept only
    #: while tracing is on: the event is applied in it, so its outbox messages link to the caller's trace
    trace: Optional[str] = Field(default=None, sa_type=sa.Text)
    #: a hash of the event's cart or contact identity (0-32767; 0 when it has none): a worker's apply lanes each claim the
    #: rows of their own lanes (``lane % lanes``), so that they apply disjoint contacts side by side
    lane: int = Field(default=0, sa_column=sa.Column(sa.SmallInteger, nullable=False, server_default="0"))
    #: the stores the token of the call that queued the event may use (a JSON array; NULL: every store): its
    #: commercetools resources are applied under no other store (``ctdd.domain.store_routing``)
    stores: Optional[str] = Field(default=None, sa_type=sa.Text)


# -- programs: cart state, durable trigger timers, enrolment calls ---------------------------------------------


class CartStatus:
    """``cart.state``: commercetools' ``cartState`` plus what ctdd-sync learnt (an empty cart stays Active)."""

    ACTIVE = "Active"
    ORDERED = "Ordered"
    MERGED = "Merged"
    FROZEN = "Frozen"


class Cart(SQLModel, table=True):
    """The last known state of one commercetools cart of a store (from cart_updated events, the cart watcher,
    ResourceCreated notifications and orders): what the trigger safeguards read at the moment of sending."""

    __tablename__ = "cart"
    __table_args__ = (
        sa.Index("ix_cart_contact_id", "contact_id"),
        sa.Index("ix_cart_anonymous_id", "store_key", "anonymous_id"),
    )

    store_key: str = Field(primary_key=True, max_length=100)
    cart_id: str = Field(primary_key=True, max_length=200)
    version: int = Field(sa_type=sa.BigInteger)
    #: the contact the cart is attributed to (None: an anonymous cart without an email, not attributable yet)
    contact_id: Optional[int] = Field(default=None, sa_type=sa.BigInteger)
    customer_id: Optional[str] = Field(default=None, max_length=200)
    anonymous_id: Optional[str] = Field(default=None, max_length=200)
    state: str = Field(max_length=20)
    line_item_count: int = 0
    #: the cart's own lastModifiedAt (its latest change)
    last_modified_at: datetime
    order_id: Optional[str] = Field(default=None, max_length=200)
    ordered_at: Optional[datetime] = None
    #: the cart this one was merged into at login (the anonymous cart counts once, as that cart)
    merged_into: Optional[str] = Field(default=None, max_length=200)
    updated_at: datetime


class ProductView(SQLModel, table=True):
    """The latest view of a product by a contact in a store (browse abandonment reads them)."""

    __tablename__ = "product_view"

    store_key: str = Field(primary_key=True, max_length=100)
    contact_id: int = Field(primary_key=True, sa_type=sa.BigInteger)
    product_id: str = Field(primary_key=True, max_length=200)
    viewed_at: datetime
    data: Any = Field(default=None, sa_column=sa.Column(sa.JSON, nullable=True))


class TriggerStatus:
    """Lifecycle of a program trigger: ``pending`` (timer running) -> ``claimed`` (leased by a processor
    deciding it) -> ``sent`` | ``skipped`` (with its reason) | ``cancelled`` (its subject changed: a newer
    cart version, an order, a cancellation); ``enrolling`` while its enrolment call is in flight."""

    PENDING = "pending"
    CLAIMED = "claimed"
    ENROLLING = "enrolling"
    SENT = "sent"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"


class ProgramTrigger(SQLModel, table=True):
    """A durable timer: contact X enters program P for subject S (a cart version, an order, a browse session)
    at ``due_at``, unless a safeguard says otherwise when it is due. One row per subject version and step, so
    a restart or a crashed worker neither loses nor duplicates a trigger."""

    __tablename__ = "program_trigger"
    __table_args__ = (
        sa.UniqueConstraint("store_key", "program_kind", "subject_type", "subject_id", "subject_version", "step"),
        sa.Index("ix_program_trigger_due", "status", "due_at"),
        sa.Index("ix_program_trigger_contact_id", "contact_id"),
        # cancelling a subject's triggers filters without program_kind (the unique index cannot serve it)
        sa.Index("ix_program_trigger_subject", "store_key", "subject_type", "subject_id"),
    )

    id: Optional[int] = Field(default=None, primary_key=True, sa_type=BigInt)
    store_key: str = Field(max_length=100)
    account: str = Field(max_length=100)
    #: abandoned_cart | browse_abandonment | post_purchase_first | post_purchase_repeat | review_request
    program_kind: str = Field(max_length=40)
    contact_id: int = Field(sa_type=sa.BigInteger)
    #: cart | order | browse
    subject_type: str = Field(max_length=20)
    subject_id: str = Field(max_length=200)
    subject_version: int = Field(default=0, sa_type=sa.BigInteger)
    #: 1..3: the step of a series (reminders)
    step: int = 1
    due_at: datetime
    #: the step's first due time (``due_at`` moves on a deferral): ``max_age_hours`` counts from it
    first_due_at: Optional[datetime] = None
    status: str = Field(max_length=20)
    reason: Optional[str] = Field(default=None, max_length=500)
    lease_owner: Optional[str] = Field(default=None, max_length=200)
    lease_expires_at: Optional[datetime] = None
    #: the Dotdigital program the trigger went to, and how (enrolment id, or the list joined)
    program_id: Optional[int] = Field(default=None, sa_type=sa.BigInteger)
    enrolment_id: Optional[str] = Field(default=None, max_length=100)
    #: ``enrolling``: the ``enrolment_call`` that carries it (None while it waits for its batch)
    enrolment_call_id: Optional[int] = Field(default=None, sa_type=sa.BigInteger)
    attempts: int = 0
    created_at: datetime
    decided_at: Optional[datetime] = None


class EnrolmentCall(SQLModel, table=True):
    """One ``POST /v2/programs/enrolments`` (Dotdigital allows 20 an hour per account, across programs): the
    durable budget every worker counts against, and the enrolment whose status and faults are read later."""

    __tablename__ = "enrolment_call"
    __table_args__ = (sa.Index("ix_enrolment_call_account_called_at", "account", "called_at"),)

    id: Optional[int] = Field(default=None, primary_key=True, sa_type=BigInt)
    account: str = Field(max_length=100)
    program_id: int = Field(sa_type=sa.BigInteger)
    called_at: datetime
    contact_count: int = 0
    #: the enrolment's id (None when the call failed), its last known status and the error code of a failure
    enrolment_id: Optional[str] = Field(default=None, max_length=100)
    status: str = Field(max_length=40)
    error_code: Optional[str] = Field(default=None, max_length=100)
    faults: Any = Field(default=None, sa_column=sa.Column(sa.JSON, nullable=True))
    finished_at: Optional[datetime] = None


class Lease(SQLModel, table=True):
    """A named lease held by one process at a time (the cart watcher of a store, the enrolment batcher of an
    account), taken over when it expires; ``cursor`` keeps where the holder got to."""

    __tablename__ = "lease"

    name: str = Field(primary_key=True, max_length=200)
    owner: Optional[str] = Field(default=None, max_length=200)
    expires_at: Optional[datetime] = None
    cursor: Any = Field(default=None, sa_column=sa.Column(sa.JSON, nullable=True))
    updated_at: datetime


class CatalogRecord(SQLModel, table=True):
    """One record of a store's catalog collection (a product, a variant or a category) as ctdd-sync wants it
    in Dotdigital (``record``/``hash``, None when it must be removed) and as Dotdigital has it (``sent_hash``).

    ``pending`` marks a difference still to deliver; ``import_id`` the bulk import carrying it (kept when the
    process dies, so the next one reads that import's report instead of sending again); ``rejected`` the
    hash Dotdigital refused (not sent again until the content changes); ``seen_run`` the last full export
    that read it (what a full export did not see has left the store). ``version`` is the product version
    the record was built from: older product messages do not overwrite newer data.
    """

    __tablename__ = "catalog_record"
    __table_args__ = (
        sa.Index("ix_catalog_record_pending", "store_key", "pending"),
        sa.Index("ix_catalog_record_product", "store_key", "product_id"),
    )

    store_key: str = Field(primary_key=True, max_length=100)
    collection: str = Field(primary_key=True, max_length=256)
    record_key: str = Field(primary_key=True, max_length=256)
    kind: str = Field(max_length=20)  # product | category
    product_id: Optional[str] = Field(default=None, max_length=200)
    version: Optional[int] = Field(default=None, sa_type=sa.BigInteger)
    record: Optional[Any] = Field(default=None, sa_column=sa.Column(sa.JSON, nullable=True))
    hash: Optional[str] = Field(default=None, max_length=64)
    sent_hash: Optional[str] = Field(default=None, max_length=64)
    rejected: Optional[str] = Field(default=None, max_length=64)
    pending: bool = Field(default=False)
    import_id: Optional[str] = Field(default=None, max_length=64)
    seen_run: Optional[str] = Field(default=None, max_length=64)
    updated_at: datetime
