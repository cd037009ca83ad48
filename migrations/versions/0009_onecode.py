"""One-code links, device keys, authorisations and the settlement ledger.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-22
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    -- A citizen's link to a provider account. transit: the operator's account reference; payment: the
    -- acquirer's token reference (never a card number); medical: the insured-person reference, personal,
    -- so only as PII-vault ciphertext (dropped when unlinked). ref_masked is what the citizen sees.
    -- Unlinked rows stay: fares and payments made before the unlink still settle against them.
    CREATE TABLE onecode_links (
        id                uuid PRIMARY KEY,
        account_id        uuid        NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
        kind              text        NOT NULL CHECK (kind IN ('transit', 'medical', 'payment')),
        provider_ref      text,
        provider_ref_enc  bytea,
        ref_masked        text        NOT NULL,
        status            text        NOT NULL CHECK (status IN ('active', 'unlinked')),
        linked_at         timestamptz NOT NULL DEFAULT now(),
        unlinked_at       timestamptz,
        CHECK ((status = 'unlinked') = (unlinked_at IS NOT NULL)),
        CHECK (CASE WHEN kind = 'medical'
                    THEN provider_ref IS NULL AND (status = 'unlinked' OR provider_ref_enc IS NOT NULL)
                    ELSE provider_ref IS NOT NULL AND provider_ref_enc IS NULL END)
    );
    -- One live link per kind per account.
    CREATE UNIQUE INDEX onecode_links_active ON onecode_links (account_id, kind) WHERE status = 'active';

    -- Device keys the phones hold: P-256, the X9.62 uncompressed point (04 || X || Y) the authorisation
    -- carries, whatever form the phone registered. A key may be registered by one account at a time.
    CREATE TABLE onecode_devices (
        id              uuid PRIMARY KEY,
        account_id      uuid        NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
        public_key      bytea       NOT NULL CHECK (length(public_key) = 65 AND get_byte(public_key, 0) = 4),
        status          text        NOT NULL CHECK (status IN ('active', 'revoked')),
        registered_at   timestamptz NOT NULL DEFAULT now(),
        revoked_at      timestamptz,
        revoked_reason  text,
        CHECK ((status = 'revoked') = (revoked_at IS NOT NULL))
    );
    CREATE INDEX onecode_devices_account ON onecode_devices (account_id) WHERE status = 'active';
    CREATE UNIQUE INDEX onecode_devices_key ON onecode_devices (public_key) WHERE status = 'active';
    -- A revoked key is refused when registered again.
    CREATE INDEX onecode_devices_public_key ON onecode_devices (public_key);

    -- Authorisations we signed (docs/onecode-format.md): `signed` is the 199-byte authorisation itself, so
    -- the app can fetch it again; created_at orders those issued within one second. The handles are random
    -- and name nothing; each maps to the link it was made for. A revoked one that has not expired is in the
    -- revocation list terminals download.
    CREATE TABLE onecode_authorisations (
        code_id          bytea       PRIMARY KEY CHECK (length(code_id) = 16),
        account_id       uuid        NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
        device_id        uuid        NOT NULL REFERENCES onecode_devices (id) ON DELETE CASCADE,
        issuer_kid       bytea       NOT NULL CHECK (length(issuer_kid) = 8),
        issued_at        timestamptz NOT NULL,
        expires_at       timestamptz NOT NULL,
        scenes           smallint    NOT NULL CHECK (scenes BETWEEN 1 AND 7),
        ride_cap_fen     integer     NOT NULL CHECK (ride_cap_fen >= 0),
        transit_link_id  uuid        REFERENCES onecode_links (id),
        medical_handle   bytea       UNIQUE CHECK (length(medical_handle) = 16),
        medical_link_id  uuid        REFERENCES onecode_links (id),
        payment_handle   bytea       UNIQUE CHECK (length(payment_handle) = 16),
        payment_link_id  uuid        REFERENCES onecode_links (id),
        signed           bytea       NOT NULL CHECK (length(signed) = 199),
        status           text        NOT NULL CHECK (status IN ('active', 'revoked')),
        revoked_at       timestamptz,
        revoked_reason   text,
        created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
        CHECK (expires_at > issued_at AND expires_at <= issued_at + interval '24 hours'),
        CHECK ((status = 'revoked') = (revoked_at IS NOT NULL)),
        CHECK ((medical_handle IS NULL) = (medical_link_id IS NULL)),
        CHECK ((payment_handle IS NULL) = (payment_link_id IS NULL))
    );
    CREATE INDEX onecode_authorisations_device ON onecode_authorisations (device_id) WHERE status = 'active';
    CREATE INDEX onecode_authorisations_account ON onecode_authorisations (account_id, created_at DESC);
    -- The revocation list: revoked and not yet expired.
    CREATE INDEX onecode_authorisations_revoked ON onecode_authorisations (expires_at) WHERE status = 'revoked';

    -- The settlement ledger, double entry: a posting (one ride fare, one payment, ...) is idempotent by
    -- (kind, reference), the provider's transaction reference; its entries balance (checked at commit).
    -- provider and amount_fen are derived from the entries on the provider's account (what its statement
    -- should list), occurred_at is when the provider says it happened.
    CREATE TABLE onecode_postings (
        id           uuid PRIMARY KEY,
        kind         text        NOT NULL,
        reference    text        NOT NULL,
        provider     text,
        amount_fen   bigint,
        occurred_at  timestamptz NOT NULL,
        posted_at    timestamptz NOT NULL DEFAULT now(),
        UNIQUE (kind, reference),
        CHECK ((provider IS NULL) = (amount_fen IS NULL))
    );
    CREATE INDEX onecode_postings_provider ON onecode_postings (provider, occurred_at)
        WHERE provider IS NOT NULL;
    CREATE INDEX onecode_postings_provider_ref ON onecode_postings (provider, reference)
        WHERE provider IS NOT NULL;
    CREATE TABLE onecode_ledger_entries (
        id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        posting_id  uuid   NOT NULL REFERENCES onecode_postings (id),
        account     text   NOT NULL,
        debit_fen   bigint NOT NULL CHECK (debit_fen >= 0),
        credit_fen  bigint NOT NULL CHECK (credit_fen >= 0),
        CHECK (debit_fen > 0 OR credit_fen > 0)
    );
    CREATE INDEX onecode_ledger_entries_posting ON onecode_ledger_entries (posting_id);
    CREATE INDEX onecode_ledger_entries_account ON onecode_ledger_entries (account, id);

    -- The database refuses an unbalanced posting whatever wrote it: checked once per posting at commit.
    CREATE FUNCTION onecode_posting_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        debits bigint;
        credits bigint;
    BEGIN
        SELECT coalesce(sum(debit_fen), 0), coalesce(sum(credit_fen), 0) INTO debits, credits
        FROM onecode_ledger_entries WHERE posting_id = NEW.posting_id;
        IF debits <> credits THEN
            RAISE EXCEPTION 'onecode posting % is unbalanced: debits % <> credits %',
                NEW.posting_id, debits, credits USING ERRCODE = 'check_violation';
        END IF;
        RETURN NULL;
    END $$;
    CREATE CONSTRAINT TRIGGER onecode_ledger_entries_balanced
        AFTER INSERT OR UPDATE ON onecode_ledger_entries
        DEFERRABLE INITIALLY DEFERRED
        FOR EACH ROW EXECUTE FUNCTION onecode_posting_balanced();

    -- Daily reconciliation of the ledger against each provider's statement, and what it found.
    CREATE TABLE onecode_reconciliations (
        id               uuid PRIMARY KEY,
        provider         text        NOT NULL CHECK (provider IN ('transit', 'payment')),
        day              date        NOT NULL,
        status           text        NOT NULL CHECK (status IN ('matched', 'mismatched', 'failed')),
        statement_lines  integer     NOT NULL DEFAULT 0,
        ledger_postings  integer     NOT NULL DEFAULT 0,
        mismatches       integer     NOT NULL DEFAULT 0,
        error            text,
        started_at       timestamptz NOT NULL,
        finished_at      timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX onecode_reconciliations_day ON onecode_reconciliations (provider, day, finished_at DESC);
    CREATE TABLE onecode_reconciliation_mismatches (
        id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        run_id          uuid   NOT NULL REFERENCES onecode_reconciliations (id) ON DELETE CASCADE,
        reference       text   NOT NULL,
        problem         text   NOT NULL
                        CHECK (problem IN ('missing_in_ledger', 'missing_in_statement', 'amount_differs')),
        ledger_fen      bigint,
        statement_fen   bigint
    );
    CREATE INDEX onecode_reconciliation_mismatches_run ON onecode_reconciliation_mismatches (run_id);
    """)


def downgrade() -> None:
    op.execute("""
    DROP TABLE onecode_reconciliation_mismatches;
    DROP TABLE onecode_reconciliations;
    DROP TRIGGER onecode_ledger_entries_balanced ON onecode_ledger_entries;
    DROP TABLE onecode_ledger_entries;
    DROP FUNCTION onecode_posting_balanced();
    DROP TABLE onecode_postings;
    DROP TABLE onecode_authorisations;
    DROP TABLE onecode_devices;
    DROP TABLE onecode_links;
    """)
