"""Shared fixtures: the Dotdigital sandbox, databases (SQLite and the real PostgreSQL), and a running
service reached over real gRPC on loopback. Helpers live in ``tests/support`` (``from support import ...``)."""

from __future__ import annotations

import os
import uuid

import grpc
import pytest
import sqlalchemy as sa

from ctdd.runtime.app import App
from ctdd.testing.dotdigital_sandbox import DotdigitalSandbox
from support.helpers import POSTGRES_ADMIN_URL, RunningService, make_settings, reset_postgres


@pytest.fixture
def sandbox():
    with DotdigitalSandbox() as sb:
        yield sb


@pytest.fixture(scope="session")
def postgres_database():
    """A throw-away database on the machine's PostgreSQL server, dropped at the end of the session."""
    admin = sa.create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    name = f"ctdd_test_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as conn:
            conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as exc:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"PostgreSQL not reachable at {POSTGRES_ADMIN_URL}: {exc.orig}")
    url = sa.engine.make_url(POSTGRES_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as conn:
        conn.execute(sa.text(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :n AND pid <> pg_backend_pid()"
        ), {"n": name})
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request, tmp_path):
    """Every test using this runs twice: on SQLite (embedded default) and on the real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ctdd.db'}"
    url = request.getfixturevalue("postgres_database")
    reset_postgres(url)
    return url


@pytest.fixture
def engine(database_url):
    """An engine on the test database, migrated to head."""
    from ctdd.db.engine import create_db_engine, upgrade_database

    eng = create_db_engine(database_url)
    upgrade_database(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def sqlite_url(tmp_path):
    return f"sqlite:///{tmp_path / 'ctdd.db'}"


@pytest.fixture
async def service_factory():
    started: list[tuple[App, grpc.aio.Channel]] = []

    async def start(settings, **app_kwargs) -> RunningService:
        app = App(settings, **app_kwargs)
        await app.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.port}")
        started.append((app, channel))
        return RunningService(app, channel)

    yield start
    for app, channel in reversed(started):
        await channel.close()
        await app.stop(grace=1.0)


@pytest.fixture
async def service(service_factory, database_url, sandbox) -> RunningService:
    return await service_factory(make_settings(database_url, sandbox))
