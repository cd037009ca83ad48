"""Accounts: people, sessions and refresh tokens, real-name identity, legal persons, consent ledger,
deletion requests.

Personal data (phone, name, ID number) is stored only as PII-vault ciphertext plus a blind index for
equality lookups and a masked form for display.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE accounts (
        id                 uuid PRIMARY KEY,
        phone_enc          bytea       NOT NULL,
        phone_bidx         bytea       NOT NULL,
        phone_masked       text        NOT NULL,
        status             text        NOT NULL DEFAULT 'active'
                           CHECK (status IN ('active', 'banned', 'deleting', 'deleted')),
        level              smallint    NOT NULL DEFAULT 1 CHECK (level BETWEEN 1 AND 3),
        amr                text[]      NOT NULL DEFAULT ARRAY['sms'],
        name_enc           bytea,
        name_masked        text,
        id_number_enc      bytea,
        id_number_bidx     bytea,
        id_number_masked   text,
        real_name_at       timestamptz,
        face_verified_at   timestamptz,
        banned_reason      text,
        created_at         timestamptz NOT NULL DEFAULT now(),
        updated_at         timestamptz NOT NULL DEFAULT now()
    );
    -- One phone, one account; one ID number, one account (deleted accounts keep neither).
    CREATE UNIQUE INDEX accounts_phone ON accounts (phone_bidx);
    CREATE UNIQUE INDEX accounts_id_number ON accounts (id_number_bidx) WHERE id_number_bidx IS NOT NULL;

    CREATE TABLE sessions (
        id                  uuid PRIMARY KEY,
        account_id          uuid        NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
        device_id           text        NOT NULL,
        device_name         text        NOT NULL,
        acting_enterprise   uuid,
        created_at          timestamptz NOT NULL DEFAULT now(),
        last_seen_at        timestamptz NOT NULL DEFAULT now(),
        expires_at          timestamptz NOT NULL,
        revoked_at          timestamptz,
        revoked_reason      text
    );
    CREATE INDEX sessions_account ON sessions (account_id) WHERE revoked_at IS NULL;
    -- API processes poll recent revocations into their in-memory revocation set.
    CREATE INDEX sessions_revoked_at ON sessions (revoked_at) WHERE revoked_at IS NOT NULL;

    -- Opaque refresh tokens, stored as SHA-256 of 256 random bits; each use rotates to a successor.
    CREATE TABLE refresh_tokens (
        token_hash   bytea PRIMARY KEY,
        session_id   uuid        NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
        created_at   timestamptz NOT NULL DEFAULT now(),
        expires_at   timestamptz NOT NULL,
        rotated_at   timestamptz
    );
    CREATE INDEX refresh_tokens_session ON refresh_tokens (session_id);

    CREATE TABLE enterprises (
        id                 uuid PRIMARY KEY,
        uscc               text        NOT NULL UNIQUE,
        name               text        NOT NULL,
        legal_rep_account  uuid        NOT NULL REFERENCES accounts (id),
        registered_at      timestamptz NOT NULL DEFAULT now()
    );

    CREATE TABLE enterprise_members (
        enterprise_id  uuid        NOT NULL REFERENCES enterprises (id) ON DELETE CASCADE,
        account_id     uuid        NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
        role           text        NOT NULL CHECK (role IN ('legal_representative', 'admin', 'agent')),
        granted_by     uuid        REFERENCES accounts (id),
        granted_at     timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (enterprise_id, account_id)
    );
    CREATE INDEX enterprise_members_account ON enterprise_members (account_id);

    -- PIPL art. 14/29: every sharing of personal data rests on a recorded, revocable consent.
    CREATE TABLE consents (
        id           uuid PRIMARY KEY,
        subject_id   uuid        NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
        recipient    text        NOT NULL,
        scopes       text[]      NOT NULL,
        purpose      text        NOT NULL,
        granted_at   timestamptz NOT NULL DEFAULT now(),
        revoked_at   timestamptz
    );
    CREATE INDEX consents_subject ON consents (subject_id, recipient) WHERE revoked_at IS NULL;

    -- PIPL art. 47: deletion on request, after a cancellable grace period.
    CREATE TABLE account_deletions (
        account_id    uuid PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
        requested_at  timestamptz NOT NULL DEFAULT now(),
        due_at        timestamptz NOT NULL,
        cancelled_at  timestamptz,
        completed_at  timestamptz
    );

    -- What happened to an account, for the account holder (export) and for ops; never personal data.
    CREATE TABLE account_events (
        id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        account_id  uuid        NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
        kind        text        NOT NULL,
        detail      jsonb       NOT NULL DEFAULT '{}',
        actor       text        NOT NULL,
        at          timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX account_events_account ON account_events (account_id, at);
    """)


def downgrade() -> None:
    op.execute("""
    DROP TABLE account_events;
    DROP TABLE account_deletions;
    DROP TABLE consents;
    DROP TABLE enterprise_members;
    DROP TABLE enterprises;
    DROP TABLE refresh_tokens;
    DROP TABLE sessions;
    DROP TABLE accounts;
    """)
