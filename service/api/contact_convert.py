"""``ctdd.ingest.contact_view.ContactCard`` -> ``GetContactResponse`` (the operator's ``AdminService.GetContact``).

Pure conversion: the servicer (``ctdd.api.admin``) finds the contact, reads the card in a worker thread and
converts its triggers with ``trigger_message``; nothing here logs (the card holds personal data).
"""

from __future__ import annotations

import json

from ctdd.api.convert import to_timestamp as _timestamp
from ctdd.ingest.contact_view import AttemptView, ContactCard, MessageOutcome, MessageView
from ctdd.sync.v1 import admin_service_pb2 as pb


def _outcome(outcome: MessageOutcome | None) -> pb.ContactMessageOutcome | None:
    if outcome is None:
        return None
    return pb.ContactMessageOutcome(ref=f"outbox:{outcome.id}", status=outcome.status or "",
                                    response_code=outcome.response_code or 0,
                                    delivered_at=_timestamp(outcome.delivered_at))


def _attempt(a: AttemptView) -> pb.DeliveryAttempt:
    return pb.DeliveryAttempt(attempt=a.attempt, outcome=a.outcome, response_code=a.response_code or 0,
                              error=a.error or "", worker=a.worker or "", started_at=_timestamp(a.started_at),
                              finished_at=_timestamp(a.finished_at))


def _message(m: MessageView) -> pb.ContactMessageEntry:
    return pb.ContactMessageEntry(
        ref=f"outbox:{m.id}", kind=m.kind, status=m.status, sequence=m.sequence, store_key=m.store_key or "",
        record=pb.RecordReference(record_type=m.record_type or "", record_id=m.record_id or "",
                                  record_version=m.record_version or 0),
        attempts=m.attempts, response_code=m.response_code or 0, error=m.error or "",
        merged_into=f"outbox:{m.merged_into}" if m.merged_into else "", created_at=_timestamp(m.created_at),
        next_attempt_at=_timestamp(m.next_attempt_at), delivered_at=_timestamp(m.delivered_at),
        attempt_log=[_attempt(a) for a in m.attempt_log],
    )


def contact_response(card: ContactCard, triggers: list[pb.Trigger]) -> pb.GetContactResponse:
    """The wire form of ``card``; ``triggers`` are its triggers already converted."""
    return pb.GetContactResponse(
        contact_id=str(card.contact_id), account=card.account, dotdigital_contact_id=card.dotdigital_contact_id or 0,
        email=card.email or "", mobile_number=card.mobile_number or "",
        identifiers=[pb.ContactIdentifierEntry(kind=i.kind, value=i.value, created_at=_timestamp(i.created_at))
                     for i in card.identifiers],
        conflicts=[pb.ContactConflictEntry(id=c.id, kind=c.kind, role=c.role, other_contact_id=str(c.other_contact_id),
                                           rule=c.rule, value_hash=c.value_hash, created_at=_timestamp(c.created_at))
                   for c in card.conflicts],
        fields=[pb.ContactFieldEntry(field=f.field, value_json=json.dumps(f.value, ensure_ascii=False),
                                     source_ref=f.source_ref or "", source_version=f.source_version or 0,
                                     source_time=_timestamp(f.source_ts), updated_at=_timestamp(f.updated_at),
                                     message=_outcome(f.message))
                for f in card.fields],
        channels=[pb.ContactChannelEntry(channel=c.channel, dotdigital_status=c.dotdigital_status or "",
                                         dotdigital_status_at=_timestamp(c.dotdigital_status_at),
                                         shop_consent=c.shop_consent or "",
                                         shop_consent_at=_timestamp(c.shop_consent_at))
                  for c in card.channels],
        lists=[pb.ContactListEntry(list_id=li.list_id, names=list(li.names), member=li.member,
                                   since=_timestamp(li.since), message=_outcome(li.message))
               for li in card.lists],
        pending_messages=[_message(m) for m in card.pending_messages],
        recent_messages=[_message(m) for m in card.recent_messages], more_messages=card.more_messages,
        triggers=triggers, more_triggers=card.more_triggers,
        created_at=_timestamp(card.created_at), updated_at=_timestamp(card.updated_at),
    )
