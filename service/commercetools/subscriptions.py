"""The commercetools Subscriptions ctdd-sync needs, and an idempotent apply (plan, then create/update).

``desired_subscriptions(store_key, destination, fmt)`` lists what one ctdd store needs (commercetools HTTP API docs:
Subscriptions and Message types):

- ``ctdd-<store>-customers``: the customer messages below plus ``changes: customer``, because some customer
  update actions (``setLocale``, ``setMiddleName`` ...) produce no message at all;
- ``ctdd-<store>-orders``: order messages; Order Edits only show up as ``OrderEditApplied``;
- ``ctdd-<store>-payments``: payment transaction messages (refunds).

``plan(current, desired)`` compares them by subscription key and gives one ``Change`` per desired
subscription: ``create``, ``update`` (with the update actions ``changeDestination`` / ``setMessages`` /
``setChanges``), ``recreate`` (the delivery format differs, and no update action changes it: delete, then
create) or ``unchanged``. Message types are compared as sets. A destination is compared on the fields this
tool sets, except ``accessSecret`` (commercetools may not return it as sent), so a second run is a no-op.
``apply_plan`` carries the plan out. Subscriptions of other keys are never touched.

Creating a Subscription makes commercetools send a test notification (``ResourceCreated`` of
``typeId: subscription``) to the destination, which TrackEvent ignores; changes take up to a minute to
take effect.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

CUSTOMER_MESSAGES = (
    "CustomerCreated",
    "CustomerDeleted",
    "CustomerEmailChanged",
    "CustomerEmailVerified",
    "CustomerFirstNameSet",
    "CustomerLastNameSet",
    "CustomerTitleSet",
    "CustomerCompanyNameSet",
    "CustomerDateOfBirthSet",
    "CustomerAddressAdded",
    "CustomerAddressChanged",
    "CustomerAddressRemoved",
    "CustomerDefaultBillingAddressSet",
    "CustomerDefaultShippingAddressSet",
    "CustomerGroupSet",
    "CustomerStoresSet",
    "CustomerCustomFieldAdded",
    "CustomerCustomFieldChanged",
    "CustomerCustomFieldRemoved",
    "CustomerCustomTypeSet",
    "CustomerCustomTypeRemoved",
)
ORDER_MESSAGES = (
    "OrderCreated",
    "OrderImported",
    "OrderCustomerSet",
    "OrderCustomerEmailSet",
    "OrderStateChanged",
    "OrderShipmentStateChanged",
    "OrderPaymentStateChanged",
    "DeliveryAdded",
    "ParcelAddedToDelivery",
    "ReturnInfoAdded",
    "ReturnInfoSet",
    "OrderEditApplied",
)
PAYMENT_MESSAGES = (
    "PaymentTransactionAdded",
    "PaymentTransactionStateChanged",
)

#: what each managed subscription covers: suffix -> (messages per resource type, change resource types)
SUBSCRIPTION_SPECS: dict[str, tuple[dict[str, Sequence[str]], Sequence[str]]] = {
    "customers": ({"customer": CUSTOMER_MESSAGES}, ("customer",)),
    "orders": ({"order": ORDER_MESSAGES}, ()),
    "payments": ({"payment": PAYMENT_MESSAGES}, ()),
}

DESTINATION_TYPES = ("SQS", "SNS", "GoogleCloudPubSub", "EventBridge")
#: fields each destination type needs (beyond ``type``)
REQUIRED_FIELDS = {
    "SQS": ("queueUrl", "region"),
    "SNS": ("topicArn",),
    "GoogleCloudPubSub": ("projectId", "topic"),
    "EventBridge": ("region", "accountId"),
}
#: destination fields that are secrets: never printed, never compared
SECRET_FIELDS = frozenset({"accessSecret"})

_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{2,256}$")


class SubscriptionConfigError(ValueError):
    """The requested destination or key is not usable."""


def subscription_key(store_key: str, suffix: str, prefix: str = "ctdd") -> str:
    key = f"{prefix}-{store_key}-{suffix}"
    if not _KEY_RE.match(key):
        raise SubscriptionConfigError(
            f"subscription key {key!r} is not valid (2-256 characters of A-Z a-z 0-9 _ -); use --key-prefix or "
            "a store key without other characters"
        )
    return key


def build_destination(destination_type: str, **fields: Any) -> dict[str, Any]:
    """A Destination object from the given fields; unset (None) fields are left out."""
    if destination_type not in DESTINATION_TYPES:
        raise SubscriptionConfigError(f"destination type must be one of {', '.join(DESTINATION_TYPES)}")
    destination = {"type": destination_type}
    destination.update({k: v for k, v in fields.items() if v is not None})
    missing = [f for f in REQUIRED_FIELDS[destination_type] if not destination.get(f)]
    if missing:
        raise SubscriptionConfigError(f"{destination_type} destination needs {', '.join(missing)}")
    mode = destination.get("authenticationMode")
    if destination_type in ("SQS", "SNS"):
        if mode not in (None, "IAM", "Credentials"):
            raise SubscriptionConfigError("authenticationMode must be IAM or Credentials")
        if mode in (None, "Credentials") and not (destination.get("accessKey") and destination.get("accessSecret")):
            if mode == "Credentials" or "accessKey" in destination or "accessSecret" in destination:
                raise SubscriptionConfigError("Credentials authentication needs both an access key and a secret")
            destination["authenticationMode"] = "IAM"  # nothing given: the IAM principal of commercetools
    return destination


def build_format(name: str = "Platform") -> dict[str, Any]:
    if name == "Platform":
        return {"type": "Platform"}
    if name == "CloudEvents":
        return {"type": "CloudEvents", "cloudEventsVersion": "1.0"}
    raise SubscriptionConfigError("format must be Platform or CloudEvents")


def desired_subscriptions(store_key: str, destination: Mapping[str, Any], fmt: Mapping[str, Any] | None = None,
                          *, key_prefix: str = "ctdd") -> list[dict[str, Any]]:
    """The SubscriptionDrafts one ctdd store needs, all sent to ``destination``."""
    drafts = []
    for suffix, (messages, changes) in SUBSCRIPTION_SPECS.items():
        drafts.append({
            "key": subscription_key(store_key, suffix, key_prefix),
            "destination": dict(destination),
            "messages": [{"resourceTypeId": rt, "types": list(types)} for rt, types in messages.items()],
            "changes": [{"resourceTypeId": rt} for rt in changes],
            "format": dict(fmt or build_format()),
        })
    return drafts


# -- diff -------------------------------------------------------------------------------------------

def _messages_norm(messages: Sequence[Mapping[str, Any]] | None) -> dict[str, frozenset[str]]:
    out: dict[str, frozenset[str]] = {}
    for m in messages or ():
        out[m["resourceTypeId"]] = out.get(m["resourceTypeId"], frozenset()) | frozenset(m.get("types") or ())
    return out


def _changes_norm(changes: Sequence[Mapping[str, Any]] | None) -> frozenset[str]:
    return frozenset(c["resourceTypeId"] for c in changes or ())


def _destination_differs(current: Mapping[str, Any] | None, desired: Mapping[str, Any]) -> bool:
    current = current or {}
    for name, value in desired.items():
        if name in SECRET_FIELDS:
            continue
        have = current.get(name)
        if name == "authenticationMode" and have is None:
            have = "Credentials"  # the API's default
        if have != value:
            return True
    return False


def _format_norm(fmt: Mapping[str, Any] | None) -> tuple:
    fmt = fmt or {"type": "Platform"}
    return (fmt.get("type", "Platform"), fmt.get("cloudEventsVersion") if fmt.get("type") == "CloudEvents" else None)


def redact_destination(destination: Mapping[str, Any] | None) -> dict[str, Any]:
    return {k: ("***" if k in SECRET_FIELDS else v) for k, v in (destination or {}).items()}


@dataclass
class Change:
    key: str
    action: str  # create | update | recreate | unchanged
    desired: dict[str, Any]
    current: dict[str, Any] | None = None
    update_actions: list[dict[str, Any]] = field(default_factory=list)
    diff: list[str] = field(default_factory=list)

    def describe(self) -> str:
        lines = [f"{self.action:<9} {self.key}"]
        lines += [f"    {line}" for line in self.diff]
        return "\n".join(lines)


def _summary(draft: Mapping[str, Any]) -> list[str]:
    lines = [f"destination: {json.dumps(redact_destination(draft.get('destination')), sort_keys=True)}"]
    for m in draft.get("messages") or ():
        lines.append(f"messages {m['resourceTypeId']}: {', '.join(m.get('types') or ['(all)'])}")
    if draft.get("changes"):
        lines.append(f"changes: {', '.join(c['resourceTypeId'] for c in draft['changes'])}")
    lines.append(f"format: {json.dumps(draft.get('format') or {'type': 'Platform'}, sort_keys=True)}")
    return lines


def plan_one(desired: dict[str, Any], current: dict[str, Any] | None) -> Change:
    key = desired["key"]
    if current is None:
        return Change(key, "create", desired, None, [], _summary(desired))
    if _format_norm(current.get("format")) != _format_norm(desired.get("format")):
        diff = [f"format: {json.dumps(current.get('format'))} -> {json.dumps(desired.get('format'))} "
                "(no update action changes the format: delete and create)"]
        return Change(key, "recreate", desired, current, [], diff)
    actions: list[dict[str, Any]] = []
    diff: list[str] = []
    if _destination_differs(current.get("destination"), desired["destination"]):
        actions.append({"action": "changeDestination", "destination": desired["destination"]})
        diff.append(f"destination: {json.dumps(redact_destination(current.get('destination')), sort_keys=True)} -> "
                    f"{json.dumps(redact_destination(desired['destination']), sort_keys=True)}")
    have, want = _messages_norm(current.get("messages")), _messages_norm(desired.get("messages"))
    if have != want:
        actions.append({"action": "setMessages", "messages": desired.get("messages") or []})
        for rt in sorted(set(have) | set(want)):
            added, removed = sorted(want.get(rt, frozenset()) - have.get(rt, frozenset())), \
                sorted(have.get(rt, frozenset()) - want.get(rt, frozenset()))
            if rt not in have:
                diff.append(f"messages {rt}: + subscribed")
            elif rt not in want:
                diff.append(f"messages {rt}: - unsubscribed")
            if added:
                diff.append(f"messages {rt}: + {', '.join(added)}")
            if removed:
                diff.append(f"messages {rt}: - {', '.join(removed)}")
    have_c, want_c = _changes_norm(current.get("changes")), _changes_norm(desired.get("changes"))
    if have_c != want_c:
        actions.append({"action": "setChanges", "changes": desired.get("changes") or []})
        diff.append(f"changes: {sorted(have_c)} -> {sorted(want_c)}")
    return Change(key, "update" if actions else "unchanged", desired, current, actions, diff)


def plan(current: Sequence[dict[str, Any]], desired: Sequence[dict[str, Any]]) -> list[Change]:
    by_key = {s.get("key"): s for s in current if s.get("key")}
    return [plan_one(d, by_key.get(d["key"])) for d in desired]


async def fetch_current(client, keys: Sequence[str]) -> list[dict[str, Any]]:
    """The existing subscriptions with the given keys (``GET /subscriptions/key={key}`` each)."""
    found = []
    for key in keys:
        subscription = await client.get_by_key("subscriptions", key)
        if subscription is not None:
            found.append(subscription)
    return found


async def apply_plan(client, changes: Sequence[Change]) -> list[dict[str, Any]]:
    """Carry out ``changes``; returns the resulting subscriptions (unchanged ones as they are)."""
    results = []
    for change in changes:
        if change.action == "create":
            results.append(await client.create("subscriptions", change.desired))
        elif change.action == "update":
            results.append(await client.update("subscriptions", change.current["id"], change.current["version"],
                                               change.update_actions))
        elif change.action == "recreate":
            await client.delete("subscriptions", change.current["id"], change.current["version"])
            results.append(await client.create("subscriptions", change.desired))
        else:
            results.append(change.current)
    return results
