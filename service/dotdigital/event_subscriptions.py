"""The Events API export subscription ctdd-sync keeps per Dotdigital account (``ctdd-sync-<account>``).

:func:`ensure_event_subscription` finds it by name (``GET /events/v3/export/subscriptions``) and creates it
(``POST``), makes an inactive one active again, or adds the event types it lacks (``PUT`` with the whole
request); ``ctdd dotdigital setup`` runs it, and the events feed (``ctdd.backsync.events_feed``) when it finds
its subscription inactive. Dotdigital only captures events that happen while a subscription is active, and
suspends one that was not read for 30 days.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ctdd.domain.dotdigital_events import BACKSYNC_EVENT_TYPES, subscription_name
from ctdd.dotdigital.client import DotdigitalClient, EventSubscription
from ctdd.dotdigital.errors import DotdigitalError

log = logging.getLogger(__name__)

EXISTS, CREATE, REACTIVATE, UPDATE = "exists", "create", "reactivate", "update"


@dataclass
class SubscriptionPlan:
    """What the account's subscription needs (``action``) and, once applied (or when it exists), the subscription."""

    account: str
    name: str
    action: str
    subscription: EventSubscription | None = None
    missing_types: tuple[str, ...] = ()
    done: bool = False


async def find_event_subscription(client: DotdigitalClient, account: str) -> EventSubscription | None:
    """The account's ctdd-sync subscription, found by name, or ``None``."""
    name = subscription_name(account)
    return next((s for s in await client.list_event_subscriptions() if s.name == name), None)


async def plan_event_subscription(client: DotdigitalClient, account: str) -> SubscriptionPlan:
    """Compare the account's subscription with what the back-sync needs (read-only)."""
    name = subscription_name(account)
    found = await find_event_subscription(client, account)
    if found is None:
        return SubscriptionPlan(account, name, CREATE)
    missing = tuple(t for t in BACKSYNC_EVENT_TYPES if t not in found.event_types)
    if not found.active:
        return SubscriptionPlan(account, name, REACTIVATE, found, missing)
    return SubscriptionPlan(account, name, UPDATE if missing else EXISTS, found, missing)


async def apply_event_subscription(client: DotdigitalClient, plan: SubscriptionPlan) -> SubscriptionPlan:
    """Carry out ``plan`` (idempotent: a subscription created meanwhile under the name is taken as found)."""
    if plan.action == EXISTS:
        return plan
    if plan.action == CREATE:
        try:
            plan.subscription = await client.create_event_subscription(plan.name, list(BACKSYNC_EVENT_TYPES))
        except DotdigitalError as exc:
            if exc.code != "events:nameAlreadyExists":
                raise
            again = await plan_event_subscription(client, plan.account)
            if again.action == CREATE:
                raise
            return await apply_event_subscription(client, again)
    else:
        current = plan.subscription
        assert current is not None
        kept = [t for t in current.body.get("subscribedEventTypes") or [] if isinstance(t, dict)]
        types = kept + [{"eventType": t} for t in plan.missing_types]
        alerts = current.body.get("alertsConfiguration") if isinstance(current.body.get("alertsConfiguration"), dict) else None
        plan.subscription = await client.update_event_subscription(current.id, current.name, types, status="active",
                                                                   alerts=alerts)
    plan.done = True
    log.info("Dotdigital events subscription %r of account %s: %s done (id %s)", plan.name, plan.account,
             plan.action, plan.subscription.id if plan.subscription else "-")
    return plan


async def ensure_event_subscription(client: DotdigitalClient, account: str) -> SubscriptionPlan:
    """Find, create, reactivate or complete the account's subscription; the plan carries it."""
    return await apply_event_subscription(client, await plan_event_subscription(client, account))
