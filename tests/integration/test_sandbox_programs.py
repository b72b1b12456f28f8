"""Programs (automation) in the Dotdigital sandbox and the async client, over real HTTP on loopback.

Covers programs, enrolments (asynchronous: ``Processing`` -> ``Finished``), their CSV fault reports, the hourly
enrolment allowance on an injected (virtual) clock, list-join program starts and the sandbox's record of who
really entered which program. Contract tests at the end validate the bodies the client sends and the
sandbox's responses against Dotdigital's Programs OpenAPI document, with the validator of
``test_dotdigital_sandbox_client.py``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from ctdd.dotdigital.client import (
    DotdigitalClient,
    DotdigitalEnrolmentAllowanceExceeded,
    DotdigitalEnrolmentProcessing,
    EnrolmentFault,
    Program,
    ProgramEnrolment,
)
from ctdd.dotdigital.errors import DotdigitalAuthError, DotdigitalError
from ctdd.testing.dotdigital_sandbox import LIST_JOIN, DotdigitalSandbox
from test_dotdigital_sandbox_client import SchemaValidator, _spec_dir

JANE = "jane.doe@example.com"
JOHN = "john@example.com"
T0 = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)


class VirtualClock:
    """A clock for ``sandbox.clock`` that only moves when told to."""

    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


# ---------------------------------------------------------------------------------------------------
# fixtures and helpers
# ---------------------------------------------------------------------------------------------------
@pytest.fixture
def sandbox():
    with DotdigitalSandbox() as sb:
        yield sb


@pytest.fixture
def clock(sandbox) -> VirtualClock:
    sandbox.clock = clock = VirtualClock()
    return clock


@pytest.fixture
async def client(sandbox):
    async with DotdigitalClient(api_user=sandbox.api_user, password=sandbox.password, base_url=sandbox.base_url,
                                discover_endpoint=False) as c:
        yield c


@pytest.fixture
async def raw(sandbox):
    """A plain authenticated httpx client, for exercising the sandbox's own validation."""
    async with httpx.AsyncClient(base_url=sandbox.base_url, auth=(sandbox.api_user, sandbox.password)) as c:
        yield c


async def _contact(client: DotdigitalClient, email: str = JANE, **body: Any) -> int:
    return (await client.upsert_contact("email", email, body)).contact_id


async def _contacts(client: DotdigitalClient, count: int, prefix: str = "c") -> list[int]:
    return [await _contact(client, f"{prefix}{i}@example.com") for i in range(count)]


async def _finished(client: DotdigitalClient, enrolment_id: str, timeout: float = 5.0) -> ProgramEnrolment:
    """Poll the enrolment (real time) until it is Finished."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        enrolment = await client.get_enrolment(enrolment_id)
        if enrolment.finished:
            return enrolment
        assert loop.time() < deadline, f"enrolment {enrolment_id} still {enrolment.status}"
        await asyncio.sleep(0.02)


def _entries(sandbox: DotdigitalSandbox, program_id: int) -> Counter:
    """How many times each contact entered the program."""
    return Counter(e.contact_id for e in sandbox.program_entries(program_id))


# ---------------------------------------------------------------------------------------------------
# programs
# ---------------------------------------------------------------------------------------------------
async def test_list_and_get_programs(sandbox, client):
    birthday = sandbox.add_program("Birthday program")
    promo = sandbox.add_program("Promo", status="Deactivated")
    visit = sandbox.add_program("Visit", status="Draft")

    programs = await client.list_programs()
    assert [(p.id, p.name, p.status, p.active) for p in programs] == [
        (birthday, "Birthday program", "Active", True),
        (promo, "Promo", "Deactivated", False),
        (visit, "Visit", "Draft", False),
    ]
    assert all(p.date_created for p in programs)
    assert await client.get_program(promo) == programs[1]
    assert await client.get_program(999) is None  # 404 ERROR_PROGRAM_NOT_FOUND
    (listing,) = [r for r in sandbox.requests if r.path == "/v2/programs"]
    assert listing.query == {"select": ["1000"]}  # no skip on the first page (the spec: minimum 1)

    sandbox.set_program_status(visit, "ReadOnly")
    assert (await client.get_program(visit)).status == "ReadOnly"


async def test_list_programs_pages_through_everything(sandbox, client):
    for i in range(1001):
        sandbox.add_program(f"Program {i}")
    programs = await client.list_programs()
    assert len(programs) == 1001 and len({p.id for p in programs}) == 1001
    assert [r.query.get("skip") for r in sandbox.requests] == [None, ["1000"]]


async def test_program_paging_parameters_are_validated(sandbox, raw):
    sandbox.add_program("Welcome")
    for query in ("select=0", "select=1001", "skip=-1", "select=x"):
        response = await raw.get(f"/v2/programs?{query}")
        assert response.status_code == 400 and "ERROR_PARAMETER_INVALID" in response.json()["message"]
    assert (await raw.get("/v2/programs/abc")).status_code == 400
    assert (await raw.delete("/v2/programs/1")).status_code == 405


async def test_programs_disabled_for_the_account_is_403(sandbox, client):
    program = sandbox.add_program("Welcome")
    contact = await _contact(client)
    sandbox.programs_enabled = False
    for call in (client.list_programs(), client.get_program(program), client.enrol_contacts(program, [contact])):
        with pytest.raises(DotdigitalAuthError) as info:
            await call
        assert info.value.status_code == 403 and not info.value.retryable
    assert sandbox.enrolments == [] and sandbox.program_entries() == []
    sandbox.programs_enabled = True
    assert (await client.enrol_contacts(program, [contact])).program_id == program


# ---------------------------------------------------------------------------------------------------
# enrolments
# ---------------------------------------------------------------------------------------------------
async def test_enrolment_processing_then_finished_then_faults(sandbox, client):
    program = sandbox.add_program("Abandoned cart")
    jane, john = await _contact(client, JANE), await _contact(client, JOHN)
    sandbox.enrolment_delay_seconds = 60  # stays Processing until finish_enrolments()

    enrolment = await client.enrol_contacts(program, [jane, john], headers={"Idempotency-Key": "k-1"})
    assert (enrolment.status, enrolment.program_id, enrolment.contacts) == ("Processing", program, (jane, john))
    assert not enrolment.finished and uuid.UUID(enrolment.id)
    (sent,) = sandbox.requests_matching("POST", "/v2/programs/enrolments")
    assert sent.json == {"programId": program, "contacts": [jane, john]}
    assert sent.headers["idempotency-key"] == "k-1"
    assert sandbox.program_entries(program) == []  # nobody entered yet

    with pytest.raises(DotdigitalEnrolmentProcessing) as info:
        await client.enrolment_faults(enrolment.id)
    assert info.value.code == "ERROR_ENROLMENT_IS_PROCESSING" and info.value.retryable
    assert info.value.status_code == 400
    assert (await client.get_enrolment(enrolment.id)).status == "Processing"

    sandbox.finish_enrolments()
    finished = await client.get_enrolment(enrolment.id)
    assert finished.finished and finished.id == enrolment.id
    assert await client.enrolment_faults(enrolment.id) == []
    entries = sandbox.program_entries(program)
    assert [(e.contact_id, e.via, e.enrolment_id) for e in entries] == [
        (jane, enrolment.id, enrolment.id), (john, enrolment.id, enrolment.id)]

    # the same contact again: the program does not allow re-entry -> AlreadyInProgram, still one entry
    again = await client.enrol_contacts(program, [jane])
    sandbox.finish_enrolments()
    assert await client.enrolment_faults(again.id) == [EnrolmentFault(jane, JANE, None, "AlreadyInProgram")]
    assert _entries(sandbox, program) == {jane: 1, john: 1}


async def test_enrolment_finishes_after_the_delay_in_real_time(sandbox, client):
    program = sandbox.add_program("Welcome")
    contact = await _contact(client)
    sandbox.enrolment_delay_seconds = 0.05
    enrolment = await client.enrol_contacts(program, [contact])
    assert enrolment.status == "Processing"
    assert (await _finished(client, enrolment.id)).status == "Finished"
    assert _entries(sandbox, program) == {contact: 1}


async def test_zero_delay_enrolment_is_finished_at_once(sandbox, client):
    program = sandbox.add_program("Welcome")
    contact = await _contact(client)
    sandbox.enrolment_delay_seconds = 0
    enrolment = await client.enrol_contacts(program, [contact])
    assert enrolment.status == "Finished"
    assert await client.enrolment_faults(enrolment.id) == []


async def test_reentry_is_a_program_setting(sandbox, client):
    program = sandbox.add_program("Replenishment", allow_reentry=True)
    contact = await _contact(client)
    sandbox.enrolment_delay_seconds = 0
    for _ in range(2):
        assert await client.enrolment_faults((await client.enrol_contacts(program, [contact])).id) == []
    assert _entries(sandbox, program) == {contact: 2}

    sandbox.set_program_reentry(program, False)
    third = await client.enrol_contacts(program, [contact])
    assert [f.reason for f in await client.enrolment_faults(third.id)] == ["AlreadyInProgram"]
    assert _entries(sandbox, program) == {contact: 2}


async def test_faults_for_unsubscribed_suppressed_and_pending_contacts(sandbox, client, raw):
    program = sandbox.add_program("Abandoned cart")
    ok = await _contact(client, "ok@example.com")
    unsubscribed = await _contact(client, "unsub@example.com",
                                  identifiers={"mobileNumber": "+447123123123"})
    bounced = await _contact(client, "bounced@example.com")
    pending = await _contact(client, "pending@example.com",
                             channelProperties={"email": {"optInType": "verifiedDouble"}})
    sandbox.suppress(email="unsub@example.com")  # reason "unsubscribed"
    sandbox.suppress(email="bounced@example.com", reason="hardBounced")
    assert sandbox.get_contact(contact_id=pending)["channelProperties"]["email"]["status"] == "pendingOptIn"

    enrolment = await client.enrol_contacts(program, [ok, unsubscribed, bounced, pending])
    sandbox.finish_enrolments()
    faults = await client.enrolment_faults(enrolment.id)
    assert faults == [
        EnrolmentFault(unsubscribed, "unsub@example.com", "+447123123123", "Unsubcribed"),  # sic
        EnrolmentFault(bounced, "bounced@example.com", None, "Suppressed"),
        EnrolmentFault(pending, "pending@example.com", None, "PendingOptIn"),
    ]
    assert _entries(sandbox, program) == {ok: 1}

    response = await raw.get(f"/v2/programs/enrolments/{enrolment.id}/report-faults")
    assert response.headers["content-type"].startswith("text/csv")
    assert response.text.splitlines()[0] == "Id,Email,TelephoneNumber,Reason"
    assert response.text.splitlines()[1] == f"{unsubscribed},unsub@example.com,+447123123123,Unsubcribed"


async def test_contact_deleted_or_program_deactivated_before_processing(sandbox, client):
    program = sandbox.add_program("Welcome")
    stays, leaves = await _contact(client, JANE), await _contact(client, JOHN)
    sandbox.enrolment_delay_seconds = 60
    first = await client.enrol_contacts(program, [stays, leaves])
    sandbox.delete_contact(contact_id=leaves)
    sandbox.finish_enrolments()
    assert await client.enrolment_faults(first.id) == [EnrolmentFault(leaves, None, None, "ContactNotFound")]

    other = await _contact(client, "other@example.com")
    second = await client.enrol_contacts(program, [other])
    sandbox.set_program_status(program, "Deactivated")
    sandbox.finish_enrolments()
    assert [f.reason for f in await client.enrolment_faults(second.id)] == ["ProgramNotActive"]
    assert _entries(sandbox, program) == {stays: 1}


async def test_program_not_active_and_not_found(sandbox, client):
    deactivated = sandbox.add_program("Promo", status="Deactivated")
    draft = sandbox.add_program("Visit", status="Draft")
    contact = await _contact(client)
    for program in (deactivated, draft):
        with pytest.raises(DotdigitalError) as info:
            await client.enrol_contacts(program, [contact])
        assert (info.value.status_code, info.value.code) == (422, "ERROR_PROGRAM_NOT_ACTIVE")
        assert not info.value.retryable and not info.value.throttled
    with pytest.raises(DotdigitalError) as info:
        await client.enrol_contacts(999, [contact])
    assert (info.value.status_code, info.value.code, info.value.retryable) == (404, "ERROR_PROGRAM_NOT_FOUND", False)

    assert [(c.status, c.error, c.counted) for c in sandbox.enrolment_calls] == [
        (422, "ERROR_PROGRAM_NOT_ACTIVE", False), (422, "ERROR_PROGRAM_NOT_ACTIVE", False),
        (404, "ERROR_PROGRAM_NOT_FOUND", False)]
    assert sandbox.enrolment_allowance_remaining == 20  # refused calls do not count
    sandbox.set_program_status(deactivated, "Active")
    assert (await client.enrol_contacts(deactivated, [contact])).program_id == deactivated


async def test_unknown_contact_refuses_the_whole_call(sandbox, client):
    program = sandbox.add_program("Welcome")
    contact = await _contact(client)
    with pytest.raises(DotdigitalError) as info:
        await client.enrol_contacts(program, [contact, 4242])
    assert (info.value.status_code, info.value.code, info.value.retryable) == (400, "ERROR_CONTACT_NOT_FOUND", False)
    assert sandbox.enrolments == [] and sandbox.program_entries() == []


async def test_client_validates_enrolment_arguments_locally(sandbox, client):
    program = sandbox.add_program("Welcome")
    for program_id, contact_ids in [
        (program, list(range(1, 27))),  # 26 contacts
        (program, []),
        (program, [1, 1]),
        (program, ["1"]),
        (program, [True]),
        (program, [0]),
        (program, [2**31]),
        (0, [1]),
        ("1", [1]),
        (program, 5),
    ]:
        with pytest.raises(ValueError):
            await client.enrol_contacts(program_id, contact_ids)  # type: ignore[arg-type]
    for bad_id in ("nope", "", 42):
        with pytest.raises(ValueError):
            await client.get_enrolment(bad_id)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            await client.enrolment_faults(bad_id)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        await client.list_enrolments("Done")
    assert sandbox.requests == []


async def test_twenty_five_contacts_are_accepted_and_26_refused_by_the_sandbox(sandbox, client, raw):
    program = sandbox.add_program("Welcome")
    ids = await _contacts(client, 26)
    assert len((await client.enrol_contacts(program, ids[:25])).contacts) == 25
    response = await raw.post("/v2/programs/enrolments", json={"programId": program, "contacts": ids})
    assert response.status_code == 400 and "ERROR_ENROLMENT_INVALID" in response.json()["message"]
    assert [c.counted for c in sandbox.enrolment_calls] == [True, False]


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"programId": "1", "contacts": [1]}, 400, "ERROR_ENROLMENT_INVALID"),
        ({"programId": True, "contacts": [1]}, 400, "ERROR_ENROLMENT_INVALID"),
        ({"contacts": [1]}, 400, "ERROR_ENROLMENT_INVALID"),
        ({"programId": "P"}, 400, "ERROR_ENROLMENT_INVALID"),
        ({"programId": "P", "contacts": []}, 400, "ERROR_ENROLMENT_INVALID"),
        ({"programId": "P", "contacts": [], "addressBooks": [1]}, 400, "ERROR_ENROLMENT_INVALID"),
        ({"programId": "P", "contacts": ["1"]}, 400, "ERROR_ENROLMENT_INVALID"),
        ({"programId": "P", "contacts": [1, 1]}, 400, "ERROR_ENROLMENT_INVALID"),
        ({"programId": "P", "contacts": [1], "addressBooks": [1]}, 400, "ERROR_ENROLMENT_INVALID"),
        ({"programId": "P", "contacts": [1], "priority": 1}, 400, "ERROR_ENROLMENT_INVALID"),
        ({"programId": "P", "ProgramId": "P", "contacts": [1]}, 400, "ERROR_ENROLMENT_INVALID"),
        ({"programId": "P", "addressBooks": list(range(1, 12))}, 400, "ERROR_ADDRESSBOOK_TOOMANY"),
        ({"programId": "P", "addressBooks": [77]}, 400, "ERROR_ADDRESSBOOK_NOT_FOUND"),
        ({"programId": "P", "contacts": [77]}, 400, "ERROR_CONTACT_NOT_FOUND"),
        ({"programId": 999, "contacts": [1]}, 404, "ERROR_PROGRAM_NOT_FOUND"),
        ([1, 2], 400, "ERROR_ENROLMENT_INVALID"),
    ],
)
async def test_sandbox_refuses_invalid_enrolments(sandbox, client, raw, body, status, code):
    program = sandbox.add_program("Welcome")
    await _contact(client)  # contact 1
    if isinstance(body, dict):
        body = {k: program if v == "P" else v for k, v in body.items()}
    response = await raw.post("/v2/programs/enrolments", json=body)
    assert response.status_code == status
    assert code in response.json()["message"]
    (call,) = sandbox.enrolment_calls
    assert (call.status, call.error, call.counted) == (status, code, False)
    assert sandbox.enrolments == []


async def test_sandbox_refuses_malformed_json_and_unknown_enrolment_ids(sandbox, raw):
    response = await raw.post("/v2/programs/enrolments", content=b"{",
                              headers={"Content-Type": "application/json"})
    assert response.status_code == 400 and "ERROR_MALFORMED_REQUEST" in response.json()["message"]
    missing = str(uuid.uuid4())
    for path in (f"/v2/programs/enrolments/{missing}", f"/v2/programs/enrolments/{missing}/report-faults"):
        response = await raw.get(path)
        assert response.status_code == 404 and response.json() == {"message": "Error: ERROR_ENROLMENT_NOT_FOUND"}
    assert (await raw.get("/v2/programs/enrolments/not-a-guid")).status_code == 400
    assert (await raw.get("/v2/programs/enrolments")).status_code == 405


async def test_client_raises_not_found_for_unknown_enrolments(client):
    with pytest.raises(DotdigitalError) as info:
        await client.get_enrolment(str(uuid.uuid4()))
    assert (info.value.status_code, info.value.code, info.value.retryable) == (404, "ERROR_ENROLMENT_NOT_FOUND", False)
    with pytest.raises(DotdigitalError) as info:
        await client.enrolment_faults(str(uuid.uuid4()))
    assert info.value.code == "ERROR_ENROLMENT_NOT_FOUND" and not isinstance(info.value, DotdigitalEnrolmentProcessing)


async def test_pascal_case_body_as_the_magento_connector_sends_it(sandbox, client, raw):
    program = sandbox.add_program("Abandoned cart")
    contact = await _contact(client)
    response = await raw.post("/v2/programs/enrolments",
                              json={"Contacts": [contact], "ProgramId": program, "AddressBooks": []})
    assert response.status_code == 201
    body = response.json()
    assert (body["programId"], body["status"], body["contacts"], body["addressBooks"]) == (
        program, "Processing", [contact], [])
    sandbox.finish_enrolments()
    assert _entries(sandbox, program) == {contact: 1}


async def test_address_book_enrolment_enters_the_members(sandbox, client, raw):
    program = sandbox.add_program("Newsletter welcome")
    members = [await _contact(client, f"m{i}@example.com", lists=[2]) for i in range(3)]
    await _contact(client, "outsider@example.com", lists=[1])
    sandbox.suppress(email="m1@example.com")
    response = await raw.post("/v2/programs/enrolments", json={"programId": program, "addressBooks": [2]})
    assert response.status_code == 201
    enrolment_id = response.json()["id"]
    sandbox.finish_enrolments()
    assert _entries(sandbox, program) == {members[0]: 1, members[2]: 1}
    assert [(f.contact_id, f.reason) for f in await client.enrolment_faults(enrolment_id)] == [
        (members[1], "Unsubcribed")]


async def test_enrolments_by_status(sandbox, client):
    program = sandbox.add_program("Welcome")
    contact = await _contact(client)
    sandbox.enrolment_delay_seconds = 60
    first = await client.enrol_contacts(program, [contact])
    sandbox.finish_enrolments()
    second = await client.enrol_contacts(program, [contact])
    assert [e.id for e in await client.list_enrolments("Finished")] == [first.id]
    assert [e.id for e in await client.list_enrolments("Processing")] == [second.id]
    assert await client.list_enrolments("NotAvailableInThisVersion") == []
    assert [e["id"] for e in sandbox.enrolments] == [first.id, second.id]


# ---------------------------------------------------------------------------------------------------
# the hourly allowance and the virtual clock
# ---------------------------------------------------------------------------------------------------
async def test_21st_call_within_an_hour_is_refused_until_the_hour_has_passed(sandbox, client, clock):
    programs = [sandbox.add_program("Abandoned cart"), sandbox.add_program("Browse abandonment")]
    contacts = await _contacts(client, 3)
    for i in range(20):  # across all programs; calls count, not contacts
        await client.enrol_contacts(programs[i % 2], contacts if i == 0 else [contacts[0]])
        clock.advance(minutes=1)
    assert sandbox.enrolment_allowance_remaining == 0

    with pytest.raises(DotdigitalEnrolmentAllowanceExceeded) as info:
        await client.enrol_contacts(programs[0], [contacts[1]])
    err = info.value
    assert isinstance(err, DotdigitalError)
    assert (err.status_code, err.code) == (400, "ERROR_ENROLMENT_ALLOWANCE_EXCEEDED")
    assert err.retryable and not err.throttled
    assert len(sandbox.enrolments) == 20
    assert [c.counted for c in sandbox.enrolment_calls] == [True] * 20 + [False]
    assert sandbox.enrolment_calls[-1].error == "ERROR_ENROLMENT_ALLOWANCE_EXCEEDED"

    clock.now = T0 + timedelta(minutes=59, seconds=59)  # the first call is still inside the hour
    with pytest.raises(DotdigitalEnrolmentAllowanceExceeded):
        await client.enrol_contacts(programs[0], [contacts[1]])
    clock.now = T0 + timedelta(hours=1)  # the rolling hour since the first call has passed
    assert sandbox.enrolment_allowance_remaining == 1
    accepted = await client.enrol_contacts(programs[0], [contacts[1]])
    assert accepted.program_id == programs[0]
    with pytest.raises(DotdigitalEnrolmentAllowanceExceeded):  # the second call is still in the window
        await client.enrol_contacts(programs[0], [contacts[2]])
    clock.advance(minutes=1)
    await client.enrol_contacts(programs[0], [contacts[2]])

    # enrolments do not count toward the flat hourly API limit
    props = {p["name"]: p["value"] for p in (await client.account_info())["properties"]}
    assert int(props["ApiCallsInLastHour"]) < 10


async def test_enrolments_run_on_the_virtual_clock(sandbox, client, clock):
    program = sandbox.add_program("Welcome")
    contact = await _contact(client)
    enrolment = await client.enrol_contacts(program, [contact])
    await asyncio.sleep(0.3)  # longer than the 0.2 s delay in real time: the virtual clock has not moved
    assert (await client.get_enrolment(enrolment.id)).status == "Processing"
    clock.advance(seconds=0.2)
    assert (await client.get_enrolment(enrolment.id)).finished
    (entry,) = sandbox.program_entries(program)
    assert entry.at == T0 + timedelta(seconds=0.2) and entry.via == enrolment.id


async def test_a_simulated_day_runs_in_seconds(sandbox, client, clock):
    """Every 2 virtual minutes a scheduler tries to enrol one new contact: 20 an hour go through."""
    program = sandbox.add_program("Abandoned cart")
    accepted = refused = 0
    for step in range(24 * 30):
        contact = await _contact(client, f"shopper{step}@example.com")
        try:
            await client.enrol_contacts(program, [contact])
            accepted += 1
        except DotdigitalEnrolmentAllowanceExceeded:
            refused += 1
        clock.advance(minutes=2)
    assert (accepted, refused) == (20 * 24, 10 * 24)
    assert len(sandbox.program_entries(program)) == accepted
    assert max(_entries(sandbox, program).values()) == 1
    calls = [c.at for c in sandbox.enrolment_calls if c.counted]
    assert all(sum(1 for t in calls if at - timedelta(hours=1) < t <= at) <= 20 for at in calls)


# ---------------------------------------------------------------------------------------------------
# list-join program starts
# ---------------------------------------------------------------------------------------------------
async def test_list_join_starts_the_program_once_per_join(sandbox, client):
    welcome = sandbox.add_program("Newsletter welcome", start_list_id=2)
    again = sandbox.add_program("Every join", start_list_id=2, allow_reentry=True)
    clock = VirtualClock()
    sandbox.clock = clock

    jane = await _contact(client, JANE, lists=[2])  # created straight into the list
    clock.advance(minutes=1)
    await _contact(client, JANE, lists=[2], dataFields={"FIRSTNAME": "Jane"})  # already a member: no join
    await _contact(client, JANE, lists=[1, 3])  # other lists
    (entry,) = sandbox.program_entries(welcome)
    assert (entry.contact_id, entry.via, entry.list_id, entry.enrolment_id, entry.at) == (
        jane, LIST_JOIN, 2, None, T0)

    await client.remove_contact_from_address_book(2, jane)
    await _contact(client, JANE, lists=[2])  # joins again
    assert _entries(sandbox, welcome) == {jane: 1}  # no re-entry
    assert _entries(sandbox, again) == {jane: 2}
    assert sandbox.enrolment_calls == [] and sandbox.enrolment_allowance_remaining == 20


async def test_list_join_rules(sandbox, client):
    program = sandbox.add_program("Newsletter welcome", start_list_id=2)
    draft = sandbox.add_program("Not live yet", status="Draft", start_list_id=2)
    await _contact(client, "gone@example.com")
    sandbox.suppress(email="gone@example.com")
    await _contact(client, "gone@example.com", lists=[2])  # suppressed contacts do not enter
    await _contact(client, "pending@example.com", lists=[2],
                   channelProperties={"email": {"optInType": "verifiedDouble"}})
    joined = [await _contact(client, f"j{i}@example.com", lists=[2]) for i in range(25)]  # no allowance applies
    assert _entries(sandbox, program) == dict.fromkeys(joined, 1)
    assert sandbox.program_entries(draft) == []

    # an enrolment of a contact that entered through the list: AlreadyInProgram
    sandbox.enrolment_delay_seconds = 0
    enrolment = await client.enrol_contacts(program, [joined[0]])
    assert [f.reason for f in await client.enrolment_faults(enrolment.id)] == ["AlreadyInProgram"]
    assert _entries(sandbox, program)[joined[0]] == 1


async def test_list_joins_from_bulk_imports(sandbox, client):
    program = sandbox.add_program("Newsletter welcome", start_list_id=2)
    items = [{"matchIdentifier": "email", "identifiers": {"email": f"i{i}@example.com"}, "lists": [2]}
             for i in range(3)]
    report = await client.wait_for_import(await client.start_contacts_import(items), kind="contacts",
                                          poll_interval=0.01, timeout=5)
    ids = [c["contactId"] for c in report.created]
    assert _entries(sandbox, program) == dict.fromkeys(ids, 1)
    assert {e.via for e in sandbox.program_entries(program)} == {LIST_JOIN}

    sandbox.imports_start_list_programs = False  # the third-party claim: imports fire no list-join triggers
    more = [{"matchIdentifier": "email", "identifiers": {"email": "late@example.com"}, "lists": [2]}]
    await client.wait_for_import(await client.start_contacts_import(more), kind="contacts",
                                 poll_interval=0.01, timeout=5)
    assert len(sandbox.program_entries(program)) == 3
    late = await _contact(client, "late@example.com", lists=[2])  # already a member: no join
    assert sandbox.program_entries(program, contact_id=late) == []


def test_sandbox_program_helpers_validate_their_arguments(sandbox):
    with pytest.raises(ValueError):
        sandbox.add_program("")
    with pytest.raises(ValueError):
        sandbox.add_program("X", status="Paused")
    with pytest.raises(ValueError):
        sandbox.add_program("X", start_list_id=99)
    program = sandbox.add_program("X", program_id=7)
    with pytest.raises(ValueError):
        sandbox.add_program("Y", program_id=program)
    with pytest.raises(KeyError):
        sandbox.set_program_status(8, "Active")
    with pytest.raises(ValueError):
        sandbox.enrolment_delay_seconds = -1
    assert sandbox.programs == [{"id": 7, "name": "X", "status": "Active",
                                 "dateCreated": sandbox.programs[0]["dateCreated"]}]


# ---------------------------------------------------------------------------------------------------
# contract tests against the Programs OpenAPI document
# ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def programs_spec() -> dict:
    directory = _spec_dir()
    path = directory / "programs.yaml" if directory is not None else None
    if path is None or not path.is_file():
        pytest.skip("Dotdigital Programs OpenAPI document not found (shared/specs/dotdigital or $CTDD_SHARED_DIR)")
    return json.loads(path.read_text("utf-8"))  # a single-line JSON "yaml" file


def _schema(spec: dict, path: str, method: str, status: str | None = None) -> dict:
    operation = spec["paths"][path][method]
    if status is None:
        return operation["requestBody"]["content"]["application/json"]["schema"]
    return operation["responses"][status]["content"]["application/json"]["schema"]


async def test_contract_enrolment_request_and_responses_match_the_spec(programs_spec, sandbox, client, raw):
    validator = SchemaValidator(programs_spec)
    program = sandbox.add_program("Abandoned cart")
    ids = await _contacts(client, 25)
    sandbox.enrolment_delay_seconds = 60

    enrolment = await client.enrol_contacts(program, ids)
    (sent,) = sandbox.requests_matching("POST", "/v2/programs/enrolments")
    request_schema = _schema(programs_spec, "/v2/programs/enrolments", "post")
    assert validator.errors(sent.json, request_schema) == []
    assert set(sent.json) == {"programId", "contacts"}
    assert sent.headers["content-type"] == "application/json"

    created = await raw.get(f"/v2/programs/enrolments/{enrolment.id}")
    by_id = _schema(programs_spec, "/v2/programs/enrolments/{enrolmentId}", "get", "200")
    assert validator.errors(created.json(), by_id) == []
    response = await raw.post("/v2/programs/enrolments", json={"programId": program, "contacts": ids[:1]})
    assert validator.errors(response.json(), _schema(programs_spec, "/v2/programs/enrolments", "post", "201")) == []
    sandbox.finish_enrolments()
    by_status = _schema(programs_spec, "/v2/programs/enrolments/{status}", "get", "200")
    listed = (await raw.get("/v2/programs/enrolments/Finished")).json()
    assert len(listed) == 2 and validator.errors(listed, by_status) == []

    faults = await raw.get(f"/v2/programs/enrolments/{enrolment.id}/report-faults")
    report = programs_spec["paths"]["/v2/programs/enrolments/{id}/report-faults"]["get"]["responses"]["200"]
    assert faults.headers["content-type"].split(";")[0] in report["content"]
    assert faults.text.splitlines()[0] == report["content"]["text/csv"]["example"].splitlines()[0]

    # the validator does catch what the sandbox refuses
    assert validator.errors({"programId": program, "contacts": list(range(1, 27))}, request_schema) != []
    assert validator.errors({"programId": program, "contacts": []}, request_schema) != []
    assert validator.errors({"contacts": [1]}, request_schema) != []
    assert validator.errors({"programId": program, "addressBooks": list(range(11))}, request_schema) != []


async def test_contract_program_listing_and_errors_match_the_spec(programs_spec, sandbox, client, raw):
    validator = SchemaValidator(programs_spec)
    for status in ("Draft", "Active", "Deactivated", "ReadOnly"):
        sandbox.add_program(f"{status} program", status=status)
    listing = (await raw.get("/v2/programs")).json()
    assert validator.errors(listing, _schema(programs_spec, "/v2/programs", "get", "200")) == []
    single = (await raw.get("/v2/programs/1")).json()
    assert validator.errors(single, _schema(programs_spec, "/v2/programs/{id}", "get", "200")) == []
    assert validator.errors(single, "#/components/schemas/programDetails") == []
    assert [p.status for p in await client.list_programs()] == ["Draft", "Active", "Deactivated", "ReadOnly"]

    not_found = await raw.get("/v2/programs/99")
    example = programs_spec["paths"]["/v2/programs/{id}"]["get"]["responses"]["404"]["content"]["application/json"]
    assert not_found.json() == example["example"]
    contact = await _contact(client)
    not_active = await raw.post("/v2/programs/enrolments", json={"programId": 1, "contacts": [contact]})
    responses = programs_spec["paths"]["/v2/programs/enrolments"]["post"]["responses"]
    assert not_active.status_code == 422
    assert not_active.json() == responses["422"]["content"]["application/json"]["example"]
    assert validator.errors(not_active.json(), "#/components/schemas/ApiError") == []


def test_client_parses_the_spec_fault_report_example(programs_spec):
    from ctdd.dotdigital.client import _parse_fault_report

    report = programs_spec["paths"]["/v2/programs/enrolments/{id}/report-faults"]["get"]["responses"]["200"]
    example = report["content"]["text/csv"]["example"]
    assert _parse_fault_report(example.encode(), "/x") == [
        EnrolmentFault(12345, "contact@example.com", "+441234567890", "Unsubcribed"),
        EnrolmentFault(67890, "other@example.com", None, "AlreadyInProgram"),
    ]
    assert _parse_fault_report(b"\xef\xbb\xbfid,email,telephonenumber,reason\r\n\r\n,x@example.com,,Suppressed\r\n",
                               "/x") == [EnrolmentFault(None, "x@example.com", None, "Suppressed")]
    with pytest.raises(DotdigitalError):
        _parse_fault_report(b"Contact,Why\n1,x\n", "/x")
    assert Program(1, "x", "Active").active and not Program(1, "x", "Draft").active
