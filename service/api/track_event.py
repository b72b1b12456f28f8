"""TrackEvent requests: the checks every request gets, how it becomes prepared steps (applied now), and how
it is stored in the inbox and read back (queued). The only place that knows the wire format of a TrackEvent;
the inbox below stores the serialized request as opaque bytes."""

from __future__ import annotations

from ctdd import clock
from ctdd.api.convert import InvalidRequest, Violation, check_behavioural_event, parse_behavioural_event
from ctdd.config import Settings
from ctdd.domain.echo import echo
from ctdd.domain.identity import InvalidIdentifier, normalise_email
from ctdd.delivery import outbox
from ctdd.ingest.events import EventProcessor, InvalidEvent, NotificationOutcome, Step, behavioural_dedupe_key
from ctdd.ingest.inbox import PrepareStored, QueuedEvent, lane_of, stores_text
from ctdd.sync.v1 import sync_service_pb2 as pb

PAYLOAD_REQUIRED = Violation("payload", "one of commercetools_delivery or behavioural_event is required")
_PROCESSING = frozenset(pb.Processing.values())
_PRIORITY = frozenset(pb.Priority.values())
#: one commercetools delivery (SQS allows 256 KB; Pub/Sub and EventBridge more)
MAX_DELIVERY_BYTES = 4 * 1024 * 1024


def priority_of(request: pb.TrackEventRequest) -> int:
    return outbox.PRIORITY_BACKFILL if request.priority == pb.PRIORITY_BACKFILL else outbox.PRIORITY_LIVE


def _check(settings: Settings, request: pb.TrackEventRequest) -> str:
    """The request's payload kind, after the checks every TrackEventRequest gets (InvalidRequest)."""
    which = request.WhichOneof("payload")
    if which is None:
        raise InvalidRequest([PAYLOAD_REQUIRED])
    if not request.store_key:
        raise InvalidRequest([Violation("store_key", "required")])
    if settings.store(request.store_key) is None:
        raise InvalidRequest([Violation("store_key", f"unknown store {echo(request.store_key)}")])
    if which == "commercetools_delivery" and len(request.commercetools_delivery) > MAX_DELIVERY_BYTES:
        raise InvalidRequest([Violation("commercetools_delivery", f"larger than {MAX_DELIVERY_BYTES} bytes")])
    if request.processing not in _PROCESSING or request.priority not in _PRIORITY:
        # a newer client's value this version does not know: refused, not read as the default
        raise InvalidRequest([Violation(name, f"unknown value {value}: one of {', '.join(enum.keys())}")
                              for name, value, enum in (("processing", request.processing, pb.Processing),
                                                        ("priority", request.priority, pb.Priority))
                              if value not in enum.values()])
    return which


async def prepare_request(events: EventProcessor, settings: Settings, request: pb.TrackEventRequest,
                          stores: frozenset[str] | None = None) -> list[Step]:
    """The prepared steps of one TrackEventRequest (applied now, or taken from the inbox) of a caller whose token
    may use ``stores`` (None: every store): a commercetools resource is applied under none of the others.

    Raises InvalidRequest / InvalidEvent (never processable) or RetryableEventError (try again later).
    """
    priority = priority_of(request)
    if _check(settings, request) == "commercetools_delivery":
        return await events.prepare_delivery(request.store_key, request.commercetools_delivery, priority=priority,
                                             allowed=stores)
    stamp_received(request)
    event = parse_behavioural_event(request.behavioural_event, settings, request.store_key)
    return [events.prepare_behavioural(request.store_key, event, priority=priority)]


def queued_event(events: EventProcessor, settings: Settings, request: pb.TrackEventRequest,
                 stores: frozenset[str] | None = None) -> QueuedEvent | NotificationOutcome:
    """Validate a request for the inbox: what to store (with ``stores``, the stores the caller's token may use,
    None: every store), or the final outcome of a delivery that needs no processing (a well-formed but irrelevant
    message). Raises InvalidRequest / InvalidEvent."""
    if _check(settings, request) == "commercetools_delivery":
        parsed = events.parse(request.store_key, request.commercetools_delivery)
        if isinstance(parsed, NotificationOutcome):
            return parsed
        key = parsed[0].dedupe_key if len(parsed) == 1 and not _scoped(settings, request.store_key, stores) else None
    else:
        key = behavioural_dedupe_key(request.store_key, check_behavioural_event(request.behavioural_event, settings))
        stamp_received(request)  # stored with the time it came in, not the time it is applied
        return QueuedEvent(request.store_key, request.SerializeToString(), key,
                           lane=lane_of(_lane_key(request.behavioural_event)))
    # a commercetools delivery: its customer is known once it is prepared (lane 0; such events are applied one
    # by one under the exclusive apply lock anyway, see ctdd.ingest.inbox)
    return QueuedEvent(request.store_key, request.SerializeToString(), key, stores=stores_text(stores))


def _scoped(settings: Settings, store_key: str, stores: frozenset[str] | None) -> bool:
    """Whether a caller that may use ``stores`` may not use every store of ``store_key``'s commercetools project.
    Its deliveries are then queued without their message id as key: one of its notifications that it may not
    apply (of another brand's store) is ignored without a dedupe record, and the copy the adapter of that store
    queues must not be answered duplicate at once (the notifications are still deduplicated when applied)."""
    if stores is None:
        return False
    project = settings.stores[store_key].commercetools_project
    return any(s.key not in stores for s in settings.stores.values() if s.commercetools_project == project)


def stamp_received(request: pb.TrackEventRequest) -> None:
    """A behavioural event without ``occurred_at`` takes the time it was received, to the microsecond (a cart
    without a version or a ``lastModifiedAt`` is ordered by it: two changes within one second must not look
    alike): its records' times (a view's ``lastViewedAt``, a custom event's ``occurredAt``, a cart's dates
    when the cart has none) and its order among the contact's events."""
    event = request.behavioural_event
    if not event.HasField("occurred_at"):
        # the service's clock (ctdd.clock: virtual under `ctdd simulate`, whose checks read the same clock)
        event.occurred_at.FromDatetime(clock.now())


def _lane_key(event: pb.BehaviouralEvent) -> str:
    """What an event's lane is hashed from: a cart event's cart (all versions of a cart in one lane, applied in
    arrival order, whoever the shopper is by then); else its email (trimmed, lower case), customer id, mobile
    number or anonymous id. The email is normalised as the contact's is (``normalise_email``: an internationalised
    domain in its ASCII form is the same contact, so the same lane). The request's checks have refused an
    invalid email before this; should one come through, it is hashed trimmed and lower case."""
    if event.WhichOneof("kind") == "cart_updated" and event.cart_updated.cart_id:
        return "cart:" + event.cart_updated.cart_id
    identity = event.identity
    email = identity.email.strip().lower()
    if email:
        try:
            return normalise_email(email)
        except InvalidIdentifier:
            return email
    return identity.customer_id or identity.mobile_number or identity.anonymous_id


def stored_request_preparer(events: EventProcessor, settings: Settings) -> PrepareStored:
    """What the inbox processor calls with a stored request (the bytes :func:`queued_event` stored)."""

    async def prepare(stored: bytes, stores: frozenset[str] | None) -> list[Step]:
        try:
            request = pb.TrackEventRequest.FromString(stored)
            return await prepare_request(events, settings, request, stores)
        except InvalidRequest as exc:
            raise InvalidEvent(str(exc) or "invalid request") from exc

    def at_once(stored: bytes) -> list[Step] | None:
        """A behavioural event's steps without awaiting anything (no commercetools call); None for a delivery."""
        try:
            request = pb.TrackEventRequest.FromString(stored)
            if _check(settings, request) == "commercetools_delivery":
                return None
            event = parse_behavioural_event(request.behavioural_event, settings, request.store_key, scanned=True)
            return [events.prepare_behavioural(request.store_key, event, priority=priority_of(request))]
        except InvalidRequest as exc:
            raise InvalidEvent(str(exc) or "invalid request") from exc

    prepare.at_once = at_once  # type: ignore[attr-defined]
    return prepare
