"""An insight import's failures are matched to their messages whatever spelling Dotdigital echoes the contact
identity in (an email's case, a mobile number's ``+``): an unmatched failure left its message settled as delivered,
and its record was never sent again."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from ctdd.delivery.bulk import BULK_HANDLERS, BulkContext, ImportTimings
from ctdd.delivery.outbox import INSIGHT_UPSERT, ClaimedMessage


class Client:
    """What InsightImport calls: starts an import and reports it finished with the given failures."""

    def __init__(self, failures: list[dict]):
        self.failures = failures
        self.records: list[dict] = []

    async def start_insight_import(self, collection, *, scope, collection_type, records):
        self.records = records
        return "import-1"

    async def insight_import_status(self, import_id):
        return {"status": "Finished", "failures": self.failures}


def message(mid: int, contact_id: int, record_id: str) -> ClaimedMessage:
    return ClaimedMessage(id=mid, partition_key=f"acc:{contact_id}", sequence=1, account="acc", contact_id=contact_id,
                          kind=INSIGHT_UPSERT, payload={"collection": "Orders", "record_id": record_id,
                                                        "record": {"id": record_id}},
                          attempts=0, store_key="uk", record_type="order", record_id=record_id)


def test_failures_echoed_in_another_spelling_still_settle_their_own_message():
    contacts = {1: SimpleNamespace(dotdigital_contact_id=None, email="jane@example.com", mobile_number=None),
                2: SimpleNamespace(dotdigital_contact_id=None, email=None, mobile_number="+447700900123"),
                3: SimpleNamespace(dotdigital_contact_id=None, email="ok@example.com", mobile_number=None)}
    failures = [
        {"collectionOwner": {"ownerType": "contact",
                             "contactIdentity": {"identifier": "email", "value": "Jane@Example.COM"}},
         "failureReason": "JsonValueTooLong", "key": "o-1"},
        {"collectionOwner": {"ownerType": "contact",
                             "contactIdentity": {"identifier": "mobileNumber", "value": "+447700900123"}},
         "failureReason": "ContactMobileNumberDoesNotExist", "key": "o-2"},
    ]
    client = Client(failures)
    ctx = BulkContext(msgs=[message(10, 1, "o-1"), message(20, 2, "o-2"), message(30, 3, "o-3")], contacts=contacts,
                      client=client, settings=None, timings=ImportTimings(min_poll=0.01, max_poll=0.01))
    results = asyncio.run(BULK_HANDLERS[INSIGHT_UPSERT].deliver(ctx))
    # the mobile number went without its "+" (contact_path), and came back with it
    assert {r["contactIdentity"]["value"] for r in client.records} == {"jane@example.com", "447700900123",
                                                                       "ok@example.com"}
    assert results[10].outcome == "dead"  # refused for good
    assert results[20].outcome == "fallback"  # sent on its own, whose answer is authoritative
    assert results[30].outcome == "delivered"
