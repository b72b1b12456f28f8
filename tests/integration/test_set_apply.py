"""Set-based apply (ctdd.ingest.set_apply): a constant number of statements per batch, the same rows as
applying one event at a time, and a clean fallback when the batch cannot be written. SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.orm import Session

from support import make_settings
from ctdd.config import replace
from ctdd.domain.behaviour import BehaviouralEventInput
from ctdd.domain.contact import ContactInput, Identity, SourceStamp
from ctdd.ingest import set_apply
from ctdd.ingest.contact_sync import NewContactNeedsAddress
from ctdd.ingest.plans import ContactPlan
from ctdd.runtime.app import App

T0 = datetime(2026, 11, 20, 12, 0, tzinfo=timezone.utc)


@pytest.fixture
def app(database_url, sandbox):
    from ctdd.db.engine import upgrade_database

    application = App(make_settings(database_url, sandbox), serve_grpc=False, run_dispatcher=False)
    upgrade_database(application.engine)
    yield application
    application.engine.dispose()


def view(app: App, i: int, contact: int, *, product: int | None = None, at: datetime = T0) -> ContactPlan:
    plan = app.events.prepare_behavioural("uk", BehaviouralEventInput(
        event_id=f"ev-{i}", kind="product_viewed", identity=Identity(email=f"c{contact}@example.com"),
        occurred_at=at + timedelta(seconds=i), locale="en-GB", currency="GBP",
        data={"productId": f"p-{product if product is not None else i % 7}", "sku": f"SKU-{i % 7}"}))
    assert isinstance(plan, ContactPlan)
    return plan


def sync(app: App, contact: int, first_name: str, *, at: datetime = T0, email: bool = True) -> ContactPlan:
    plan = app.contact_sync.prepare(ContactInput(
        store_key="uk", identity=Identity(email=f"c{contact}@example.com" if email else None,
                                          customer_id=f"cust-{contact}"),
        attributes={"first_name": first_name}, source=SourceStamp(modified_at=at)))
    assert isinstance(plan, ContactPlan)
    return plan


def apply_set(app: App, plans: list[ContactPlan]) -> list:
    with Session(app.engine) as session, session.begin():
        return set_apply.apply_plans(session, plans)


def count_statements(app: App, plans: list[ContactPlan]) -> int:
    seen: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        seen.append(statement)

    event.listen(app.engine, "before_cursor_execute", record)
    try:
        apply_set(app, plans)
    finally:
        event.remove(app.engine, "before_cursor_execute", record)
    kept = [s for s in seen if not s.lstrip().upper().startswith(("SAVEPOINT", "RELEASE"))]
    return len(kept)


def test_a_batch_costs_the_same_statements_whatever_its_size(app):
    # every contact exists (a first batch created them), so the batches below only update
    apply_set(app, [sync(app, c, "First") for c in range(80)])
    small = count_statements(app, [view(app, i, i % 4) for i in range(8)])
    large = count_statements(app, [view(app, 100 + i, i % 80) for i in range(160)])
    assert small == large
    assert large <= 12, large  # read: owners, contacts, fields, dedupe keys; write: contacts, messages, fields, dedupe


def test_set_based_apply_writes_what_one_by_one_writes(database_url, sandbox, tmp_path):
    """The same events applied one at a time and set-based leave the same contacts, messages and field state."""
    from ctdd.db.engine import upgrade_database

    def run(url: str, set_based: bool) -> dict:
        settings = replace(make_settings(url, sandbox), set_based_apply=set_based)
        application = App(settings, serve_grpc=False, run_dispatcher=False)
        upgrade_database(application.engine)
        plans = []
        for i in range(60):
            contact = i % 9
            if i % 5 == 0:
                plans.append(sync(application, contact, f"Name{i}", at=T0 + timedelta(seconds=i)))
            else:
                plans.append(view(application, i, contact))
        plans.append(view(application, 3, 3))  # a duplicate event id: answered duplicate, applied once
        plans.append(sync(application, 99, "NoAddress", email=False))  # cannot be created: refused alone
        if set_based:
            results = apply_set(application, plans)
        else:
            results = []
            for plan in plans:
                with Session(application.engine) as session, session.begin():
                    try:
                        results.append((True, plan(session)))
                    except NewContactNeedsAddress as exc:
                        results.append((False, exc))
        with application.engine.connect() as conn:
            state = {
                "contacts": conn.execute(sa.text("SELECT email, next_sequence FROM contact ORDER BY email")).all(),
                "identifiers": conn.execute(sa.text(
                    "SELECT i.kind, i.value, c.email FROM contact_identifier i JOIN contact c ON c.id = i.contact_id "
                    "ORDER BY i.kind, i.value")).all(),
                "messages": [(r.email, r.sequence, r.kind, str(r.payload)) for r in conn.execute(sa.text(
                    "SELECT c.email, m.sequence, m.kind, m.payload FROM outbox_message m JOIN contact c "
                    "ON c.id = m.contact_id ORDER BY c.email, m.sequence"))],
                "fields": conn.execute(sa.text(
                    "SELECT c.email, f.field, f.value, f.source_ts, m.sequence FROM field_state f "
                    "JOIN contact c ON c.id = f.contact_id LEFT JOIN outbox_message m ON m.id = f.message_id "
                    "ORDER BY c.email, f.field")).all(),
                "processed": conn.execute(sa.text(
                    "SELECT dedupe_key, outcome FROM processed_event ORDER BY dedupe_key")).all(),
            }
        outcomes = [(ok, type(v).__name__ if not ok else getattr(v, "outcome", None) or v.changed) for ok, v in results]
        # every answered message id is a real outbox row of the answer's contact
        with application.engine.connect() as conn:
            ids = {r[0] for r in conn.execute(sa.text("SELECT id FROM outbox_message"))}
        assert all(mid in ids for ok, v in results if ok for mid in v.outbox_message_ids)
        application.engine.dispose()
        return {"state": state, "outcomes": outcomes}

    if database_url.startswith("sqlite"):
        one, other = database_url, f"sqlite:///{tmp_path / 'other.db'}"
        assert run(one, False) == run(other, True)
    else:
        from support.helpers import reset_postgres

        first = run(database_url, False)
        reset_postgres(database_url)
        assert run(database_url, True) == first


@pytest.mark.parametrize("error, fallbacks", [
    (sa.exc.IntegrityError("INSERT", {}, Exception("simulated race")), 0),  # a race: tried again set-based
    (RuntimeError("simulated bug"), 1),  # anything else: one by one
])
def test_a_batch_that_cannot_be_written_is_applied_again(app, error, fallbacks):
    """A failure at the write rolls the batch back: a lost race (a uniqueness race with another process, a
    PostgreSQL deadlock) is tried again set-based, anything else applied one unit at a time; every caller still
    gets its answer and nothing is applied twice."""
    import asyncio

    from ctdd.db.group_commit import GroupCommitRunner
    from ctdd.ingest.plans import is_plan

    calls = []

    def failing_once(session, plans):
        calls.append(len(plans))
        if len(calls) == 1:
            set_apply.apply_plans(session, plans)  # written, then the failure: all of it must be rolled back
            raise error
        return set_apply.apply_plans(session, plans)

    async def main():
        runner = GroupCommitRunner(app.engine, set_apply=failing_once, batchable=is_plan)
        plans = [view(app, i, i % 3) for i in range(12)]
        try:
            return runner, await asyncio.gather(*(runner.run(p) for p in plans))
        finally:
            await runner.close()

    runner, outcomes = asyncio.run(main())
    assert [o.outcome for o in outcomes] == ["applied"] * 12
    assert runner.set_fallbacks == fallbacks
    assert len(calls) == (2 if fallbacks == 0 else 1)
    with app.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM processed_event")).scalar_one() == 12
        # views of 3 contacts: 3 contacts, each with its upsert and its insight messages, numbered 1..n
        rows = conn.execute(sa.text("SELECT contact_id, sequence FROM outbox_message ORDER BY contact_id, sequence")).all()
    by_contact: dict[int, list[int]] = {}
    for contact_id, sequence in rows:
        by_contact.setdefault(contact_id, []).append(sequence)
    assert len(by_contact) == 3
    assert all(seqs == list(range(1, len(seqs) + 1)) for seqs in by_contact.values())


def test_the_field_state_of_a_contact_not_read_up_front_is_read_when_asked_for(app):
    # an event may resolve to a contact the batch did not read up front (an earlier event of the batch moved an
    # identifier): its stored fields are read then, and are the stored ones
    first, = apply_set(app, [sync(app, 1, "Ada")])
    contact_id = first[1].contact_id
    with Session(app.engine) as session, session.begin():
        access = set_apply.BatchAccess(session, [])
        stored = access.stored_fields(contact_id, ["dataFields.FIRSTNAME", "identifiers.email", "absent.path"])
        assert stored["dataFields.FIRSTNAME"].value == "Ada"
        assert stored["identifiers.email"].value == "c1@example.com"
        assert "absent.path" not in stored
        assert access.stored_fields(contact_id, ["dataFields.FIRSTNAME"]) == {"dataFields.FIRSTNAME": stored[
            "dataFields.FIRSTNAME"]}
