"""Schema migrations with Alembic running plain SQL. Concurrent upgrades serialise on an advisory lock."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
# Arbitrary constant shared by every Tongban process: pg_advisory_xact_lock(MIGRATION_LOCK_ID).
MIGRATION_LOCK_ID = 7_370_203_711


def sqlalchemy_url(dsn: str) -> str:
    """asyncpg DSN -> SQLAlchemy URL with the psycopg driver (Alembic is synchronous)."""
    for prefix in ("postgresql://", "postgres://"):
        if dsn.startswith(prefix):
            return "postgresql+psycopg://" + dsn[len(prefix) :]
    return dsn


def _config(dsn: str) -> Config:
    # Alembic and SQLAlchemy are imported on use: they cost half a second that CLI commands and
    # server workers should not pay at start-up.
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", sqlalchemy_url(dsn).replace("%", "%%"))
    return cfg


def upgrade(dsn: str, revision: str = "head") -> None:
    from alembic import command

    command.upgrade(_config(dsn), revision)


def downgrade(dsn: str, revision: str) -> None:
    from alembic import command

    command.downgrade(_config(dsn), revision)


@functools.cache
def head() -> str:
    from alembic.script import ScriptDirectory

    heads = ScriptDirectory.from_config(_config("postgresql://")).get_heads()
    assert len(heads) == 1, f"migrations have {len(heads)} heads"
    return heads[0]


def current(dsn: str) -> str | None:
    from sqlalchemy import create_engine, pool, text

    engine = create_engine(sqlalchemy_url(dsn), poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            exists = conn.execute(text("SELECT to_regclass('alembic_version')")).scalar()
            if exists is None:
                return None
            value = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
            return str(value) if value is not None else None
    finally:
        engine.dispose()
