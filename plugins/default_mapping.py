"""Default contact mapping: profile attributes, consent and lists onto Dotdigital fields.

Registered through the ``ctdd`` entry-point group like any brand plugin, with ``trylast=True`` so a
brand plugin's ``ctdd_map_contact`` answers first. What it maps, per store configuration:

- identifiers: email -> ``identifiers.email``, mobile -> ``identifiers.mobileNumber``
- attributes: ``stores.<key>.data_fields`` maps attribute paths (``first_name``, ``billing_address.city``,
  ``custom.<name>`` for custom fields ...) to data-field names; unmapped attributes are ignored
- ``STORE`` (when mapped) is always the store key, so multi-store accounts segment correctly; the store's
  ``locale`` / ``currency`` defaults for ``LOCALE`` / ``CURRENCY`` are not applied here but by the core
  (``ctdd.ingest.contact_sync``), which alone knows whether the contact has a value already
- email consent -> ``channelProperties.email.status`` / ``optInType`` and consent records; SMS consent ->
  ``channelProperties.sms.status`` and consent records (``email.status`` is only sent when the shop made
  an explicit decision: Dotdigital would otherwise subscribe a new contact)
- the store's ``email_list`` / ``sms_list`` follow the channel decision (joined on opt-in, left on opt-out);
  every registered customer joins ``customers_list`` (a list the merchant must not market to)
- list memberships -> ``lists.<id>``: ``True`` joins, ``False`` leaves
- preference choices -> ``preferences.<id>``
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ctdd import hookimpl


def _consent_record_fields(channel: str, records) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for record in records:
        body = {
            "text": record.text,
            "dateTimeConsented": record.consented_at.strftime("%Y-%m-%dT%H:%M:%SZ") if record.consented_at else None,
            "url": record.url,
            "ipAddress": record.ip_address,
            "userAgent": record.user_agent,
        }
        digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
        out[f"consentRecords.{channel}.{digest}"] = body
    return out


@hookimpl(trylast=True)
def ctdd_map_contact(ctx, contact):
    store = ctx.store
    fields: dict[str, Any] = {}
    identity = contact.identity
    if identity.email:
        fields["identifiers.email"] = identity.email
    if identity.mobile_number:
        # Dotdigital stores mobile numbers as E.164 digits without the leading '+'.
        fields["identifiers.mobileNumber"] = identity.mobile_number.lstrip("+")

    attributes = dict(contact.attributes)
    if identity.customer_id:
        attributes.setdefault("customer_id", identity.customer_id)
    attributes["store"] = store.key
    for attr, value in attributes.items():
        dd_name = store.data_fields.get(attr)
        if dd_name:
            fields[f"dataFields.{dd_name}"] = value

    memberships = dict(contact.lists)
    if identity.customer_id and store.customers_list:
        memberships.setdefault(store.customers_list, True)
    for channel, consent, list_key in (("email", contact.email_consent, store.email_list),
                                       ("sms", contact.sms_consent, store.sms_list)):
        if consent is None:
            continue
        if consent.status:
            fields[f"channelProperties.{channel}.status"] = consent.status
            if list_key:
                # the channel's marketing list follows the channel decision
                memberships[list_key] = consent.status == "subscribed"
        if channel == "email" and consent.opt_in_type and consent.status == "subscribed":
            fields["channelProperties.email.optInType"] = consent.opt_in_type
        fields.update(_consent_record_fields(channel, consent.records))

    for list_key, member in memberships.items():
        if list_key in store.lists:
            # True joins (v3 upsert), False leaves (v2 removal)
            fields[f"lists.{store.lists[list_key]}"] = bool(member)
    for pref_key, opted_in in contact.preferences.items():
        if pref_key in store.preferences:
            fields[f"preferences.{store.preferences[pref_key]}"] = bool(opted_in)
    return fields
