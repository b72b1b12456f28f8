"""Retention of rejected_record: rows older than [service] rejected_retention_days are deleted in bounded batches
by the running service (ctdd.ingest.rejections), on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import sqlalchemy as sa

from ctdd.db.models import RejectedRecord
from ctdd.ingest.rejections import purge_rejected
from support import make_settings, wait_for

OLD, NEW = timedelta(days=40), timedelta(days=1)


def _insert(engine, ages: list[timedelta]) -> list[int]:
    now = datetime.now(timezone.utc)
    ids = []
    with engine.begin() as conn:
        for n, age in enumerate(ages):
            ids.append(conn.execute(sa.insert(RejectedRecord.__table__).values(
                operation="SyncContact", store_key="uk", record_id=f"r-{n}", reason="invalid SyncContactRequest",
                created_at=now - age).returning(RejectedRecord.__table__.c.id)).scalar_one())
    return ids


def _record_ids(engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text("SELECT record_id FROM rejected_record ORDER BY id")).scalars())


def test_purge_deletes_only_expired_rows_in_bounded_batches(engine):
    # ids grow with time, but not strictly: r-6 was written late by a process with a slow clock
    _insert(engine, [OLD, OLD, OLD, OLD, OLD, NEW, OLD, NEW])
    cutoff = datetime.now(timezone.utc) - timedelta(days=30)

    assert purge_rejected(engine, older_than=cutoff, batch_size=2, max_batches=1) == 2  # one batch, two rows
    assert _record_ids(engine) == ["r-2", "r-3", "r-4", "r-5", "r-6", "r-7"]

    assert purge_rejected(engine, older_than=cutoff, batch_size=2) == 4
    assert _record_ids(engine) == ["r-5", "r-7"]
    assert purge_rejected(engine, older_than=cutoff, batch_size=2) == 0


async def test_the_running_service_purges_rejected_records_past_the_retention(service_factory, engine, database_url,
                                                                                sandbox):
    _insert(engine, [OLD, OLD, OLD, timedelta(days=5), NEW])
    settings = make_settings(database_url, sandbox)
    settings = settings.replace(service=settings.service.replace(rejected_retention_days=3))
    await service_factory(settings)
    # the inbox processor purges on its first round, then every ten minutes
    await wait_for(lambda: _record_ids(engine) == ["r-4"], what="expired rejected records deleted")
