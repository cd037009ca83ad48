"""Foundation: transactional outbox, signing key store, app metadata.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE outbox (
        id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        job_name     text        NOT NULL,
        job_id       text        NOT NULL UNIQUE,
        payload      bytea       NOT NULL,
        created_at   timestamptz NOT NULL DEFAULT now(),
        defer_until  timestamptz,
        enqueued_at  timestamptz
    );
    CREATE INDEX outbox_pending ON outbox (id) WHERE enqueued_at IS NULL;

    CREATE TABLE signing_keys (
        kid              text PRIMARY KEY,
        purpose          text        NOT NULL,
        alg              text        NOT NULL,
        status           text        NOT NULL CHECK (status IN ('next', 'active', 'retired')),
        public_jwk       jsonb       NOT NULL,
        private_key_enc  bytea       NOT NULL,
        master_key_id    text        NOT NULL,
        created_at       timestamptz NOT NULL DEFAULT now(),
        activated_at     timestamptz,
        retired_at       timestamptz
    );
    CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys (purpose) WHERE status = 'active';
    CREATE UNIQUE INDEX signing_keys_one_next ON signing_keys (purpose) WHERE status = 'next';

    CREATE TABLE app_meta (
        key         text PRIMARY KEY,
        value       jsonb       NOT NULL,
        updated_at  timestamptz NOT NULL DEFAULT now()
    );
    """)


def downgrade() -> None:
    op.execute("""
    DROP TABLE app_meta;
    DROP TABLE signing_keys;
    DROP TABLE outbox;
    """)
