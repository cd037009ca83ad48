"""Health pass issuance: certificates, pass subjects, imported trust, published trust lists; and the tables of
checkpoints, scans, venues and appeals.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    -- Our root CA and document-signer certificates. The private keys stay in the key store (purposes
    -- pass-root / pass-signer): key_kid names the key, kid8 is the certificate's own COSE kid (first 8 bytes
    -- of SHA-256 over the DER), the kid a pass carries. A signer is 'active' while its key signs; once
    -- 'retired' it stays in the published trust list until trusted_until, when its last pass has expired.
    CREATE TABLE pass_certificates (
        kid8           bytea PRIMARY KEY CHECK (length(kid8) = 8),
        role           text        NOT NULL CHECK (role IN ('root', 'signer')),
        key_kid        text        NOT NULL,
        province       text        NOT NULL,
        der            bytea       NOT NULL,
        pass_types     text[]      NOT NULL,
        not_before     timestamptz NOT NULL,
        not_after      timestamptz NOT NULL CHECK (not_after > not_before),
        status         text        NOT NULL CHECK (status IN ('active', 'retired')),
        trusted_until  timestamptz,
        created_at     timestamptz NOT NULL DEFAULT now(),
        retired_at     timestamptz,
        CHECK ((status = 'retired') = (retired_at IS NOT NULL))
    );
    -- One live certificate per key.
    CREATE UNIQUE INDEX pass_certificates_key ON pass_certificates (key_kid) WHERE status = 'active';

    -- The pseudonymous subject (claim sub) of each holder: random, so a pass names nobody by itself.
    -- first_issued_at: before it no pass of the subject exists, so older status changes revoke nothing.
    CREATE TABLE pass_subjects (
        account_id       uuid PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
        sub              text        NOT NULL UNIQUE,
        first_issued_at  timestamptz NOT NULL DEFAULT now()
    );

    -- Revocations are derived from status changes: a subject's passes issued before its status last
    -- changed are revoked. The trust list and the API processes find recent changes through this index.
    CREATE INDEX health_status_changed ON health_status (changed_at);

    -- Trust imported from other issuers (`tongban trust import`): another province's trust list, the EU
    -- DCC trust list, or one signer certificate. A new import of the same source replaces its signers and
    -- revocations.
    CREATE TABLE pass_trust_sources (
        id                 uuid PRIMARY KEY,
        kind               text        NOT NULL CHECK (kind IN ('tongban', 'eu_dcc', 'certificate')),
        issuer             text        NOT NULL,
        version            bigint,
        root_der           bytea,
        file_sha256        bytea       NOT NULL,
        signature_checked  boolean     NOT NULL,
        imported_by        text        NOT NULL,
        imported_at        timestamptz NOT NULL DEFAULT now(),
        UNIQUE (kind, issuer)
    );
    CREATE TABLE pass_trust_signers (
        id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        source_id  uuid   NOT NULL REFERENCES pass_trust_sources (id) ON DELETE CASCADE,
        kid        bytea  NOT NULL,
        region     text,
        der        bytea  NOT NULL
    );
    CREATE INDEX pass_trust_signers_source ON pass_trust_signers (source_id);
    CREATE TABLE pass_trust_revocations (
        source_id  uuid NOT NULL REFERENCES pass_trust_sources (id) ON DELETE CASCADE,
        entry      text NOT NULL,
        PRIMARY KEY (source_id, entry)
    );
    -- Moves on every import: API processes reload the imported trust when it does.
    CREATE TABLE pass_trust_state (
        singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
        generation  bigint      NOT NULL,
        updated_at  timestamptz NOT NULL DEFAULT now()
    );
    INSERT INTO pass_trust_state (generation) VALUES (1);

    -- Our published trust lists (GET /v1/trust-list): version is the list's version member, one more than
    -- the last (taken under an advisory lock).
    CREATE TABLE pass_trust_lists (
        version       bigint PRIMARY KEY,
        generated_at  timestamptz NOT NULL,
        document      bytea       NOT NULL
    );

    -- Checkpoints, their scans, venues and appeals (the checkpoint and appeal services).
    CREATE TABLE checkpoints (
        id           uuid PRIMARY KEY,
        name         text,
        secret_hash  bytea,
        status       text,
        created_at   timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE scans (
        id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        checkpoint_id  uuid,
        kid            text,
        rid            text,
        colour         text,
        valid          boolean,
        reason         text,
        scanned_at     timestamptz,
        recorded_at    timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE venues (
        id             uuid PRIMARY KEY,
        owner_account  uuid REFERENCES accounts (id),
        name           text,
        region         text,
        address        text,
        created_at     timestamptz NOT NULL DEFAULT now(),
        status         text
    );
    CREATE TABLE appeals (
        id             uuid PRIMARY KEY,
        account_id     uuid REFERENCES accounts (id),
        reason         text,
        status         text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'approved', 'rejected')),
        decided_by     uuid,
        decision_note  text,
        created_at     timestamptz NOT NULL DEFAULT now(),
        decided_at     timestamptz
    );
    """)


def downgrade() -> None:
    op.execute("""
    DROP TABLE appeals;
    DROP TABLE venues;
    DROP TABLE scans;
    DROP TABLE checkpoints;
    DROP TABLE pass_trust_lists;
    DROP TABLE pass_trust_state;
    DROP TABLE pass_trust_revocations;
    DROP TABLE pass_trust_signers;
    DROP TABLE pass_trust_sources;
    DROP INDEX health_status_changed;
    DROP TABLE pass_subjects;
    DROP TABLE pass_certificates;
    """)
