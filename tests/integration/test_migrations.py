"""The Alembic migrations build exactly the schema the models describe, on SQLite and PostgreSQL."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

from ctdd.db import models  # noqa: F401
from ctdd.db.engine import create_db_engine, upgrade_database


def test_models_and_migrations_do_not_drift(database_url):
    engine = create_db_engine(database_url)
    upgrade_database(engine)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(ctx, SQLModel.metadata)
    engine.dispose()
    assert diff == [], f"models and migrations differ; add a migration: {diff}"


def test_upgrade_is_idempotent(database_url):
    engine = create_db_engine(database_url)
    upgrade_database(engine)
    upgrade_database(engine)
    with engine.connect() as conn:
        version = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar_one()
    engine.dispose()
    from alembic.script import ScriptDirectory

    from ctdd.db.engine import alembic_config

    assert version == ScriptDirectory.from_config(alembic_config(database_url)).get_current_head()
