"""Group commit: concurrent units of work share transactions, one savepoint each, and every caller is
answered after the commit. On SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import grpc
import pytest
import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError

from support import contact_request, make_settings
from ctdd.db.engine import create_db_engine, utcnow
from ctdd.db.models import ContactIdentifier, RejectedRecord, Contact
from ctdd.db.group_commit import GroupCommitRunner


def _insert(reason: str, fail: bool = False):
    def unit(session):
        rec = RejectedRecord(operation="t", reason=reason, created_at=utcnow())
        session.add(rec)
        session.flush()
        if fail:
            raise ValueError(f"unit {reason} refuses")
        return rec.id

    return unit


def _committed(engine, reason: str) -> bool:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM rejected_record WHERE reason = :r"), {"r": reason}).scalar_one() == 1


async def test_concurrent_units_share_a_transaction_and_answer_after_the_commit(engine):
    runner = GroupCommitRunner(engine)
    seen_committed = []

    async def call(i: int):
        rid = await runner.run(_insert(f"r{i}"))
        seen_committed.append(_committed(engine, f"r{i}"))  # another connection sees it as soon as we are answered
        return rid

    ids = await asyncio.gather(*(call(i) for i in range(60)))
    await runner.close()
    assert len(set(ids)) == 60 and all(seen_committed)
    assert runner.units == 60 and runner.batches < 10 and runner.largest_batch > 1


async def test_under_load_a_commit_gathers_units_while_they_keep_arriving(engine):
    # min_commit_interval: after a commit, the next one waits for more units, as long as they keep coming
    runner = GroupCommitRunner(engine, min_commit_interval=2.0, quiet_period=0.2)
    try:
        await runner.run(_insert("g-first"))  # idle: committed at once
        assert runner.batches == 1
        pending = []
        for i in range(20):  # one unit every 10 ms, each well within the quiet period of the one before
            pending.append(asyncio.ensure_future(runner.run(_insert(f"g{i}"))))
            await asyncio.sleep(0.01)
        await asyncio.gather(*pending)
        assert runner.units == 21 and runner.batches <= 3 and runner.largest_batch >= 10
    finally:
        await runner.close()


async def test_callers_waiting_for_their_answer_are_not_held_for_the_whole_commit_interval(engine):
    # Four callers that each send their next unit only once answered (a closed loop, like RPC clients
    # with a fixed concurrency): once all four are waiting, nothing more will arrive, so the batch commits
    # after the quiet period instead of idling until min_commit_interval has passed.
    interval = 0.5
    runner = GroupCommitRunner(engine, min_commit_interval=interval, quiet_period=0.02)
    commits: list[float] = []
    apply_batch = runner._apply_batch_async

    async def timed_apply(units):
        commits.append(asyncio.get_running_loop().time())
        return await apply_batch(units)

    runner._apply_batch_async = timed_apply  # type: ignore[method-assign]

    async def caller(n: int):
        for i in range(5):
            await runner.run(_insert(f"c{n}-{i}"))

    try:
        await asyncio.gather(*(caller(n) for n in range(4)))
    finally:
        await runner.close()
    assert runner.units == 20 and runner.largest_batch == 4
    gaps = [b - a for a, b in zip(commits, commits[1:])]
    assert gaps and max(gaps) < interval / 2, gaps  # the old rule waited >= interval between commits
    assert all(_committed(engine, f"c{n}-{i}") for n in range(4) for i in range(5))


async def test_a_failing_unit_is_rolled_back_alone(engine):
    runner = GroupCommitRunner(engine)
    results = await asyncio.gather(*(runner.run(_insert(f"u{i}", fail=i % 3 == 0)) for i in range(9)),
                                   return_exceptions=True)
    await runner.close()
    assert runner.batches == 1
    for i, result in enumerate(results):
        if i % 3 == 0:
            assert isinstance(result, ValueError) and not _committed(engine, f"u{i}")
        else:
            assert isinstance(result, int) and _committed(engine, f"u{i}")


async def test_a_lost_uniqueness_race_is_retried_in_its_own_savepoint(engine):
    with engine.begin() as conn:  # "another process" already owns the identifier
        cid = conn.execute(sa.insert(Contact.__table__).values(account="a", next_sequence=1, created_at=utcnow(),
                                                                updated_at=utcnow()).returning(Contact.__table__.c.id)).scalar_one()
        conn.execute(sa.insert(ContactIdentifier.__table__).values(account="a", kind="email", value="x@example.com",
                                                                    contact_id=cid, created_at=utcnow()))
    attempts = []

    def racer(session):
        attempts.append(1)
        if len(attempts) == 1:  # first try: did not see the other writer's row, inserts and loses
            session.add(ContactIdentifier(account="a", kind="email", value="x@example.com", contact_id=cid,
                                          created_at=utcnow()))
            session.flush()
            return "inserted"
        return session.execute(sa.select(ContactIdentifier.contact_id).where(
            ContactIdentifier.value == "x@example.com")).scalar_one()

    runner = GroupCommitRunner(engine)
    results = await asyncio.gather(runner.run(_insert("before")), runner.run(racer), runner.run(_insert("after")))
    await runner.close()
    assert results[1] == cid and len(attempts) == 2 and runner.batches == 1
    assert _committed(engine, "before") and _committed(engine, "after")


@pytest.mark.postgres
async def test_a_failed_commit_falls_back_to_one_transaction_per_unit(request):
    """A deferred constraint fails only at COMMIT: no unit of the batch was applied, so each is applied
    alone and only the offending one fails."""
    from support import reset_postgres

    url = request.getfixturevalue("postgres_database")
    reset_postgres(url)
    engine = create_db_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE deferred_t (k int, CONSTRAINT uq_k UNIQUE (k) DEFERRABLE INITIALLY DEFERRED)"))

    def put(k: int, tag: str):
        def unit(session):
            session.execute(sa.text("INSERT INTO deferred_t (k) VALUES (:k)"), {"k": k})
            return tag
        return unit

    runner = GroupCommitRunner(engine)
    results = await asyncio.gather(runner.run(put(1, "a")), runner.run(put(1, "b")), runner.run(put(2, "c")),
                                   return_exceptions=True)
    await runner.close()
    with engine.connect() as conn:
        rows = sorted(conn.execute(sa.text("SELECT k FROM deferred_t")).scalars())
    engine.dispose()
    assert results[0] == "a" and isinstance(results[1], IntegrityError) and results[2] == "c"
    assert rows == [1, 2] and runner.batches == 0


async def test_sync_contact_rpcs_are_group_committed(service, sandbox):
    runner = service.app.transactions
    assert isinstance(runner, GroupCommitRunner)
    requests = [contact_request(email=f"g{i}@example.com", first_name=f"G{i}") for i in range(40)]
    requests += [contact_request(email="same@example.com", first_name="A"),
                 contact_request(email="same@example.com", last_name="B")]
    replies = await asyncio.gather(*(service.stub.SyncContact(r) for r in requests))
    assert len({r.contact_id for r in replies}) == 41  # the two requests for one new email share a contact
    assert runner.largest_batch > 1 and runner.batches < 42
    # a unit that fails (no address for an unknown customer) fails alone, in a shared batch
    bad = contact_request(customer_id="nobody", first_name="X")
    outcome = await asyncio.gather(service.stub.SyncContact(bad), service.stub.SyncContact(
        contact_request(email="ok@example.com")), return_exceptions=True)
    assert isinstance(outcome[0], grpc.aio.AioRpcError) and outcome[0].code() == grpc.StatusCode.FAILED_PRECONDITION
    assert outcome[1].created
    assert len(service.rows("SELECT id FROM contact")) == 42


def test_group_commit_can_be_turned_off(database_url, sandbox):
    from ctdd.runtime.app import App
    from ctdd.db.transactions import TransactionRunner

    settings = make_settings(database_url, sandbox)
    from ctdd.config import replace

    app = App(replace(settings, group_commit=False), serve_grpc=False, run_dispatcher=False)
    assert type(app.transactions) is TransactionRunner
    app.engine.dispose()
