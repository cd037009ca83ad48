"""One-code terminals, rides and resolves.

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-22
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    -- Bus validators, hospital counters and shop POS. The HMAC secret is kept encrypted under the master key
    -- (the server must compute HMACs, so a hash would not do): secret_enc is AES-256-GCM with the terminal
    -- id in its AAD, master_key_id names the master key it is wrapped under.
    CREATE TABLE onecode_terminals (
        id                 uuid PRIMARY KEY,
        kind               text        NOT NULL CHECK (kind IN ('validator', 'counter', 'pos')),
        name               text        NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
        owner              text        NOT NULL CHECK (length(owner) BETWEEN 1 AND 100),
        org_code           text        CHECK (length(org_code) BETWEEN 1 AND 40),
        secret_enc         bytea       NOT NULL,
        master_key_id      text        NOT NULL,
        status             text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
        created_at         timestamptz NOT NULL DEFAULT now(),
        secret_changed_at  timestamptz NOT NULL DEFAULT now()
    );

    -- Rides uploaded by validators. (terminal_id, ride_id) makes an upload idempotent; (code_id, counter)
    -- finds the same code used on two validators (a copied code). provider_ref is the transit operator's
    -- transaction once the fare is charged.
    CREATE TABLE onecode_rides (
        id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        terminal_id   uuid        NOT NULL REFERENCES onecode_terminals (id),
        ride_id       text        NOT NULL CHECK (length(ride_id) BETWEEN 1 AND 64),
        code_id       bytea       NOT NULL CHECK (length(code_id) = 16),
        counter       bigint      NOT NULL CHECK (counter >= 0),
        generated_at  timestamptz NOT NULL,
        ridden_at     timestamptz NOT NULL,
        fare_fen      integer     NOT NULL CHECK (fare_fen >= 0),
        status        text        NOT NULL DEFAULT 'pending'
                                  CHECK (status IN ('pending', 'settled', 'failed')),
        provider_ref  text,
        failure       text,
        uploaded_at   timestamptz NOT NULL DEFAULT now(),
        settled_at    timestamptz,
        UNIQUE (terminal_id, ride_id)
    );
    CREATE INDEX onecode_rides_code ON onecode_rides (code_id, counter);
    CREATE INDEX onecode_rides_pending ON onecode_rides (id) WHERE status = 'pending';

    -- Online resolves (hospital counters, POS, online validators): what was asked and answered. A payment's
    -- idempotency_key (terminal id + order id) answers a retried request with the first outcome.
    CREATE TABLE onecode_resolves (
        id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        terminal_id      uuid        NOT NULL REFERENCES onecode_terminals (id),
        scene            text        NOT NULL CHECK (scene IN ('transit', 'medical', 'payment')),
        code_id          bytea       CHECK (length(code_id) = 16),
        counter          bigint,
        amount_fen       integer     CHECK (amount_fen >= 0),
        result           text        NOT NULL CHECK (result IN ('approved', 'declined', 'refused')),
        reason           text        NOT NULL,
        provider_ref     text,
        idempotency_key  text        UNIQUE,
        created_at       timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX onecode_resolves_terminal ON onecode_resolves (terminal_id, created_at);
    CREATE INDEX onecode_resolves_code ON onecode_resolves (code_id) WHERE code_id IS NOT NULL;
    """)


def downgrade() -> None:
    op.execute("""
    DROP TABLE onecode_resolves;
    DROP TABLE onecode_rides;
    DROP TABLE onecode_terminals;
    """)
