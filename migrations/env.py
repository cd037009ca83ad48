"""Alembic environment: one transaction for the whole run, serialised by a transaction advisory lock,
so two instances upgrading at once leave one correct schema (the second sees the first's result)."""

from alembic import context
from sqlalchemy import create_engine, pool, text

from core.migrate import MIGRATION_LOCK_ID

config = context.config


def run_migrations_online() -> None:
    engine = create_engine(config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(connection=connection, transactional_ddl=True)
        with context.begin_transaction():
            connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": MIGRATION_LOCK_ID})
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) mode is not supported; run against a database")
run_migrations_online()
