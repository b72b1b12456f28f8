"""A seeded random stream of TrackEvent requests (all PROCESSING_QUEUED) for a small pool of shoppers: what the
set-based apply tests feed to two services and compare.

The stream mixes behavioural events (product views, custom events, cart updates) by email, customer id,
mobile number and anonymous id; commercetools deliveries (CustomerCreated and OrderCreated with their payload,
CustomerEmailChanged fetched from the fake commercetools API, JSON-array deliveries repeating message ids);
stale versions; duplicate event ids; and requests that must be rejected (at ingest or when applied).

Every request is built once (ids, uuids and times included): both services receive the same bytes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from ctdd.sync.v1 import sync_service_pb2 as pb
from support import ct_payloads as ct

QUEUED = pb.PROCESSING_QUEUED
#: the (frozen) clock of the services: every event time lies within the two hours before it
CLOCK = datetime(2026, 11, 1, 12, 0, tzinfo=timezone.utc)
EVENTS_FROM = datetime(2026, 11, 1, 10, 0, tzinfo=timezone.utc)
#: programs of every kind on store uk; their delay keeps every trigger pending on the frozen clock
PROGRAMS = {kind: {"program": 100 + i, "delay_minutes": 24 * 60}
            for i, kind in enumerate(("abandoned_cart", "browse_abandonment", "post_purchase_first",
                                      "post_purchase_repeat", "review_request"), start=1)}


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


@dataclass
class Shopper:
    n: int
    email: str
    customer_id: str | None
    mobile: str | None
    anonymous_id: str
    #: the email a customer changes to (CustomerEmailChanged), if any
    new_email: str | None = None
    customer_version: int = 0
    created: bool = False


@dataclass
class EventStream:
    requests: list[pb.TrackEventRequest] = field(default_factory=list)
    #: customers the fake commercetools API must hold (fetched by CustomerEmailChanged / unknown-customer orders)
    ct_customers: list[dict] = field(default_factory=list)
    #: how many requests of each sort were made (the test checks the mix really is there)
    sorts: dict[str, int] = field(default_factory=dict)

    def add(self, sort: str, request: pb.TrackEventRequest) -> None:
        self.requests.append(request)
        self.sorts[sort] = self.sorts.get(sort, 0) + 1

    def batches(self, size: int) -> list[list[pb.TrackEventRequest]]:
        return [self.requests[i:i + size] for i in range(0, len(self.requests), size)]


class _Builder:
    def __init__(self, seed: int, shoppers: int):
        self.rng = random.Random(seed)
        self.stream = EventStream()
        self.shoppers = [self._shopper(i) for i in range(shoppers)]
        self.event_no = 0
        self.cart_versions: dict[str, int] = {}
        self.sent_event_ids: list[str] = []
        self.sent_messages: list[dict] = []
        self.order_no = 0

    def _shopper(self, i: int) -> Shopper:
        rng = self.rng
        return Shopper(i, f"shopper{i}@example.com", f"cust-{i}" if rng.random() < 0.6 else None,
                       f"+4477009{i:05d}" if rng.random() < 0.4 else None, f"anon-{i}")

    def moment(self, position: float) -> datetime:
        """A time within the two hours before the clock, growing with the position in the stream (plus noise)."""
        seconds = int(position * 7000) + self.rng.randint(-120, 120)
        return EVENTS_FROM + timedelta(seconds=max(0, min(seconds, 7150)))

    # -- behavioural events -------------------------------------------------------------------------
    def identity(self, s: Shopper) -> pb.ContactIdentity:
        choice = self.rng.choice(("email", "email", "customer", "mobile", "anonymous", "email+anonymous"))
        if choice == "customer" and s.customer_id:
            return pb.ContactIdentity(customer_id=s.customer_id)
        if choice == "mobile" and s.mobile:
            return pb.ContactIdentity(mobile_number=s.mobile)
        if choice == "anonymous":
            return pb.ContactIdentity(anonymous_id=s.anonymous_id)
        if choice == "email+anonymous":
            return pb.ContactIdentity(email=s.email.upper(), anonymous_id=s.anonymous_id)
        return pb.ContactIdentity(email=s.email)

    def next_event_id(self) -> str:
        self.event_no += 1
        return f"ev-{self.event_no}"

    def behavioural(self, s: Shopper, at: datetime) -> None:
        kind = self.rng.choice(("product_viewed", "product_viewed", "custom_event", "cart_updated"))
        event = pb.BehaviouralEvent(event_id=self.next_event_id(), identity=self.identity(s), currency="GBP",
                                    locale="en-GB")
        event.occurred_at.FromDatetime(at)
        if kind == "product_viewed":
            event.product_viewed.product_id = f"prod-{self.rng.randint(1, 6)}"
            event.product_viewed.sku = f"SKU-{self.rng.randint(1, 6)}"
            event.product_viewed.properties.update({"source": self.rng.choice(("search", "home", "email"))})
        elif kind == "custom_event":
            event.custom_event.name = self.rng.choice(("wishlist_added", "newsletter_signup", "store_visit"))
            event.custom_event.properties.update({"n": self.rng.randint(1, 100)})
        else:
            self.cart_event(event, s, at)
        self.sent_event_ids.append(event.event_id)
        self.stream.add(kind, pb.TrackEventRequest(store_key="uk", behavioural_event=event, processing=QUEUED))

    def cart_event(self, event: pb.BehaviouralEvent, s: Shopper, at: datetime) -> None:
        cart_id = f"cart-{s.n}-{self.rng.randint(1, 2)}"
        version = self.cart_versions.get(cart_id, 0) + 1
        if version > 2 and self.rng.random() < 0.2:
            version -= 2  # stale: older than the version already sent
        else:
            self.cart_versions[cart_id] = version
        lines = [ct.line_item(f"prod-{p}", f"SKU-{p}", f"Product {p}", self.rng.randint(1, 3), 500 + 100 * p)
                 for p in self.rng.sample(range(1, 7), self.rng.choice((0, 1, 1, 2, 3)))]
        event.cart_updated.cart_id = cart_id
        event.cart_updated.cart_version = version
        cart = {"id": cart_id, "version": version, "lineItems": lines, "cartState": "Active",
                "totalPrice": ct.money(sum(li["totalPrice"]["centAmount"] for li in lines)),
                "lastModifiedAt": _iso(at), "anonymousId": s.anonymous_id}
        if s.created and s.customer_id and self.rng.random() < 0.5:
            cart["customerId"] = s.customer_id
        if self.rng.random() < 0.6:
            cart["customerEmail"] = s.email
        event.cart_updated.cart.update(cart)

    # -- commercetools deliveries ---------------------------------------------------------------------
    def delivery(self, sort: str, body: bytes, priority: int = pb.PRIORITY_LIVE) -> None:
        self.stream.add(sort, pb.TrackEventRequest(store_key="uk", commercetools_delivery=body, processing=QUEUED,
                                                   priority=priority))

    def customer_created(self, s: Shopper, at: datetime) -> None:
        s.customer_version += 1
        customer = ct.customer(s.customer_id, s.email, version=s.customer_version, first=f"First{s.n}",
                               last=f"Last{s.n}v{s.customer_version}", modified=_iso(at))
        if s.mobile:
            customer["addresses"] = [{"id": "a1", "country": "GB", "mobile": s.mobile}]
        msg = ct.message("customer", s.customer_id, "CustomerCreated", version=s.customer_version,
                         created=_iso(at), customer=customer, msg_id=f"msg-cust-{s.n}-{s.customer_version}")
        s.created = True
        self.sent_messages.append(msg)
        self.delivery("customer_created", ct.raw(msg))

    def customer_stale(self, s: Shopper, at: datetime) -> None:
        """A snapshot of an older version of the customer, under a new message id: stale when applied."""
        customer = ct.customer(s.customer_id, s.email, version=1, first="Old", modified=_iso(EVENTS_FROM))
        msg = ct.message("customer", s.customer_id, "CustomerCreated", version=1, created=_iso(at),
                         customer=customer, msg_id=f"msg-stale-{s.n}-{self.event_no}")
        self.event_no += 1
        self.delivery("customer_stale", ct.raw(msg))

    def email_changed(self, s: Shopper, at: datetime) -> None:
        """The customer's email changes: the message carries no customer, the fake commercetools API has it."""
        s.new_email = f"new.shopper{s.n}@example.com"
        version = 10  # newer than any snapshot the stream sends
        self.stream.ct_customers.append(ct.customer(s.customer_id, s.new_email, version=version,
                                                    first=f"First{s.n}", last="Changed", modified=_iso(at)))
        msg = ct.message("customer", s.customer_id, "CustomerEmailChanged", version=version, created=_iso(at),
                         email=s.new_email, msg_id=f"msg-email-{s.n}")
        self.sent_messages.append(msg)
        self.delivery("email_changed", ct.raw(msg))

    def order_created(self, s: Shopper, at: datetime, *, guest: bool = False) -> None:
        self.order_no += 1
        oid = f"order-{self.order_no}"
        items = [ct.line_item(f"prod-{p}", f"SKU-{p}", f"Product {p}", 1, 500 + 100 * p)
                 for p in self.rng.sample(range(1, 7), self.rng.randint(1, 3))]
        extra = {}
        cart_ids = [c for c in self.cart_versions if c.startswith(f"cart-{s.n}-")]
        if cart_ids and self.rng.random() < 0.5:
            extra["cart"] = {"typeId": "cart", "id": self.rng.choice(cart_ids)}
        if self.rng.random() < 0.2:
            extra["shipmentState"] = "Delivered"
        order = ct.order(oid, number=f"N{self.order_no}", email=s.email,
                         customer_id=None if guest or not s.created else s.customer_id, items=items,
                         created=_iso(at), **extra)
        msg = ct.message("order", oid, "OrderCreated", version=1, created=_iso(at), order=order,
                         msg_id=f"msg-order-{self.order_no}")
        self.sent_messages.append(msg)
        backfill = self.rng.random() < 0.15
        self.delivery("order_created", ct.raw(msg), pb.PRIORITY_BACKFILL if backfill else pb.PRIORITY_LIVE)

    def repeated_messages(self, at: datetime) -> None:
        """A JSON-array delivery: an already sent message and a new one twice (duplicates reach the apply)."""
        old = self.rng.choice(self.sent_messages)
        self.order_no += 1
        s = self.rng.choice(self.shoppers)
        oid = f"order-{self.order_no}"
        order = ct.order(oid, number=f"N{self.order_no}", email=s.email, created=_iso(at))
        new = ct.message("order", oid, "OrderCreated", version=1, created=_iso(at), order=order,
                         msg_id=f"msg-order-{self.order_no}")
        self.sent_messages.append(new)
        self.delivery("array_with_duplicates", ct.raw([old, new, new]))

    # -- requests that must not be applied --------------------------------------------------------------
    def invalid(self, at: datetime) -> None:
        s = self.rng.choice(self.shoppers)
        kind = self.rng.choice(("no_event_id", "unknown_store", "not_json", "bad_customer", "future_customer",
                                "unknown_customer_order", "malformed_fetched"))
        if kind == "no_event_id":  # refused at ingest
            event = pb.BehaviouralEvent(identity=pb.ContactIdentity(email=s.email),
                                        product_viewed=pb.ProductViewed(product_id="prod-1"))
            self.stream.add("invalid_at_ingest", pb.TrackEventRequest(store_key="uk", behavioural_event=event,
                                                                      processing=QUEUED))
        elif kind == "unknown_store":
            self.stream.add("invalid_at_ingest", pb.TrackEventRequest(
                store_key="nowhere", commercetools_delivery=b"{}", processing=QUEUED))
        elif kind == "not_json":
            self.delivery("invalid_at_ingest", b"{not json")
        elif kind == "bad_customer":  # an embedded customer of the wrong shape
            customer = ct.customer(f"bad-{self.event_no}", s.email)
            customer["version"] = "seven"
            self.event_no += 1
            self.delivery("invalid_at_ingest", ct.raw(ct.message("customer", customer["id"], "CustomerCreated",
                                                                 version=1, customer=customer)))
        elif kind == "future_customer":  # refused when applied: its time is days ahead of the clock
            cid = f"future-{self.event_no}"
            self.event_no += 1
            customer = ct.customer(cid, f"future{self.event_no}@example.com",
                                   modified=_iso(CLOCK + timedelta(days=3)))
            self.delivery("rejected_when_applied", ct.raw(ct.message(
                "customer", cid, "CustomerCreated", version=1, created=_iso(at), customer=customer,
                msg_id=f"msg-future-{self.event_no}")))
        elif kind == "unknown_customer_order":  # no email, a customer commercetools does not know
            self.order_no += 1
            oid = f"order-{self.order_no}"
            order = ct.order(oid, number=None, email=None, customer_id=f"ghost-{self.order_no}", created=_iso(at))
            self.delivery("rejected_when_applied", ct.raw(ct.message(
                "order", oid, "OrderCreated", version=1, created=_iso(at), order=order,
                msg_id=f"msg-order-{self.order_no}")))
        else:  # the fetched customer has the wrong shape: the inbox rejects the event
            cid = f"malformed-{self.event_no}"
            self.event_no += 1
            bad = ct.customer(cid, f"{cid}@example.com", version=2)
            bad["email"] = 42
            self.stream.ct_customers.append(bad)
            self.delivery("rejected_when_applied", ct.raw(ct.message(
                "customer", cid, "CustomerFirstNameSet", version=2, created=_iso(at), firstName="X",
                msg_id=f"msg-{cid}")))

    def duplicate_event(self) -> None:
        """An event id sent before, again (the inbox answers duplicate at once)."""
        if not self.sent_event_ids:
            return
        event_id = self.rng.choice(self.sent_event_ids)
        event = pb.BehaviouralEvent(event_id=event_id, identity=pb.ContactIdentity(email="someone@example.com"),
                                    custom_event=pb.CustomEvent(name="replayed"))
        self.stream.add("duplicate_event_id", pb.TrackEventRequest(store_key="uk", behavioural_event=event,
                                                                   processing=QUEUED))

    def build(self, count: int) -> EventStream:
        for i in range(count):
            at = self.moment(i / count)
            s = self.rng.choice(self.shoppers)
            roll = self.rng.random()
            if s.customer_id and not s.created and roll < 0.5:
                self.customer_created(s, at)
            elif roll < 0.62:
                self.behavioural(s, at)
            elif roll < 0.68 and s.created:
                self.customer_created(s, at)  # a newer snapshot (name changes)
            elif roll < 0.71 and s.created:
                self.customer_stale(s, at)
            elif roll < 0.73 and s.created and s.new_email is None:
                self.email_changed(s, at)
            elif roll < 0.83:
                self.order_created(s, at, guest=self.rng.random() < 0.3)
            elif roll < 0.87 and self.sent_messages:
                self.repeated_messages(at)
            elif roll < 0.94:
                self.invalid(at)
            else:
                self.duplicate_event()
        return self.stream


def build_stream(seed: int, count: int = 480, shoppers: int = 24) -> EventStream:
    """``count`` (about) requests for ``shoppers`` people, the same for the same seed."""
    return _Builder(seed, shoppers).build(count)
