"""TrackEvent: commercetools notifications and behavioural events -> contact updates and insight data.

For each notification of a delivery:

1. ignore subscription test notifications and notifications of another commercetools project;
2. drop duplicates (``processed_event``: the commercetools message id, or a synthetic key) and stale
   notifications (``resource_state``: a resource version not newer than the one already applied);
3. get the resource: the full resource a message carries (``CustomerCreated``, ``OrderCreated`` ...) or,
   for other messages, change notifications and ``payloadNotIncluded``, the current resource from the
   commercetools API ("notify, then fetch": order of arrival stops mattering); an order, cart or customer is
   then applied under the store(s) it names among those of the project, whatever store the call named
   (``ctdd.domain.store_routing``; ``_routed``: only stores the caller's token may use);
4. apply, in ONE transaction with the dedupe record and the new resource version: customers go through the
   same core as SyncContact; orders become a record of the contact-scoped ``Orders`` collection plus
   recomputed contact aggregates (last order, number of orders, spend ...); carts (``cart_updated`` events,
   ``ResourceCreated`` for a cart, the cart watcher's :meth:`EventProcessor.cart_unit`, the cart of a new
   order) go through ``ctdd.ingest.carts``; the programs hear of carts, orders and product views through
   ``ctdd.ingest.triggers``; product and inventory messages update the catalog records of stores whose
   catalog is enabled (``ctdd.catalog.realtime``).

Steps 1-3 are *preparation* (``prepare_delivery`` / ``prepare_behavioural``: parsing, fetching, pure
mapping; async, no writes) and yield one :data:`Step` per notification: either a final outcome or a unit of
work (``fn(session) -> NotificationOutcome``) for step 4. ``process_delivery`` / ``process_behavioural``
apply the units at once through the transaction runner (TrackEvent with PROCESSING_APPLIED); the inbox
processor (``ctdd.ingest.inbox``) applies the units of many queued events in one transaction.

Fetch failures raise :class:`RetryableEventError` during preparation, before anything of the event was
written: TrackEvent answers UNAVAILABLE and the transport retries the delivery; the inbox retries the event.
"""

from __future__ import annotations

import hashlib
import logging
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Callable, Mapping, NamedTuple, Union

import sqlalchemy as sa
from sqlalchemy.orm import Session

from ctdd.commercetools.clients import CommercetoolsClients
from ctdd.delivery import outbox
from ctdd.config import Settings, StoreConfig
from ctdd.ingest.access import DirectAccess, processed_row
from ctdd.ingest.contact_sync import ContactSync, NewContactNeedsAddress
from ctdd.ingest.plans import ContactPlan, InsightPart, ViewPart, enqueue_insight, insight_path
from ctdd.hooks.types import HookContext, PluginFailed
from ctdd.db.engine import utcnow
from ctdd.db.models import (Cart, Contact, ContactIdentifier, FieldState, OrderSummary, ProcessedEvent, RejectedRecord,
                             ResourceState)
from ctdd.domain.collections import (
    BROWSE_COLLECTION,
    CUSTOM_EVENTS_COLLECTION,
    ORDERS_COLLECTION,
)
from ctdd.domain.commerce import (
    OrderContext,
    SummaryRow,
    absent_customer_attributes,
    became_delivered,
    customer_to_contact,
    localized,
    order_aggregates,
    order_email,
    order_without_email,
    order_record,
    order_summary_values,
    parse_ts,
    refund_total,
)
from ctdd.domain import programs as program_rules
from ctdd.domain.behaviour import BehaviouralEventInput
from ctdd.domain.contact import ContactInput, Identity, SourceStamp
from ctdd.domain.identity import customer_key
from ctdd.domain.echo import echo
from ctdd.domain.resources import InvalidResource, check_resource
from ctdd.domain.notifications import InvalidDelivery, Notification, UnsupportedNotification, parse_delivery
from ctdd.domain.store_routing import route
from ctdd.db.transactions import TransactionRunner
from ctdd.ingest import carts, triggers
from ctdd.catalog.realtime import CatalogChange, CatalogRealtime
from ctdd.commercetools.errors import CommercetoolsError

log = logging.getLogger(__name__)


APPLIED, DUPLICATE, STALE, IGNORED = "applied", "duplicate", "stale", "ignored"


class PreviousOrder(NamedTuple):
    """An order's summary row as it was before an order version was applied to it (``_upsert_summary``)."""

    order_state: str
    refund_total: float
    #: ``None``: not known (a row written before ``order_summary.shipment_state`` existed)
    shipment_state: str | None
    #: False when the version applied was older than the row's (a refund re-reading the order): row unchanged
    written: bool
    #: the key of the order's Orders record until then (``order_key``: its number, else its id) and its contact
    order_key: str
    contact_id: int


#: order messages that carry the full order (no fetch needed unless payloadNotIncluded)
ORDER_WITH_PAYLOAD = frozenset({"OrderCreated", "OrderImported", "OrderCreatedFromRecurringOrder"})
#: order messages of an order placed just now (an imported order is history: no purchase now)
ORDER_CREATED = frozenset({"OrderCreated", "OrderCreatedFromRecurringOrder"})
CUSTOMER_DELETED = frozenset({"CustomerDeleted"})
#: how long an order of an unknown customer (no email, no commercetools API client to fetch the customer
#: with) is held for its CustomerCreated to arrive - subscription messages come in any order - counted from
#: the order message's time (``createdAt``, else the order's ``lastModifiedAt``/``createdAt``): retried until
#: then (TrackEvent answers UNAVAILABLE, the inbox retries with backoff), rejected with the reason after it
UNKNOWN_CUSTOMER_WAIT = timedelta(hours=1)
#: a project whose discount codes could not be read (no view_discount_codes scope) is not asked again this long
CODES_OFF_SECONDS = 3600
#: resource_state.deleted of a customer commercetools deleted: plainly, or with dataErasure
DELETED, ERASED = "deleted", "erased"


class InvalidEvent(ValueError):
    """The event can never be processed (poison): the message is safe to show and log."""


#: the customers that the notifications before the one being prepared, in the same delivery, create, as
#: (customer id, store key) pairs: the stores each is applied under (``ctdd.domain.store_routing``)
_CREATED_BEFORE: ContextVar[frozenset[tuple[str, str]]] = ContextVar("ctdd_created_before", default=frozenset())


class NotConfigured(Exception):
    """The event needs what this deployment has not configured (a store's commercetools API client to fetch
    with): not the caller's fault, and not retried as if it were passing; kept (the inbox's ``failed``, an
    adapter's dead letters) until the operator fixes the configuration and retries it."""


class RetryableEventError(Exception):
    """The event could not be processed now (commercetools unreachable ...); retry the delivery later."""


@dataclass
class NotificationOutcome:
    dedupe_key: str
    resource_type: str = ""
    resource_id: str = ""
    message_type: str = ""
    outcome: str = APPLIED
    reason: str = ""
    contact_id: int | None = None
    outbox_message_ids: list[int] = field(default_factory=list)
    #: the stores it is applied under: the caller's, unless its resource names others (ctdd.domain.store_routing);
    #: empty when it was ignored before a store was chosen
    store_keys: list[str] = field(default_factory=list)

    def reset(self) -> None:
        self.outcome, self.reason, self.contact_id, self.outbox_message_ids = APPLIED, "", None, []


#: what preparing a notification yields: its final outcome, or the unit of work that applies it
Step = Union[NotificationOutcome, Callable[[Session], NotificationOutcome]]


def behavioural_dedupe_key(store_key: str, event_id: str) -> str:
    return f"event:{store_key}:{event_id}"


def _checked(resource: str, found: Any) -> Any:
    """A resource read from the commercetools API, checked against its typed model (``ctdd.domain.resources``):
    one of another shape can never be applied, so the event is refused (InvalidEvent), not retried."""
    if found is not None:
        try:
            check_resource(resource, found)
        except InvalidResource as exc:
            raise InvalidEvent(f"commercetools {resource}: {exc.reason}") from None
    return found


class EventProcessor:
    def __init__(self, settings: Settings, contact_sync: ContactSync, transactions: TransactionRunner,
                 commercetools_clients: "CommercetoolsClients"):
        self.settings = settings
        self.contact_sync = contact_sync
        self.transactions = transactions
        self.ct = commercetools_clients
        self._category_names: dict[str, list[str]] = {}
        self._code_names: dict[str, str | None] = {}  # "<project>/<discount code id>" -> its code (None: gone)
        self._codes_off: dict[str, float] = {}  # project -> monotonic time until which codes are not read
        self.carts = carts.CartApplier(contact_sync, self._enqueue_insight)
        #: product and inventory messages -> the catalog (ctdd.catalog.realtime); set by the runtime
        self.catalog: CatalogRealtime | None = None

    # -- entry points -------------------------------------------------------------------------
    async def process_delivery(self, store_key: str, raw: bytes, *, priority: int = outbox.PRIORITY_LIVE,
                               allowed: frozenset[str] | None = None) -> list[NotificationOutcome]:
        """Prepare every notification of a delivery, then apply each (in its own unit of work)."""
        steps = await self.prepare_delivery(store_key, raw, priority=priority, allowed=allowed)
        return [await self.finish(step) for step in steps]

    async def process_behavioural(self, store_key: str, event: BehaviouralEventInput, *,
                                  priority: int = outbox.PRIORITY_LIVE) -> NotificationOutcome:
        return await self.finish(self.prepare_behavioural(store_key, event, priority=priority))

    async def finish(self, step: Step) -> NotificationOutcome:
        """Apply a prepared step through the transaction runner (a final outcome is returned as it is)."""
        if isinstance(step, NotificationOutcome):
            return step
        return await self.transactions.run(step)

    def parse(self, store_key: str, raw: bytes) -> list[Notification] | NotificationOutcome:
        """Validate a delivery: its notifications, or the IGNORED outcome of a well-formed irrelevant one.

        Raises InvalidEvent (poison: unknown store, unparseable delivery).
        """
        self._store(store_key)
        try:
            return parse_delivery(raw)
        except UnsupportedNotification as exc:
            # Well-formed but irrelevant (Import API events ...): acknowledge, never dead-letter.
            return NotificationOutcome(dedupe_key="", outcome=IGNORED, reason=exc.reason)
        except InvalidDelivery as exc:
            raise InvalidEvent(f"commercetools_delivery: {exc}") from None

    async def prepare_delivery(self, store_key: str, raw: bytes, *, priority: int = outbox.PRIORITY_LIVE,
                               allowed: frozenset[str] | None = None) -> list[Step]:
        """The steps of a delivery sent with ``store_key`` by a caller that may use the stores ``allowed`` (None:
        every store): an order, cart or customer is applied under the stores it names (``_routed``), only these."""
        parsed = self.parse(store_key, raw)
        if isinstance(parsed, NotificationOutcome):
            return [parsed]
        store = self._store(store_key)
        steps: list[Step] = []
        created: set[tuple[str, str]] = set()
        project = [s.key for s in self.settings.stores.values() if s.commercetools_project == store.commercetools_project]
        for n in parsed:
            # an order of a customer the delivery creates before it is not waiting for an unknown customer: the
            # customer's unit runs first (an SQS batch, a JSON array carry both)
            token = _CREATED_BEFORE.set(frozenset(created))
            try:
                steps.append(await self._prepare(store, n, priority, allowed))
            finally:
                _CREATED_BEFORE.reset(token)
            if (n.resource_type == "customer" and n.message_type == "CustomerCreated" and not n.payload_not_included
                    and isinstance(n.payload.get("customer"), dict)):
                routed = route("customer", n.payload["customer"], store.key, project,
                               project=store.commercetools_project).store_keys
                created.update((n.resource_id, key) for key in routed if allowed is None or key in allowed)
        return steps

    def prepare_behavioural(self, store_key: str, event: BehaviouralEventInput, *,
                            priority: int = outbox.PRIORITY_LIVE) -> Step:
        store = self._store(store_key)
        key = behavioural_dedupe_key(store.key, event.event_id)
        outcome = NotificationOutcome(dedupe_key=key, message_type=event.kind, store_keys=[store.key])
        if event.kind == "cart_updated":
            return self._prepare_cart_event(store, event, outcome, priority)
        if event.kind == "product_viewed":
            collection, record_id = BROWSE_COLLECTION, str(event.data.get("productId") or "")
            outcome.resource_type, outcome.resource_id = "product", record_id
        else:
            collection, record_id = CUSTOM_EVENTS_COLLECTION, event.event_id
        identity_input = ContactInput(store_key=store.key, identity=event.identity,
                                      source=SourceStamp(modified_at=event.occurred_at))
        mapped, suppression = self.contact_sync.map_contact(identity_input)
        record = dict(event.data)
        insight: InsightPart | None = None
        refused = None
        try:  # plugins may shape the insight record (ctdd_map_behavioural_event); the view's facts stay the event's
            mapped_record = self.contact_sync.hooks.map_behavioural_event(
                HookContext(store=store, settings=self.settings), event, collection, dict(record))
            # stamped with the event's time: a view that happened before the one already sent for this product
            # (applied later: a retry, another processor's batch) is stale and not sent over it
            insight = InsightPart(collection, record_id, mapped_record,
                                  SourceStamp(outcome.resource_type or "event", record_id, None, event.occurred_at))
        except PluginFailed as exc:  # this record fails; the contact update and the view still count
            refused = self._refused_record(store, outcome.resource_type or "event", record_id, None, exc)
        view = (ViewPart(record_id, event.occurred_at or utcnow(), record) if event.kind == "product_viewed" else None)
        return ContactPlan(self.contact_sync, store, identity_input, mapped, suppression, priority=priority,
                           dedupe_key=key, outcome=outcome, insight=insight, view=view, refused=refused)

    def _prepare_cart_event(self, store: StoreConfig, event: BehaviouralEventInput, outcome: NotificationOutcome,
                            priority: int) -> Step:
        """A ``cart_updated`` event: the cart's row, its CartInsight record and its triggers."""
        cart_id = str(event.data.get("cartId") or "")
        outcome.resource_type, outcome.resource_id = "cart", cart_id
        snap = carts.snapshot(cart_id, event.data.get("cart") or {}, version=event.data.get("cartVersion"),
                              fallback_time=event.occurred_at or utcnow(),
                              modified_text=str(event.data.get("modifiedAt") or ""))
        return self._once(store, outcome.dedupe_key, outcome,
                          self._cart_body(store, snap, event.identity, outcome, priority))

    def cart_unit(self, store: StoreConfig, cart: Mapping[str, Any], *, priority: int = outbox.PRIORITY_LIVE
                  ) -> Callable[[Session], NotificationOutcome]:
        """The unit of work applying one version of a cart read from commercetools (the cart watcher): the
        same as a ``cart_updated`` event's, without a dedupe record (the cart's version is the dedupe)."""
        outcome = NotificationOutcome(dedupe_key="", resource_type="cart", resource_id=str(cart["id"]),
                                      message_type="CartPolled", store_keys=[store.key])
        snap = carts.snapshot(str(cart["id"]), cart, version=None, fallback_time=utcnow())
        body = self._cart_body(store, snap, None, outcome, priority)
        future = self._too_far_ahead(snap.last_modified_at)

        def unit(session: Session) -> NotificationOutcome:
            outcome.reset()
            if future:  # its time would order every later version of the cart before it
                outcome.outcome = IGNORED
                outcome.reason = f"cart lastModifiedAt {snap.last_modified_at.isoformat()} is {self._ahead_text()}"
                log.warning("cart %s not applied: %s", snap.cart_id, outcome.reason)
                return outcome
            body(session)
            return outcome

        return unit

    def _cart_body(self, store: StoreConfig, snap: "carts.CartSnapshot", identity: Identity | None,
                   outcome: NotificationOutcome, priority: int) -> Callable[[Session], None]:
        """What every cart signal does in its unit of work (``ctdd.ingest.carts``), reported in ``outcome``."""
        def body(session: Session) -> None:
            applied = self.carts.apply(session, store, snap, identity, priority=priority)
            outcome.contact_id = applied.contact_id
            outcome.outbox_message_ids = list(applied.outbox_message_ids)
            if applied.outcome == "stale":
                outcome.outcome, outcome.reason = STALE, applied.reason

        return body

    # -- notifications ------------------------------------------------------------------------
    async def _prepare(self, store: StoreConfig, n: Notification, priority: int, allowed: frozenset[str] | None
                       ) -> Step:
        outcome = NotificationOutcome(dedupe_key=n.dedupe_key, resource_type=n.resource_type,
                                      resource_id=n.resource_id, message_type=n.message_type or n.notification_type)
        if n.is_subscription_test:
            outcome.outcome, outcome.reason = IGNORED, "subscription test notification"
            return outcome
        if n.ignored_reason:
            outcome.dedupe_key, outcome.outcome, outcome.reason = "", IGNORED, n.ignored_reason
            return outcome
        if n.project_key != store.commercetools_project:
            outcome.outcome = IGNORED
            outcome.reason = f"notification of project {n.project_key!r}; store {store.key!r} is bound to {store.commercetools_project!r}"
            return outcome
        routed = {"customer": self._customer, "order": self._order, "payment": self._payment, "cart": self._cart,
                  }.get(n.resource_type)
        catalog = {"product": self._product, "inventory-entry": self._inventory}.get(n.resource_type)
        if routed is None and catalog is None:
            outcome.outcome, outcome.reason = IGNORED, f"resource type {n.resource_type!r} is not synced"
            return outcome
        outcome.store_keys = [store.key]  # unless its resource names other stores (_routed)
        if routed is not None:
            return await routed(store, n, outcome, priority, allowed)
        return await catalog(store, n, outcome, priority)

    def _routed(self, caller: StoreConfig, n: Notification, kind: str, resource: Mapping[str, Any],
                outcome: NotificationOutcome, allowed: frozenset[str] | None) -> list[StoreConfig]:
        """The stores ``resource`` (of ``kind``: an order, cart or customer) is applied under
        (``ctdd.domain.store_routing``), among those the caller's token may use (``allowed``; None: every store),
        named in ``outcome``; none (and ``outcome`` ignored, with the reason) for a resource of commercetools
        stores that are not configured for the caller's project, or that the caller may not use. Ignored so, the
        notification leaves no dedupe record: the adapter of its store still applies it."""
        project = caller.commercetools_project
        found = route(kind, resource, caller.key,
                      [s.key for s in self.settings.stores.values() if s.commercetools_project == project],
                      project=project)
        keys, reason = found.store_keys, found.reason
        if allowed is not None and keys:
            refused = [key for key in keys if key not in allowed]
            keys = tuple(key for key in keys if key in allowed)
            if refused:
                named = ", ".join(echo(key) for key in refused)
                reason = (f"{kind} of store{'s' if len(refused) > 1 else ''} {named}, which the token of this call "
                          "may not use")
        outcome.store_keys = list(keys)
        if not keys:
            outcome.outcome, outcome.reason = IGNORED, reason
            log.info("notification %s of %s/%s ignored: %s", n.dedupe_key, n.resource_type, n.resource_id, reason)
            return []
        if reason:  # some of a customer's stores
            log.info("notification %s of %s/%s not applied under all its stores: %s", n.dedupe_key,
                     n.resource_type, n.resource_id, reason)
        if keys != (caller.key,):
            log.debug("notification %s of %s/%s (delivered for store %s) applied under store(s) %s", n.dedupe_key,
                      n.resource_type, n.resource_id, caller.key, ", ".join(keys))
        return [self.settings.stores[key] for key in keys]

    async def _already_done(self, store: StoreConfig, n: Notification, outcome: NotificationOutcome) -> bool:
        """Before fetching for ``n``: True (and ``outcome`` set) when it is a duplicate or stale already.

        Only an optimisation (no fetch for a redelivery): the unit of work checks both again.
        """
        early = await self.transactions.run(lambda s: self._precheck(s, store, n))
        if early is None:
            return False
        outcome.outcome, outcome.reason = early
        return True

    def _precheck(self, session: Session, store: StoreConfig, n: Notification) -> tuple[str, str] | None:
        if session.get(ProcessedEvent, n.dedupe_key) is not None:
            return DUPLICATE, "message already processed"
        if n.resource_type == "cart":  # carts keep their version in the cart table, under the cart's store
            stores = [s.key for s in self.settings.stores.values()
                      if s.commercetools_project == store.commercetools_project]
            applied = session.execute(sa.select(sa.func.max(Cart.version)).where(
                Cart.store_key.in_(stores), Cart.cart_id == n.resource_id)).scalar()
            if applied is not None and n.resource_version is not None and n.resource_version <= applied:
                return STALE, f"cart version {n.resource_version} is not newer than the applied version {applied}"
            return None
        state = session.get(ResourceState, (store.commercetools_project, n.resource_type, n.resource_id))
        if state is not None and n.resource_version is not None and n.resource_version <= state.version:
            return STALE, f"resource version {n.resource_version} is not newer than the applied version {state.version}"
        return None

    def _too_far_ahead(self, moment: Any) -> bool:
        """Whether a time that decides staleness lies beyond the server's clock plus ``max_clock_skew_seconds``
        (a year-9999 ``lastModifiedAt`` would make every later update look stale)."""
        skew = timedelta(seconds=self.settings.service.max_clock_skew_seconds)
        return isinstance(moment, datetime) and moment > utcnow() + skew

    def _ahead_text(self) -> str:
        return (f"more than {self.settings.service.max_clock_skew_seconds:g} seconds ahead of the server's clock "
                "(max_clock_skew_seconds)")

    def _store(self, store_key: str) -> StoreConfig:
        store = self.settings.store(store_key) if store_key else None
        if store is None:
            raise InvalidEvent(f"store_key: unknown store {echo(store_key)}")
        return store

    async def _fetch(self, store: StoreConfig, resource: str, id_: str, **kwargs) -> dict | None:
        client = self.ct.get(store)
        if client is None:
            raise NotConfigured(f"store {store.key!r} has no commercetools API client ([commercetools.<name>]) "
                                f"configured, and the notification needs a fetch of its {resource}")
        try:
            found = await client.get(resource, id_, **kwargs)
        except Exception as exc:  # CommercetoolsError (retryable or not) and transport errors
            raise RetryableEventError(f"commercetools GET {resource}/{id_} failed: {exc}") from exc
        return _checked(resource, found)

    async def _query(self, store: StoreConfig, resource: str, where: list[str], variables: Mapping[str, str]
                     ) -> list[dict]:
        """Query ``resource``; every value goes in ``variables`` (``:name`` in ``where``, sent as ``var.name``
        query parameters), never into the predicate text."""
        client = self.ct.get(store)
        if client is None:
            raise NotConfigured(f"store {store.key!r} has no commercetools API client ([commercetools.<name>]) "
                                "configured, and the notification needs one")
        params = {f"var.{name}": value for name, value in variables.items()}
        try:
            page = await client.query(resource, where=where, limit=20, with_total=False, params=params)
        except Exception as exc:
            raise RetryableEventError(f"commercetools query {resource} failed: {exc}") from exc
        return [_checked(resource, found) for found in page.get("results", [])]

    # -- customers ------------------------------------------------------------------------------
    async def _customer(self, store: StoreConfig, n: Notification, outcome: NotificationOutcome, priority: int,
                        allowed: frozenset[str] | None) -> Step:
        if n.message_type in CUSTOMER_DELETED or n.notification_type == "ResourceDeleted":
            return self._customer_deleted(store, n, outcome, priority, allowed)
        customer = n.payload.get("customer") if n.message_type == "CustomerCreated" and not n.payload_not_included else None
        if customer is None:
            if await self._already_done(store, n, outcome):
                return outcome
            customer = await self._fetch(store, "customers", n.resource_id)
            if customer is None:
                return self._finish_ignored(store, n, outcome, "customer no longer exists in commercetools")
        stores = self._routed(store, n, "customer", customer, outcome, allowed)
        if not stores:
            return outcome
        apply_customer = self._customer_unit(stores, customer, n.resource_version, priority)
        if isinstance(apply_customer, str):
            return self._finish_rejected(stores[0], n, outcome, apply_customer)

        def body(session: Session) -> None:
            applied = apply_customer(session)
            if isinstance(applied, tuple):
                outcome.outcome, outcome.reason = applied
                return
            outcome.contact_id = applied[0].contact_id
            outcome.outbox_message_ids = [mid for result in applied for mid in result.outbox_message_ids]
            kinds = sorted({c.kind for result in applied for c in result.conflicts})
            if kinds:  # applied, but an identifier stayed with the contact that has it (identity_conflict)
                outcome.reason = (f"identity conflict: the customer's {' and '.join(kinds)} belongs to another "
                                  "contact, which keeps it; this contact keeps its own (see identity_conflict, "
                                  "ctdd contact show)")

        return self._once(stores[0], n.dedupe_key, outcome, body)

    def _customer_unit(self, stores: list[StoreConfig], customer: Mapping[str, Any], notified_version: int | None,
                       priority: int) -> Callable[[Session], Any] | str:
        """Map a commercetools customer now for each of ``stores`` (plugins, no database; the stores of one
        commercetools project); the returned step applies it in a unit of work and answers the ``SyncResult``
        of each store it was applied under, or the (outcome, reason) of a customer it did not apply. A customer
        whose times are too far in the future is refused at once: the reason why."""
        plans = []
        for store in stores:
            c = store.consent
            contact = customer_to_contact(customer, store.key, consent_fields=(c.email_opt_in_field,
                                                                               c.sms_opt_in_field, c.updated_at_field))
            for name, moment in (("lastModifiedAt", contact.source.modified_at),
                                 (c.updated_at_field, contact.email_consent and contact.email_consent.decided_at),
                                 (c.updated_at_field, contact.sms_consent and contact.sms_consent.decided_at)):
                if self._too_far_ahead(moment):
                    return f"customer {name} {moment.isoformat()} is {self._ahead_text()}"
            mapped, suppression = self.contact_sync.map_contact(contact)
            # a customer is a full snapshot: a field it no longer has is cleared where this customer set it
            clear_own = self.contact_sync.absent_paths(
                contact, absent_customer_attributes(contact, store.data_fields), mapped)
            plans.append((contact, mapped, suppression, clear_own))
        version = int(customer.get("version") or notified_version or 0)
        customer_id = str(customer["id"])
        first = stores[0]

        def apply(session: Session) -> Any:
            # one applied version per customer of the project: the version goes to all its stores at once
            if not self._advance_version(session, first.commercetools_project, "customer", customer_id, version):
                return STALE, f"customer version {version} already applied"
            results = []
            for contact, mapped, suppression, clear_own in plans:
                try:
                    results.append(self.contact_sync.apply(session, contact, dict(mapped), list(suppression),
                                                           priority=priority, clear_own=clear_own))
                except NewContactNeedsAddress:
                    continue
            if not results:
                return IGNORED, "customer has no email address or mobile number"
            self._set_state_contact(session, first, "customer", customer_id, results[0].contact_id)
            return results

        return apply

    def _customer_deleted(self, store: StoreConfig, n: Notification, outcome: NotificationOutcome,
                          priority: int, allowed: frozenset[str] | None = None) -> Step:
        """A deleted customer leaves every store of its commercetools project it was applied under (a customer
        of several brands is in each brand's account; the deletion names no store): in each Dotdigital account
        that knows the customer id, the first such store (the caller's first, then by key; among those the
        caller's token may use) decides what happens (``on_customer_deleted``)."""
        erasure = n.notification_type == "ResourceDeleted" and n.payload.get("dataErasure") is True
        project = [store, *sorted((s for s in self.settings.stores.values()
                                   if s.commercetools_project == store.commercetools_project and s.key != store.key
                                   and (allowed is None or s.key in allowed)), key=lambda s: s.key)]

        def body(session: Session) -> None:
            # Tombstone: the deleted version becomes the customer's applied version, so a message of an older
            # version arriving after the deletion (delivery is unordered) is stale and cannot bring it back.
            # The deletion itself always applies (commercetools deletes for good).
            if n.resource_version is not None:
                self._advance_version(session, store.commercetools_project, "customer", n.resource_id,
                                      n.resource_version)
            # ... and it is marked deleted (an erasure for good, also after a plain deletion's message), so that
            # the messages of its orders no longer link its id to a contact, nor bring an erased one back
            self._mark_deleted(session, store.commercetools_project, n.resource_id, n.resource_version,
                               ERASED if erasure else DELETED)
            done: list[str] = []
            accounts: set[str] = set()
            for target in project:
                if target.account in accounts:
                    continue
                accounts.add(target.account)
                policy = self._delete_customer_in(session, target, n, outcome, priority, erasure=erasure)
                if policy is not None:
                    done.append(f"{policy} in store {target.key!r}" if len(project) > 1 else policy)
            if not done:
                outcome.outcome = IGNORED
                outcome.reason = "customer was never synced (its older messages are stale from now on)"
                return
            outcome.reason = "customer deleted: " + "; ".join(done) + (" (data erasure)" if erasure else "")

        key = n.dedupe_key
        in_project = {s.key for s in self.settings.stores.values()
                      if s.commercetools_project == store.commercetools_project}
        if allowed is not None and not in_project <= allowed:
            # a token that may use only some of the project's stores deletes in those only: the adapter of the
            # others (its own token) must still apply its copy, so the dedupe record names the stores deleted in
            scope = ",".join(sorted(in_project & allowed))
            key = outcome.dedupe_key = "deletion:" + hashlib.sha256(f"{n.dedupe_key}\n{scope}".encode()).hexdigest()
        return self._once(store, key, outcome, body)

    def _delete_customer_in(self, session: Session, store: StoreConfig, n: Notification, outcome: NotificationOutcome,
                            priority: int, *, erasure: bool) -> str | None:
        """The deletion of customer ``n.resource_id`` in ``store``'s account: the policy applied, None when that
        account never knew the customer. ``erasure`` (deleted with ``dataErasure=true``: the shop erased the
        customer's personal data): the contact is deleted whatever the store does with an ordinary deletion."""
        policy = "delete_contact" if erasure else store.on_customer_deleted
        ident = session.execute(sa.select(ContactIdentifier).where(
            ContactIdentifier.account == store.account, ContactIdentifier.kind == "customer_id",
            ContactIdentifier.value == customer_key(store.commercetools_project, n.resource_id),
        )).scalar_one_or_none()
        if ident is None:
            if not erasure:
                return None
            # an erasure arriving after the same deletion's CustomerDeleted message, which took the customer id
            # off the contact (the subscription sends both): the contact the customer was last applied to
            state = session.get(ResourceState, (store.commercetools_project, "customer", n.resource_id))
            contact = session.get(Contact, state.contact_id) if state is not None and state.contact_id else None
            if contact is None or contact.account != store.account:
                return None
        else:
            contact = session.get(Contact, ident.contact_id)
            # The customer id no longer exists: it must not resolve to this contact any more.
            session.delete(ident)
        if outcome.contact_id is None:
            outcome.contact_id = contact.id
        if policy == "delete_contact":
            kind, payload = outbox.CONTACT_DELETE, {}
            # Forget what was sent: a later sign-up with the same address starts from scratch.
            session.execute(sa.delete(FieldState).where(FieldState.contact_id == contact.id))
        elif policy == "remove_from_lists" and store.lists:
            kind, payload = outbox.CONTACT_REMOVE_FROM_LISTS, {"list_ids": sorted(set(store.lists.values()))}
            session.execute(sa.delete(FieldState).where(FieldState.contact_id == contact.id,
                                                       FieldState.field.like("lists.%")))
        else:
            kind = None
        if kind is not None:
            mid = outbox.enqueue(
                session, contact_id=contact.id, account=store.account, kind=kind, payload=payload,
                ref=outbox.RecordRef(store.key, "customer", n.resource_id, n.resource_version), priority=priority,
            )
            outcome.outbox_message_ids.append(mid)
        return policy

    # -- products and inventory: the catalog (ctdd.catalog.realtime) --------------------------
    def _catalog_ready(self, store: StoreConfig, n: Notification, outcome: NotificationOutcome) -> Any:
        if not store.catalog.enabled:
            outcome.outcome, outcome.reason = IGNORED, f"the catalog of store {store.key!r} is not enabled"
            return None
        if self.catalog is None:
            outcome.outcome, outcome.reason = IGNORED, "catalog updates do not run in this process"
            return None
        client = self.ct.get(store)
        if client is None:
            raise NotConfigured(f"store {store.key!r} has no commercetools API client ([commercetools.<name>]) "
                                "configured, and the notification needs one")
        return client

    async def _product(self, store: StoreConfig, n: Notification, outcome: NotificationOutcome, priority: int
                       ) -> Step:
        client = self._catalog_ready(store, n, outcome)
        if client is None:
            return outcome
        message_type = "ProductDeleted" if n.notification_type == "ResourceDeleted" else n.message_type
        try:
            change = await self.catalog.product_change(store, client, n.resource_id, message_type, n.payload,
                                                       n.resource_version, fetch=n.payload_not_included)
        except (CommercetoolsError, OSError) as exc:  # commercetools or the network failed: a passing fault
            raise RetryableEventError(f"commercetools read of product {n.resource_id} failed: {exc}") from exc
        return self._catalog_unit(store, n, outcome, change)

    async def _inventory(self, store: StoreConfig, n: Notification, outcome: NotificationOutcome, priority: int
                         ) -> Step:
        client = self._catalog_ready(store, n, outcome)
        if client is None:
            return outcome
        if n.notification_type == "ResourceDeleted":
            return self._finish_ignored(store, n, outcome, "an inventory entry deleted: the product is re-read on "
                                                           "its next change")
        sku = n.payload.get("sku") if isinstance(n.payload.get("sku"), str) else None
        if sku is None:
            entry = await self._fetch(store, "inventory", n.resource_id)
            sku = entry.get("sku") if isinstance(entry, dict) and isinstance(entry.get("sku"), str) else None
            if sku is None:
                return self._finish_ignored(store, n, outcome, "inventory entry no longer exists in commercetools")
        try:
            change = await self.catalog.inventory_change(store, client, sku)
        except (CommercetoolsError, OSError) as exc:
            raise RetryableEventError(f"commercetools read of the product of an inventory entry failed: {exc}") from exc
        return self._catalog_unit(store, n, outcome, change)

    def _catalog_unit(self, store: StoreConfig, n: Notification, outcome: NotificationOutcome,
                      change: "CatalogChange | str") -> Step:
        if isinstance(change, str):
            return self._finish_ignored(store, n, outcome, change)
        catalog = self.catalog

        def body(session: Session) -> None:
            changed = catalog.apply(session.connection(), change, utcnow())
            outcome.reason = f"catalog: {changed} record(s) of product {change.product_id} changed"
            if changed:  # the flusher waits a moment before it looks: by then this is committed
                catalog.changed()

        return self._once(store, n.dedupe_key, outcome, body)

    # -- carts --------------------------------------------------------------------------------
    async def _cart(self, store: StoreConfig, n: Notification, outcome: NotificationOutcome, priority: int,
                    allowed: frozenset[str] | None) -> Step:
        """A cart change notification (commercetools sends ``ResourceCreated`` only): fetch the cart, apply it."""
        if n.notification_type == "ResourceDeleted":
            return self._finish_ignored(store, n, outcome, "cart deletions change nothing")
        if await self._already_done(store, n, outcome):
            return outcome
        cart = await self._fetch(store, "carts", n.resource_id)
        if cart is None:
            return self._finish_ignored(store, n, outcome, "cart no longer exists in commercetools")
        routed = self._routed(store, n, "cart", cart, outcome, allowed)
        if not routed:
            return outcome
        store = routed[0]
        snap = carts.snapshot(n.resource_id, cart, version=None, fallback_time=n.occurred_at or utcnow())
        if self._too_far_ahead(snap.last_modified_at):
            return self._finish_rejected(store, n, outcome, f"cart lastModifiedAt {snap.last_modified_at.isoformat()} "
                                                            f"is {self._ahead_text()}")
        return self._once(store, n.dedupe_key, outcome, self._cart_body(store, snap, None, outcome, priority))

    # -- orders -------------------------------------------------------------------------------
    async def _payment(self, store: StoreConfig, n: Notification, outcome: NotificationOutcome, priority: int,
                       allowed: frozenset[str] | None) -> Step:
        """Refund transactions: re-read the order paying with this payment and re-send it."""
        if await self._already_done(store, n, outcome):
            return outcome
        orders = await self._query(store, "orders", ["paymentInfo(payments(id = :pid))"], {"pid": n.resource_id})
        if not orders:
            return self._finish_ignored(store, n, outcome, "no order uses this payment")
        routed = self._routed(store, n, "order", orders[0], outcome, allowed)
        if not routed:
            return outcome
        return await self._apply_order(routed[0], n, outcome, orders[0], priority, force=True)

    async def _order(self, store: StoreConfig, n: Notification, outcome: NotificationOutcome, priority: int,
                     allowed: frozenset[str] | None) -> Step:
        if n.notification_type == "ResourceDeleted" and n.payload.get("dataErasure") is True:
            return self._order_erased(store, n, outcome, priority)
        if n.notification_type == "ResourceDeleted" or n.message_type == "OrderDeleted":
            return self._finish_ignored(store, n, outcome, "order deletions keep the Dotdigital record")
        order = n.payload.get("order") if n.message_type in ORDER_WITH_PAYLOAD and not n.payload_not_included else None
        if order is None:
            if await self._already_done(store, n, outcome):
                return outcome
            order = await self._fetch(store, "orders", n.resource_id)
            if order is None:
                return self._finish_ignored(store, n, outcome, "order no longer exists in commercetools")
        routed = self._routed(store, n, "order", order, outcome, allowed)
        if not routed:
            return outcome
        return await self._apply_order(routed[0], n, outcome, order, priority, force=False)

    def _order_erased(self, store: StoreConfig, n: Notification, outcome: NotificationOutcome, priority: int
                      ) -> Step:
        """An order deleted with ``dataErasure`` (the shop erased its personal data): its Orders record is deleted
        in Dotdigital (it holds the email and the addresses), and the deletion's version becomes the order's
        applied one (an older message arriving later is stale and cannot send it again). The order still counts
        in its contact's aggregates (``order_summary`` holds no personal data). A plain deletion keeps the record."""
        def body(session: Session) -> None:
            if n.resource_version is not None:
                self._advance_version(session, store.commercetools_project, "order", n.resource_id,
                                      n.resource_version)
            row = session.get(OrderSummary, (store.commercetools_project, n.resource_id))
            contact = session.get(Contact, row.contact_id) if row is not None else None
            if contact is None:
                outcome.outcome, outcome.reason = IGNORED, "order was never synced (its older messages are stale now)"
                return
            outcome.contact_id = contact.id
            source = SourceStamp("order", n.resource_id, n.resource_version, None)
            mid = self._drop_order_record(session, store, contact.account, contact.id, row.order_key, source,
                                          priority)
            if mid:
                outcome.outbox_message_ids.append(mid)
                outcome.reason = "order deleted with dataErasure: its Orders record is deleted in Dotdigital"
            else:
                outcome.reason = "order deleted with dataErasure: no Orders record of it was sent"

        return self._once(store, n.dedupe_key, outcome, body)

    async def _categories(self, store: StoreConfig, order: Mapping[str, Any], locale: str | None) -> dict[str, list[str]]:
        """Category names per product of the order (current product projection; cached per process)."""
        result: dict[str, list[str]] = {}
        client = self.ct.get(store)
        if client is None:
            return result
        for li in order.get("lineItems", []):
            pid = li.get("productId")
            if not pid or pid in result:
                continue
            cache_key = f"{store.commercetools_project}/{pid}/{locale}"
            if cache_key not in self._category_names:
                product = await self._fetch(store, "product-projections", pid)
                names = []
                for ref in (product or {}).get("categories", []):
                    category = await self._fetch(store, "categories", ref["id"])
                    if category:
                        names.append(localized(category.get("name"), locale) or "")
                self._category_names[cache_key] = names
            result[pid] = self._category_names[cache_key]
        return result

    async def _discount_codes(self, store: StoreConfig, order: Mapping[str, Any]) -> dict[str, str]:
        """The codes of the order's discount codes that its message names by id only (references are not
        expanded in messages): read from commercetools once per process (a code never changes). A code that
        cannot be read (no client, no view_discount_codes scope, gone) is sent as its id: the order is not held
        for it."""
        client = self.ct.get(store)
        wanted = [str(ref["id"]) for dc in order.get("discountCodes") or []
                  if isinstance(ref := dc.get("discountCode"), Mapping) and ref.get("id")
                  and not (ref.get("obj") or {}).get("code")]
        project = store.commercetools_project
        found: dict[str, str] = {}
        for code_id in dict.fromkeys(wanted):
            key = f"{project}/{code_id}"
            if key not in self._code_names and client is not None and time.monotonic() >= self._codes_off.get(
                    project, 0.0):
                try:
                    discount = await client.get("discount-codes", code_id)
                except Exception as exc:  # a missing scope, a transport error: ids stand in for a while
                    self._codes_off[project] = time.monotonic() + CODES_OFF_SECONDS
                    log.warning("commercetools discount codes of project %s not readable (%s); orders' records name "
                                "their discount codes by id for %d minutes (the API client needs view_discount_codes)",
                                project, type(exc).__name__, CODES_OFF_SECONDS // 60)
                    continue
                code = (discount or {}).get("code")
                if len(self._code_names) >= 10_000:
                    self._code_names.clear()
                # (None: gone in commercetools; its id stands in, and it is not asked for again)
                self._code_names[key] = code if isinstance(code, str) and code else None
            if self._code_names.get(key):
                found[code_id] = self._code_names[key]
        return found

    async def _refunds(self, store: StoreConfig, order: Mapping[str, Any]) -> float:
        payments = []
        for ref in ((order.get("paymentInfo") or {}).get("payments") or []):
            payment = ref.get("obj") or await self._fetch(store, "payments", ref["id"])
            if payment:
                payments.append(payment)
        return refund_total(payments)

    async def _apply_order(self, store: StoreConfig, n: Notification, outcome: NotificationOutcome,
                           order: Mapping[str, Any], priority: int, *, force: bool) -> Step:
        email = order_email(order)
        identity = Identity(customer_id=order.get("customerId") or None, email=email)
        if identity.is_empty():
            return self._finish_ignored(store, n, outcome, f"order has no customer and {order_without_email(order)}")
        apply_customer = None
        if identity.customer_id:  # a deleted customer is neither looked for nor fetched (see the body)
            cid = str(identity.customer_id)
            gone = await self.transactions.run(lambda s: self._customer_deleted_as(s, store, cid))
            if gone == ERASED or (gone == DELETED and store.on_customer_deleted == "delete_contact"):
                return self._finish_rejected(store, n, outcome, self._deleted_customer_reason(store, gone, order))
            if gone == DELETED:
                identity = Identity(email=email)  # (no email: the order's contact so far, see the body)
        if (identity.customer_id and not email and (str(identity.customer_id), store.key) not in _CREATED_BEFORE.get()
                and self._other_accounts(store)):
            # a customer of the project known in another store's account only (a global customer applied under
            # the store that delivered it, its order routed to the store it names): its address there
            customer_id = str(identity.customer_id)
            email = await self.transactions.run(lambda s: self._customer_email_elsewhere(s, store, customer_id))
            if email:
                identity = Identity(customer_id=identity.customer_id, email=email)
        if identity.customer_id and not email:
            since = n.occurred_at or parse_ts(order.get("lastModifiedAt") or order.get("createdAt"))
            unknown = await self._unknown_customer_step(store, str(identity.customer_id), priority, since=since,
                                                        no_email=order_without_email(order))
            if isinstance(unknown, str):
                return self._finish_rejected(store, n, outcome, unknown)
            apply_customer = unknown
        locale = order.get("locale") or store.locale
        ctx = OrderContext(store_key=store.key, locale=locale, categories=await self._categories(store, order, locale),
                           refund_total=await self._refunds(store, order),
                           discount_codes=await self._discount_codes(store, order))
        try:  # plugins may shape the Orders record (ctdd_map_order)
            record: dict | None = self.contact_sync.hooks.map_order(
                HookContext(store=store, settings=self.settings), order, order_record(order, ctx))
            refused = None
        except PluginFailed as exc:  # this record fails; the contact, its aggregates and the programs go on
            record, refused = None, str(exc)
        summary = order_summary_values(order, ctx)
        version = int(order.get("version") or n.resource_version or 0)
        source = SourceStamp("order", str(order["id"]), version, parse_ts(order.get("lastModifiedAt")))
        cart_id = str((order.get("cart") or {}).get("id") or "") or None
        placed_cart = await self._placed_cart(store, n, cart_id)

        def body(session: Session) -> None:
            advanced = self._advance_version(session, store.commercetools_project, "order", str(order["id"]), version)
            if not advanced and not force:
                outcome.outcome, outcome.reason = STALE, f"order version {version} already applied"
                return
            ident = identity
            customer_id = order.get("customerId")
            deleted = self._customer_deleted_as(session, store, customer_id)  # (also deleted since the check above)
            if deleted == DELETED:
                # the customer id no longer exists: an order already applied stays with its contact (its address
                # now, not the one the order was placed with); a new one is its address's, as a guest's
                row = session.get(OrderSummary, (store.commercetools_project, str(order["id"])))
                ident = (self._address_of(session, row.contact_id) if row is not None else None) or Identity(email=email)
            if deleted == ERASED or (deleted == DELETED and (ident.is_empty()
                                                             or store.on_customer_deleted == "delete_contact")):
                # the shop erased the customer, or its contact was deleted with it: its orders do not bring it back
                reason = self._deleted_customer_reason(store, deleted, order)
                outcome.outcome, outcome.reason = IGNORED, reason
                self._reject(session, store, n, reason)
                return
            if deleted is None and apply_customer is not None:  # its customer, fetched: creates the contact
                applied = apply_customer(session)
                if not isinstance(applied, tuple):
                    outcome.outbox_message_ids.extend(mid for result in applied for mid in result.outbox_message_ids)
            # A known customer keeps its own email: an order placed with another address must not move it.
            if ident.customer_id and self.contact_sync.known_customer(session, store.key, ident.customer_id):
                ident = Identity(customer_id=ident.customer_id)
            identity_input = ContactInput(store_key=store.key, identity=ident)
            identity_mapped, identity_suppression = self.contact_sync.map_contact(identity_input)
            try:
                first = self.contact_sync.apply(session, identity_input, identity_mapped,
                                                identity_suppression, priority=priority)
            except NewContactNeedsAddress:
                reason = f"order's customer is unknown and {order_without_email(order)}"
                outcome.outcome, outcome.reason = IGNORED, reason
                self._reject(session, store, n, reason)
                return
            contact_id = first.contact_id
            outcome.contact_id = contact_id
            outcome.outbox_message_ids.extend(first.outbox_message_ids)
            previous = self._upsert_summary(session, store, str(order["id"]), contact_id, summary)
            # The record's key is the order's key as the newest version applied has it (an older version, re-read
            # for a refund, must not write a record under a key the order no longer has)
            key = summary["order_key"] if previous is None or previous.written else previous.order_key
            aggregates = order_aggregates(self._summaries(session, contact_id))
            agg_input = ContactInput(store_key=store.key, identity=ident, attributes=aggregates)
            mapped, suppression = self.contact_sync.map_contact(agg_input)
            second = self.contact_sync.apply(session, agg_input, dict(mapped), list(suppression), priority=priority)
            outcome.outbox_message_ids.extend(second.outbox_message_ids)
            if record is None:
                outcome.reason = f"Orders record not sent: {refused}"
                self._reject(session, store, n, f"Orders record not sent: {refused}")
            elif not (first.suppression_reasons or second.suppression_reasons):
                mid = self._enqueue_insight(session, contact_id, store, ORDERS_COLLECTION, key, record,
                                            source, priority)
                if mid:
                    outcome.outbox_message_ids.append(mid)
            if previous is not None and previous.written and previous.contact_id != contact_id:
                # the order moved to another contact (OrderCustomerEmailSet, OrderCustomerSet): the contact it
                # was counted on is recomputed without it, and its record there is deleted
                outcome.outbox_message_ids.extend(self._order_left_contact(session, store, previous, source,
                                                                           priority))
                # and its pending programs (post-purchase, review) go to the contact it now belongs to
                triggers.order_moved(session, store, str(order["id"]), previous.contact_id, contact_id, utcnow())
            elif (previous is not None and previous.written and previous.order_key != key
                    and not (first.suppression_reasons or second.suppression_reasons)):
                # the order got its number after its record was sent under its id: one record per order, so
                # the record moves (the old key's record is deleted)
                mid = self._drop_order_record(session, store, store.account, previous.contact_id,
                                              previous.order_key, source, priority)
                if mid:
                    outcome.outbox_message_ids.append(mid)
            if cart_id:
                outcome.outbox_message_ids.extend(self.carts.order_placed(
                    session, store, cart_id, order, contact_id, cart=placed_cart, priority=priority))
            if not (first.suppression_reasons or second.suppression_reasons):
                self._order_triggers(session, store, n, order, contact_id, previous, summary, priority, cart_id)

        return self._once(store, n.dedupe_key, outcome, body)

    def _other_accounts(self, store: StoreConfig) -> bool:
        """Whether another store of ``store``'s commercetools project sends to another Dotdigital account."""
        return any(other.commercetools_project == store.commercetools_project and other.account != store.account
                   for other in self.settings.stores.values())

    def _customer_email_elsewhere(self, session: Session, store: StoreConfig, customer_id: str) -> str | None:
        """The email of the contact ``customer_id`` resolves to in another Dotdigital account of ``store``'s
        commercetools project, when it resolves to none in ``store``'s own; else None."""
        if self.contact_sync.known_customer(session, store.key, customer_id):
            return None
        for other in self.settings.stores.values():
            if other.commercetools_project != store.commercetools_project or other.account == store.account:
                continue
            contact_id = self.contact_sync.known_customer(session, other.key, customer_id)
            contact = session.get(Contact, contact_id) if contact_id else None
            if contact is not None and contact.email:
                return contact.email
        return None

    async def _unknown_customer_step(self, store: StoreConfig, customer_id: str, priority: int, *,
                                     since: datetime | None = None, no_email: str = "the order has no email"
                                     ) -> Callable[[Session], Any] | str | None:
        """For an order without an email: None when its customer is known; else the step applying the customer
        fetched from commercetools (a failed fetch raises RetryableEventError: the event is retried), or why
        the order cannot be applied (customer gone; no API client to fetch with, once the order, of time
        ``since``, has waited :data:`UNKNOWN_CUSTOMER_WAIT` for its customer: RetryableEventError until then)."""
        if (customer_id, store.key) in _CREATED_BEFORE.get():
            return None  # created by an earlier notification of the same delivery, applied before this order
        if await self.transactions.run(lambda s: self.contact_sync.known_customer(s, store.key, customer_id)):
            return None
        if self.ct.get(store) is None:
            reason = (f"order's customer {customer_id!r} is unknown, {no_email}, and store "
                      f"{store.key!r} has no commercetools API client to fetch the customer with")
            wait = UNKNOWN_CUSTOMER_WAIT.total_seconds()
            if since is not None and utcnow() < since + UNKNOWN_CUSTOMER_WAIT:
                # the customer's own message may still come (subscription messages arrive in any order)
                raise RetryableEventError(f"{reason}; held for up to {wait:g} seconds after the order's time "
                                          f"({since.isoformat()}) for the customer to arrive")
            return f"{reason} (waited {wait:g} seconds after the order's time for the customer)"
        customer = await self._fetch(store, "customers", customer_id)
        if customer is None:
            return f"order's customer {customer_id!r} no longer exists in commercetools and {no_email}"
        step = self._customer_unit([store], customer, None, priority)
        return f"order's {step}" if isinstance(step, str) else step

    async def _placed_cart(self, store: StoreConfig, n: Notification, cart_id: str | None) -> dict | None:
        """The cart an order was just created from, as commercetools now has it (Ordered), for the CartInsight
        record sent again as ORDER_COMPLETE; None when not needed or not available (the order stands in)."""
        if not cart_id or n.message_type not in ORDER_CREATED or self.ct.get(store) is None:
            return None
        try:
            return await self._fetch(store, "carts", cart_id)
        except (RetryableEventError, InvalidEvent) as exc:
            log.info("ordered cart not fetched, the order stands in for it: %s", exc)
            return None

    def _order_triggers(self, session: Session, store: StoreConfig, n: Notification, order: Mapping[str, Any],
                        contact_id: int, previous: PreviousOrder | None, summary: Mapping[str, Any],
                        priority: int, cart_id: str | None) -> None:
        """The programs' side of an order message: placed (a new live order, not an imported or backfilled
        one), cancelled or fully refunded, delivered."""
        now = utcnow()
        order_id = str(order["id"])
        # imported: by its message, or by the order itself (``completedAt`` is set by the Order Import API only),
        # whichever notification of it comes first (a ResourceCreated change notification, a later message)
        live = (priority == outbox.PRIORITY_LIVE and n.message_type != "OrderImported"
                and order.get("completedAt") is None)
        if previous is None and live and (n.message_type in ORDER_CREATED or cart_id):
            placed_at = summary["created_at"]
            triggers.order_placed(session, store, contact_id, order_id, placed_at, now, cart_id=cart_id,
                                  first_order=not self._earlier_order(session, contact_id, order_id, placed_at))
        if summary["order_state"] == "Cancelled" and (previous is None or previous.order_state != "Cancelled"):
            triggers.order_cancelled(session, store, order_id, program_rules.ORDER_CANCELLED, now)
        total, refunded = summary["total"], summary["refund_total"]
        if 0 < total <= refunded and (previous is None or previous.refund_total < total):
            triggers.order_cancelled(session, store, order_id, program_rules.ORDER_REFUNDED, now)
        # Delivered compared with the version applied before, whichever message brought it (one update emits
        # OrderStateChanged and OrderShipmentStateChanged of one version: the second is stale); an older version
        # than the row's (a refund re-reading the order) changes nothing
        delivered = (previous is None or previous.written) and became_delivered(
            summary["shipment_state"], previous.shipment_state if previous else None, first_seen=previous is None)
        if delivered is None:  # a row from before shipment states were kept: the message says it
            delivered = n.message_type == "OrderShipmentStateChanged"
        if live and delivered:
            triggers.shipment_delivered(session, store, contact_id, order_id, n.occurred_at or now, now)

    @staticmethod
    def _earlier_order(session: Session, contact_id: int, order_id: str, placed_at: Any) -> bool:
        """Whether the contact placed another order (not cancelled) before ``placed_at``."""
        return session.execute(sa.select(OrderSummary.order_id).where(
            OrderSummary.contact_id == contact_id, OrderSummary.order_id != order_id,
            OrderSummary.order_state != "Cancelled", OrderSummary.created_at < placed_at).limit(1)).first() is not None

    def _upsert_summary(self, session: Session, store: StoreConfig, order_id: str, contact_id: int,
                        values: dict[str, Any]) -> PreviousOrder | None:
        """Write the order's summary row; what it held before, None for a new order."""
        row = session.get(OrderSummary, (store.commercetools_project, order_id))
        previous = None
        if row is None:
            row = OrderSummary(project_key=store.commercetools_project, order_id=order_id, contact_id=contact_id,
                               updated_at=utcnow(), **values)
            session.add(row)
        else:
            written = values["version"] >= row.version
            previous = PreviousOrder(row.order_state, row.refund_total, row.shipment_state, written, row.order_key,
                                     row.contact_id)
            if written:
                for name, value in values.items():
                    setattr(row, name, value)
                row.contact_id = contact_id
                row.updated_at = utcnow()
        session.flush()
        return previous

    @staticmethod
    def _address_of(session: Session, contact_id: int) -> Identity | None:
        """An address that resolves to contact ``contact_id`` (its email, else its mobile number), or None."""
        address = session.execute(sa.select(ContactIdentifier.kind, ContactIdentifier.value).where(
            ContactIdentifier.contact_id == contact_id,
            ContactIdentifier.kind.in_(("email", "mobile_number"))).order_by(ContactIdentifier.kind)).first()
        if address is None:
            return None
        return Identity(email=address.value) if address.kind == "email" else Identity(mobile_number=address.value)

    @staticmethod
    def _deleted_customer_reason(store: StoreConfig, deleted: str | None, order: Mapping[str, Any]) -> str:
        if deleted == ERASED:
            return "order of a customer deleted with dataErasure: not sent"
        if store.on_customer_deleted == "delete_contact":
            return "order of a deleted customer whose contact was deleted with it (on_customer_deleted): not sent"
        return f"order's customer was deleted and {order_without_email(order)}"

    def _order_left_contact(self, session: Session, store: StoreConfig, previous: PreviousOrder,
                            source: SourceStamp, priority: int) -> list[int]:
        """An order now belongs to another contact than ``previous.contact_id``: that contact's aggregates are
        recomputed without it (and sent), and its Orders record of the order is deleted; the outbox message ids."""
        old = session.get(Contact, previous.contact_id)
        if old is None:
            return []
        ids: list[int] = []
        suppressed = False
        # an address of the old contact resolves to it (the order's identity now resolves elsewhere)
        ident = self._address_of(session, old.id)
        agg_store = store if store.account == old.account else next(
            (s for s in self.settings.stores.values() if s.account == old.account), None)
        if ident is not None and agg_store is not None:
            agg_input = ContactInput(store_key=agg_store.key, identity=ident,
                                     attributes=order_aggregates(self._summaries(session, old.id)))
            mapped, suppression = self.contact_sync.map_contact(agg_input)
            applied = self.contact_sync.apply(session, agg_input, dict(mapped), list(suppression), priority=priority)
            ids.extend(applied.outbox_message_ids)
            suppressed = bool(applied.suppression_reasons)
        else:
            log.warning("contact %s no longer has an address of account %s: its order aggregates are not recomputed",
                        old.id, old.account)
        if not suppressed:
            mid = self._drop_order_record(session, store, old.account, old.id, previous.order_key, source, priority)
            if mid:
                ids.append(mid)
        return ids

    @staticmethod
    def _drop_order_record(session: Session, store: StoreConfig, account: str, contact_id: int, key: str,
                           source: SourceStamp, priority: int) -> int | None:
        """Delete the contact's Orders record ``key`` in Dotdigital (an ``insight.delete`` message in its partition)
        and forget it was sent (a record sent there again later is not taken for a repeat); None when no record
        was ever enqueued under that key for the contact (nothing to delete)."""
        forgotten = session.execute(sa.delete(FieldState).where(
            FieldState.contact_id == contact_id, FieldState.field == insight_path(ORDERS_COLLECTION, key))).rowcount
        if not forgotten:
            return None
        return outbox.enqueue(session, contact_id=contact_id, account=account, kind=outbox.INSIGHT_DELETE,
                              payload={"collection": ORDERS_COLLECTION, "record_id": key, "scope": "contact"},
                              ref=outbox.RecordRef(store.key, source.resource_type, source.resource_id,
                                                   source.version),
                              priority=priority)

    def _summaries(self, session: Session, contact_id: int) -> list[SummaryRow]:
        rows = session.execute(sa.select(OrderSummary).where(OrderSummary.contact_id == contact_id)).scalars()
        return [
            SummaryRow(r.order_key, r.created_at, r.total, r.currency, r.store_key, r.locale, r.order_state,
                       r.refund_total, list(r.categories or []))
            for r in rows
        ]

    # -- shared steps ---------------------------------------------------------------------------
    def _enqueue_insight(self, session: Session, contact_id: int, store: StoreConfig, collection: str,
                         record_id: str, record: dict, source: SourceStamp, priority: int) -> int | None:
        """Enqueue an insight record unless the identical record was already enqueued (``plans.enqueue_insight``)."""
        return enqueue_insight(DirectAccess(session), contact_id=contact_id, store=store, collection=collection,
                               record_id=record_id, record=record, source=source, priority=priority)

    def _advance_version(self, session: Session, project: str, resource_type: str, resource_id: str,
                         version: int) -> bool:
        """Raise the applied version of a resource; False when ``version`` is not newer (stale)."""
        conn = session.connection()
        key = {"project_key": project, "resource_type": resource_type, "resource_id": resource_id}
        applied = conn.execute(_LOCK_RESOURCE_VERSION, key).scalar_one_or_none()
        if applied is None:
            # a concurrent first insert of the same resource raises IntegrityError: the unit is run again
            conn.execute(_INSERT_RESOURCE_STATE, {**key, "version": version, "updated_at": utcnow()})
            return True
        if version <= applied:
            return False
        conn.execute(_UPDATE_RESOURCE_VERSION, {**{f"b_{k}": v for k, v in key.items()}, "b_version": version,
                                                "b_updated_at": utcnow()})
        return True

    def _mark_deleted(self, session: Session, project: str, customer_id: str, version: int | None, how: str) -> None:
        """Mark customer ``customer_id`` deleted (``how``: DELETED or ERASED; an erasure is never undone by a
        plain deletion's message). A deletion without a version still leaves its mark (version 0)."""
        conn = session.connection()
        key = (_RS.c.project_key == project, _RS.c.resource_type == "customer", _RS.c.resource_id == customer_id)
        if conn.execute(sa.select(_RS.c.version).where(*key)).first() is None:
            self._advance_version(session, project, "customer", customer_id, int(version or 0))
        keep = _RS.c.deleted == ERASED
        conn.execute(sa.update(_RS).where(*key, sa.or_(_RS.c.deleted.is_(None), sa.not_(keep))).values(deleted=how))

    def _customer_deleted_as(self, session: Session, store: StoreConfig, customer_id: Any) -> str | None:
        """DELETED or ERASED when commercetools deleted customer ``customer_id`` (see :meth:`_mark_deleted`)."""
        if not customer_id:
            return None
        return session.connection().execute(sa.select(_RS.c.deleted).where(
            _RS.c.project_key == store.commercetools_project, _RS.c.resource_type == "customer",
            _RS.c.resource_id == str(customer_id))).scalar()

    def _set_state_contact(self, session: Session, store: StoreConfig, resource_type: str, resource_id: str,
                           contact_id: int) -> None:
        session.connection().execute(
            sa.update(_RS).where(_RS.c.project_key == store.commercetools_project,
                                 _RS.c.resource_type == resource_type, _RS.c.resource_id == resource_id)
            .values(contact_id=contact_id))

    def _once(self, store: StoreConfig, key: str, outcome: NotificationOutcome,
              body: Callable[[Session], None]) -> Callable[[Session], NotificationOutcome]:
        """The unit of work running ``body`` at most once per dedupe ``key``, with the dedupe record.

        ``body`` sets ``outcome`` (applied by default; stale or ignored with a reason); the dedupe record keeps
        that outcome. The unit resets ``outcome`` first, since it may be re-run after a lost uniqueness race.
        """
        def unit(session: Session) -> NotificationOutcome:
            outcome.reset()
            if DirectAccess(session).processed(key):
                outcome.outcome, outcome.reason = DUPLICATE, "message already processed"
                return outcome
            body(session)
            # (DirectAccess flushes whatever body left in the ORM session before the Core insert)
            DirectAccess(session).mark_processed(processed_row(key, store.key, outcome.resource_type,
                                                               outcome.resource_id, outcome.outcome))
            return outcome

        return unit

    def _finish_ignored(self, store: StoreConfig, n: Notification, outcome: NotificationOutcome,
                        reason: str) -> Callable[[Session], NotificationOutcome]:
        def body(session: Session) -> None:
            outcome.outcome, outcome.reason = IGNORED, reason

        return self._once(store, n.dedupe_key, outcome, body)

    def _finish_rejected(self, store: StoreConfig, n: Notification, outcome: NotificationOutcome,
                         reason: str) -> Callable[[Session], NotificationOutcome]:
        """Ignored, and kept visible as a rejected record with ``reason`` (an event that could not be applied)."""
        def body(session: Session) -> None:
            outcome.outcome, outcome.reason = IGNORED, reason
            self._reject(session, store, n, reason)

        return self._once(store, n.dedupe_key, outcome, body)

    @staticmethod
    def _refused_record(store: StoreConfig, record_type: str, record_id: str, version: int | None,
                        exc: PluginFailed) -> dict[str, Any]:
        """The rejected-record row of an insight record a plugin failed (the plugin and hook named, no values)."""
        reason = f"{record_type} insight record not sent: {exc}"
        log.warning("%s %s of store %s: %s", record_type, record_id, store.key, reason)
        return {"operation": "TrackEvent", "store_key": store.key[:100], "record_type": record_type[:50] or None,
                "record_id": record_id[:200] or None, "record_version": version, "reason": reason[:2000],
                "created_at": utcnow()}

    @staticmethod
    def _reject(session: Session, store: StoreConfig, n: Notification, reason: str) -> None:
        """Keep a notification that was not applied visible in ``rejected_record`` (cut to the columns)."""
        session.add(RejectedRecord(operation="TrackEvent", store_key=store.key[:100],
                                   record_type=(n.resource_type or "")[:50] or None,
                                   record_id=(n.resource_id or "")[:200] or None, record_version=n.resource_version,
                                   reason=reason[:2000], created_at=utcnow()))
        log.warning("notification %s of %s/%s not applied: %s", n.dedupe_key, n.resource_type, n.resource_id, reason)


# -- prepared statements of the hot path ---------------------------------------------------------------
_RS = ResourceState.__table__
_RESOURCE_KEY = (_RS.c.project_key, _RS.c.resource_type, _RS.c.resource_id)
_LOCK_RESOURCE_VERSION = (
    sa.select(_RS.c.version).where(*(col == sa.bindparam(col.name) for col in _RESOURCE_KEY)).with_for_update()
)
_INSERT_RESOURCE_STATE = sa.insert(_RS)
_UPDATE_RESOURCE_VERSION = (
    sa.update(_RS)
    .where(*(col == sa.bindparam(f"b_{col.name}") for col in _RESOURCE_KEY))
    .values(version=sa.bindparam("b_version"), updated_at=sa.bindparam("b_updated_at", type_=_RS.c.updated_at.type))
)
