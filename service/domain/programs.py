"""Program trigger rules (pure): quiet hours, re-trigger windows, series timing and the safeguard decision.

Nothing here does I/O. ``ctdd.programs.processor`` gathers the facts of a due trigger from the database
(:class:`TriggerFacts`), asks :func:`decide`, and records the :class:`Decision` on the trigger row.

A decision is one of:

- ``send``: start the program now (enrol the contact, or join the trigger list);
- ``skip(reason)``: the contact must not get this program now (consent, window, no address, a plugin veto ...);
- ``cancel(reason)``: the subject itself went away or changed (the cart was ordered, merged, emptied or
  changed again; the order was cancelled);
- ``defer(until, reason)``: not yet (quiet hours, the Dotdigital contact does not exist yet): the trigger
  stays pending with a later due time. Deferring never drops a trigger.

Reasons are stable strings (:data:`REASONS`); ``vetoed: <plugin reason>`` carries the plugin's own text.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

#: program kinds (the keys of ``[stores.<key>.programs]``)
ABANDONED_CART = "abandoned_cart"
BROWSE_ABANDONMENT = "browse_abandonment"
POST_PURCHASE_FIRST = "post_purchase_first"
POST_PURCHASE_REPEAT = "post_purchase_repeat"
REVIEW_REQUEST = "review_request"
ORDER_KINDS = (POST_PURCHASE_FIRST, POST_PURCHASE_REPEAT, REVIEW_REQUEST)

#: subject types of a trigger
SUBJECT_CART = "cart"
SUBJECT_ORDER = "order"
SUBJECT_BROWSE = "browse"

#: channel statuses as the safeguards see them (:func:`channel_status`)
SUBSCRIBED = "subscribed"
UNSUBSCRIBED = "unsubscribed"
SUPPRESSED = "suppressed"
PENDING_OPT_IN = "pending_opt_in"
UNKNOWN = "unknown"

# -- reasons (stable: logs, ``ctdd triggers list``, docs/programs.md) ------------------------------------------
CART_ORDERED = "cart_ordered"
CART_MERGED = "cart_merged"
CART_EMPTIED = "cart_emptied"
CART_CHANGED = "cart_changed"
CART_FROZEN = "cart_frozen"
CART_UNKNOWN = "cart_unknown"
CART_NOT_ATTRIBUTED = "cart_not_attributed"
VIEWED_AGAIN = "viewed_again"
ORDERED_SINCE = "ordered_since"
PRODUCTS_IN_CART = "products_in_cart"
ORDER_CANCELLED = "order_cancelled"
ORDER_REFUNDED = "order_refunded"
NO_ADDRESS = "no_address"
NO_EMAIL = "no_email"
NO_MOBILE = "no_mobile"
WITHIN_RETRIGGER_WINDOW = "within_retrigger_window"
CONTACT_NOT_IN_DOTDIGITAL = "contact_not_in_dotdigital"
QUIET_HOURS = "quiet_hours"
PROGRAM_DISABLED = "program_disabled"
PROGRAM_UNRESOLVED = "program_unresolved"
VETOED = "vetoed"
PLUGIN_FAILED = "plugin_failed"
DEFERRED_BY_PLUGIN = "deferred_by_plugin"
TOO_OLD = "too_old"

#: every reason a decision can carry (``vetoed``/``plugin_failed``/``deferred_by_plugin`` are followed by
#: ``: <text>``), plus ``unsubscribed``/``suppressed``/``pending_opt_in`` (the channel statuses)
REASONS = (
    CART_ORDERED, CART_MERGED, CART_EMPTIED, CART_CHANGED, CART_FROZEN, CART_UNKNOWN, CART_NOT_ATTRIBUTED,
    VIEWED_AGAIN, ORDERED_SINCE, PRODUCTS_IN_CART, ORDER_CANCELLED, ORDER_REFUNDED, NO_ADDRESS, NO_EMAIL,
    NO_MOBILE, UNSUBSCRIBED, SUPPRESSED, PENDING_OPT_IN, WITHIN_RETRIGGER_WINDOW, CONTACT_NOT_IN_DOTDIGITAL,
    QUIET_HOURS, PROGRAM_DISABLED, PROGRAM_UNRESOLVED, VETOED, PLUGIN_FAILED, DEFERRED_BY_PLUGIN, TOO_OLD,
)

SEND, SKIP, DEFER, CANCEL = "send", "skip", "defer", "cancel"

QuietHours = tuple[tuple[int, int], tuple[int, int]]


@dataclass(frozen=True)
class Decision:
    """What to do with a due trigger."""

    action: str  # send | skip | defer | cancel
    reason: str | None = None
    #: defer: the new due time (UTC)
    until: datetime | None = None

    @classmethod
    def send(cls) -> Decision:
        return cls(SEND)

    @classmethod
    def skip(cls, reason: str) -> Decision:
        return cls(SKIP, reason)

    @classmethod
    def cancel(cls, reason: str) -> Decision:
        return cls(CANCEL, reason)

    @classmethod
    def defer(cls, until: datetime, reason: str) -> Decision:
        return cls(DEFER, reason, until)

    @property
    def final(self) -> bool:
        """A skip or cancel: the trigger is decided for good."""
        return self.action in (SKIP, CANCEL)


# -- time rules ------------------------------------------------------------------------------------------------


def _in_quiet(local: time, start: time, end: time) -> bool:
    if start == end:
        return False
    if start < end:
        return start <= local < end
    return local >= start or local < end  # spans midnight


def _first_instant_at_or_after(day: date, wall: time, tz: ZoneInfo) -> datetime:
    """The earliest UTC instant whose local wall-clock time on ``day`` is ``wall`` or, when ``wall`` does not
    exist that day (the clocks jumped forward over it), the instant of the jump."""
    naive = datetime.combine(day, wall)
    early = naive.replace(tzinfo=tz, fold=0).astimezone(timezone.utc)
    late = naive.replace(tzinfo=tz, fold=1).astimezone(timezone.utc)
    first, second = min(early, late), max(early, late)
    if first.astimezone(tz).replace(tzinfo=None) == naive:
        return first  # exists (an ambiguous time: its first occurrence)
    if second.astimezone(tz).replace(tzinfo=None) == naive:
        return second
    # In a gap: the local time jumps over ``wall`` between ``first`` and ``second``; find the jump (to the second).
    lo, hi = first, second
    while hi - lo > timedelta(seconds=1):
        mid = lo + (hi - lo) / 2
        if mid.astimezone(tz).replace(tzinfo=None) < naive:
            lo = mid
        else:
            hi = mid
    return hi.replace(microsecond=0) if hi.microsecond else hi


def next_allowed_time(at: datetime, time_zone: str, quiet_hours: QuietHours | None) -> datetime:
    """``at`` (aware) if it falls outside the quiet hours, else the first UTC instant their end is reached.

    ``quiet_hours`` is ((start hour, minute), (end hour, minute)) in the local time of ``time_zone``; the
    range may span midnight (22:00-08:00). Equal start and end mean no quiet hours. DST-safe: local times are
    read from the instant, and an end time skipped by a spring-forward jump ends the quiet hours at the jump.
    """
    if quiet_hours is None:
        return at
    tz = ZoneInfo(time_zone)
    start, end = time(*quiet_hours[0]), time(*quiet_hours[1])
    local = at.astimezone(tz)
    if not _in_quiet(local.time().replace(tzinfo=None), start, end):
        return at
    day = local.date()
    if start > end and local.time().replace(tzinfo=None) >= start:
        day = day + timedelta(days=1)  # before midnight: the quiet hours end tomorrow morning
    candidate = _first_instant_at_or_after(day, end, tz)
    if candidate <= at:
        # a repeated (fall-back) hour: the wall clock reads a quiet time again after the end was reached
        naive = datetime.combine(day, end)
        later = naive.replace(tzinfo=tz, fold=1).astimezone(timezone.utc)
        candidate = later if later > at else at
    return candidate


def within_window(last_entry_at: datetime | None, now: datetime, window_hours: float) -> bool:
    """Whether a program entry at ``last_entry_at`` is less than ``window_hours`` before ``now`` (0: no window)."""
    if last_entry_at is None or window_hours <= 0:
        return False
    return now - last_entry_at < timedelta(hours=window_hours)


def step_due_times(base: datetime, steps_minutes: list[float]) -> list[datetime]:
    """Due time of each step of a series: ``steps_minutes`` counts from ``base`` (the subject's last change)."""
    return [base + timedelta(minutes=m) for m in steps_minutes]


def next_step_due(sent_at: datetime, step: int, steps_minutes: list[float]) -> datetime | None:
    """When step ``step + 1`` of a series falls due, its previous step having been sent at ``sent_at``
    (reminders count from the previous step); None when ``step`` was the last."""
    if step >= len(steps_minutes):
        return None
    return sent_at + timedelta(minutes=steps_minutes[step] - steps_minutes[step - 1])


def epoch_ms(at: datetime) -> int:
    """A view time as a browse trigger's subject version (milliseconds since the epoch)."""
    return int(at.timestamp() * 1000)


# -- channel status --------------------------------------------------------------------------------------------

#: Dotdigital statuses that mean "may be sent to" or "never decided"
_OPEN = frozenset({"subscribed", "noSubscription", "unknown", "softBounced"})


def _lower_camel(status: str | None) -> str | None:
    if not status:
        return None
    return status[0].lower() + status[1:]


def channel_status(dd_status: str | None, dd_status_at: datetime | None, shop_consent: str | None,
                   shop_consent_at: datetime | None) -> str:
    """The channel's status for the safeguards, from what the consent rules keep on the contact.

    - a Dotdigital opt-out always wins (an unsubscribe as ``unsubscribed``; a bounce, complaint or any other
      suppression as ``suppressed``): Dotdigital would not send anyway, and a newer shop opt-in only lifts it
      once Dotdigital reports the contact subscribed again;
    - ``pendingOptIn`` in Dotdigital is ``pending_opt_in`` (double opt-in not confirmed yet);
    - a shop opt-out newer than Dotdigital's status (or with Dotdigital's status unknown) is ``unsubscribed``;
    - subscribed in Dotdigital, or opted in by the shop, is ``subscribed``; anything else ``unknown``.
    """
    dd = _lower_camel(dd_status)
    if dd == "pendingOptIn":
        return PENDING_OPT_IN
    if dd == "unsubscribed":
        return UNSUBSCRIBED
    if dd is not None and dd not in _OPEN:
        return SUPPRESSED
    if shop_consent == "unsubscribed" and (
            dd != "subscribed" or dd_status_at is None or shop_consent_at is None or shop_consent_at >= dd_status_at):
        return UNSUBSCRIBED
    if dd == "subscribed" or shop_consent == "subscribed":
        return SUBSCRIBED
    return UNKNOWN


# -- the safeguard decision ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TriggerFacts:
    """Everything the safeguards look at, read from the database at the moment of sending."""

    program_kind: str
    subject_type: str  # cart | order | browse
    subject_version: int
    step: int
    now: datetime
    #: enrolment | list_join (an enrolment needs the Dotdigital contact id; a list join travels in the
    #: contact's outbox partition, after its upsert)
    strategy: str = "enrolment"
    channel: str = "email"
    #: the program is configured and enabled for the store
    enabled: bool = True
    # -- a cart subject (None: no cart row known)
    cart_state: str | None = None
    cart_version: int | None = None
    cart_line_item_count: int | None = None
    cart_merged: bool = False
    cart_ordered: bool = False
    cart_attributed: bool = True
    # -- an order subject
    order_cancelled: bool = False
    order_refunded: bool = False
    # -- browse: viewed products of the session not put in a cart since (0: all were)
    browse_products: int | None = None
    #: the subject's start: an order of the contact after it means "ordered since" (the cart's last change,
    #: the first view of a browse session); None for order subjects
    since: datetime | None = None
    #: the contact's latest order (any store of the account)
    last_order_at: datetime | None = None
    # -- the contact
    channel_status: str = UNKNOWN
    has_email: bool = True
    has_mobile: bool = False
    dotdigital_contact_known: bool = True
    #: after this time a trigger stops waiting for the contact's upsert and is skipped
    contact_wait_until: datetime | None = None
    contact_wait_seconds: float = 30.0
    #: the contact's latest entry into this program (step 1 sent), other than this trigger's subject
    last_entry_at: datetime | None = None
    retrigger_window_hours: float = 0.0
    # -- a plugin's answer (``ctdd_should_trigger``)
    plugin_veto: str | None = None
    plugin_defer_until: datetime | None = None
    plugin_defer_reason: str | None = None
    # -- quiet hours (the store's local time)
    time_zone: str = "UTC"
    quiet_hours: QuietHours | None = None
    # -- lateness: the step's first due time, and how late it may still go (0: no limit)
    first_due_at: datetime | None = None
    max_age_hours: float = 0.0


def too_old(f: TriggerFacts, at: datetime | None = None) -> bool:
    """Whether the trigger would go more than ``max_age_hours`` after it first fell due (at ``at``, default now)."""
    if f.first_due_at is None or f.max_age_hours <= 0:
        return False
    return (at or f.now) - f.first_due_at > timedelta(hours=f.max_age_hours)


def subject_decision(f: TriggerFacts) -> Decision | None:
    """The checks on the subject itself (cart, order, browse session): a cancel or skip, or None."""
    if not f.enabled:
        return Decision.skip(PROGRAM_DISABLED)
    if f.subject_type == SUBJECT_CART:
        if f.cart_state is None:
            return Decision.skip(CART_UNKNOWN)
        if f.cart_ordered or f.cart_state == "Ordered":
            return Decision.cancel(CART_ORDERED)
        if f.cart_merged or f.cart_state == "Merged":
            return Decision.cancel(CART_MERGED)
        if f.cart_version is not None and f.cart_version > f.subject_version:
            return Decision.cancel(CART_EMPTIED if not f.cart_line_item_count else CART_CHANGED)
        if not f.cart_line_item_count:
            return Decision.cancel(CART_EMPTIED)
        if f.cart_state != "Active":
            return Decision.cancel(CART_FROZEN)
        if not f.cart_attributed:
            return Decision.skip(CART_NOT_ATTRIBUTED)
    elif f.subject_type == SUBJECT_ORDER:
        if f.order_cancelled:
            return Decision.cancel(ORDER_CANCELLED)
        if f.order_refunded:
            return Decision.cancel(ORDER_REFUNDED)
    elif f.subject_type == SUBJECT_BROWSE:
        if f.browse_products is not None and f.browse_products <= 0:
            return Decision.skip(PRODUCTS_IN_CART)
    if f.subject_type in (SUBJECT_CART, SUBJECT_BROWSE) and f.since is not None and f.last_order_at is not None \
            and f.last_order_at > f.since:
        return Decision.skip(ORDERED_SINCE)
    return None


def contact_decision(f: TriggerFacts) -> Decision | None:
    """The checks on the contact (address, consent, re-trigger window): a skip, or None."""
    if not f.has_email and not f.has_mobile:
        return Decision.skip(NO_ADDRESS)
    if f.channel == "email" and not f.has_email:
        return Decision.skip(NO_EMAIL)
    if f.channel == "sms" and not f.has_mobile:
        return Decision.skip(NO_MOBILE)
    if f.channel_status in (UNSUBSCRIBED, SUPPRESSED, PENDING_OPT_IN):
        return Decision.skip(f.channel_status)
    if f.step == 1 and within_window(f.last_entry_at, f.now, f.retrigger_window_hours):
        return Decision.skip(WITHIN_RETRIGGER_WINDOW)
    return None


def decide(f: TriggerFacts) -> Decision:
    """The safeguard decision for a due trigger, checked in this order: the subject (cancel: ordered, merged,
    changed, emptied, order cancelled; skip: ordered since, products carted), the contact (skip: no address,
    channel unsubscribed/suppressed/pending opt-in, within the re-trigger window), a plugin's veto (skip) or
    deferral, the Dotdigital contact (defer while its upsert is on its way), the quiet hours (defer); and
    lateness: a trigger more than ``max_age_hours`` past its first due time, or that a deferral would take
    past it, is skipped as ``too_old``."""
    for check in (subject_decision, contact_decision):
        decision = check(f)
        if decision is not None:
            return decision
    if too_old(f):
        return Decision.skip(TOO_OLD)
    decision = _deciding(f)
    if decision.action == DEFER and too_old(f, decision.until):
        return Decision.skip(TOO_OLD)
    return decision


def _deciding(f: TriggerFacts) -> Decision:
    if f.plugin_veto is not None:
        return Decision.skip(f.plugin_veto)
    if f.plugin_defer_until is not None and f.plugin_defer_until > f.now:
        return Decision.defer(f.plugin_defer_until, f"{DEFERRED_BY_PLUGIN}: {f.plugin_defer_reason or 'deferred'}")
    if f.strategy == "enrolment" and not f.dotdigital_contact_known:
        if f.contact_wait_until is not None and f.now >= f.contact_wait_until:
            return Decision.skip(CONTACT_NOT_IN_DOTDIGITAL)
        return Decision.defer(f.now + timedelta(seconds=f.contact_wait_seconds), CONTACT_NOT_IN_DOTDIGITAL)
    allowed = next_allowed_time(f.now, f.time_zone, f.quiet_hours)
    if allowed > f.now:
        return Decision.defer(allowed, QUIET_HOURS)
    return Decision.send()


def presend_decision(f: TriggerFacts) -> Decision | None:
    """The checks repeated right before an enrolment call (the trigger may have waited minutes or hours for its
    batch or for the hourly allowance): the subject and the contact's consent (a skip or cancel), then the quiet
    hours (a defer to their end: the trigger goes back to ``pending``); None when it may go. No window or plugin
    check: those were passed when the trigger was decided."""
    decision = subject_decision(f)
    if decision is not None:
        return decision
    if f.channel_status in (UNSUBSCRIBED, SUPPRESSED, PENDING_OPT_IN):
        return Decision.skip(f.channel_status)
    if too_old(f):
        return Decision.skip(TOO_OLD)
    allowed = next_allowed_time(f.now, f.time_zone, f.quiet_hours)
    if allowed > f.now:
        return Decision.skip(TOO_OLD) if too_old(f, allowed) else Decision.defer(allowed, QUIET_HOURS)
    return None


def vetoed(reason: str) -> str:
    return f"{VETOED}: {reason}"


def plugin_failed(plugin: str, error: str) -> str:
    return f"{PLUGIN_FAILED}: {plugin}: {error}"
