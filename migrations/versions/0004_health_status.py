"""Health pass status: rule inputs, rule sets, current statuses and their history, imports, the inbox.

Inputs are keyed by account id only: an imported test or vaccination row is matched to its account through
the ID-number blind index and stored without the ID number.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    -- Risk areas by GB/T 2260 region code. A code also covers the regions under it: 210000 every 21xxxx,
    -- 210100 every 2101xx (prefix). Codes are digits: the "C" collation keeps prefix ranges index-friendly.
    CREATE TABLE health_risk_areas (
        id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        region_code  text COLLATE "C" NOT NULL CHECK (region_code ~ '^[1-9][0-9]{5}$'),
        prefix       text COLLATE "C" NOT NULL GENERATED ALWAYS AS (
                         CASE WHEN right(region_code, 4) = '0000' THEN left(region_code, 2)
                              WHEN right(region_code, 2) = '00' THEN left(region_code, 4)
                              ELSE region_code END) STORED,
        level        text        NOT NULL CHECK (level IN ('low', 'medium', 'high')),
        valid_from   timestamptz NOT NULL,
        valid_to     timestamptz CHECK (valid_to IS NULL OR valid_to > valid_from),
        import_id    uuid,
        updated_at   timestamptz NOT NULL DEFAULT now(),
        -- A later import of the same area and start only moves its end (a correction or a lift).
        UNIQUE (region_code, level, valid_from)
    );
    CREATE INDEX health_risk_areas_prefix ON health_risk_areas (prefix, valid_from);

    CREATE TABLE health_trips (
        id           uuid PRIMARY KEY,
        account_id   uuid        NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
        region_code  text COLLATE "C" NOT NULL CHECK (region_code ~ '^[1-9][0-9]{5}$'),
        venue_id     uuid,
        at           timestamptz NOT NULL,
        recorded_at  timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX health_trips_account ON health_trips (account_id, at);
    -- A risk-area import finds the trips in its regions and windows through this one.
    CREATE INDEX health_trips_region ON health_trips (region_code, at);

    CREATE TABLE health_tests (
        account_id   uuid        NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
        sampled_at   timestamptz NOT NULL,
        result       text        NOT NULL CHECK (result IN ('positive', 'negative')),
        import_id    uuid,
        recorded_at  timestamptz NOT NULL DEFAULT now(),
        -- The same result imported twice is one row.
        PRIMARY KEY (account_id, sampled_at, result)
    );

    CREATE TABLE health_vaccinations (
        account_id   uuid        NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
        dose         smallint    NOT NULL CHECK (dose BETWEEN 1 AND 10),
        at           timestamptz NOT NULL,
        import_id    uuid,
        recorded_at  timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (account_id, dose)
    );

    -- Marks set by health-authority staff; cleared (never deleted) when lifted.
    CREATE TABLE health_manual_marks (
        id           uuid PRIMARY KEY,
        account_id   uuid        NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
        colour       text        NOT NULL CHECK (colour IN ('green', 'yellow', 'red')),
        reason       text        NOT NULL,
        marked_by    text        NOT NULL,
        at           timestamptz NOT NULL,
        cleared_at   timestamptz,
        cleared_by   text,
        CHECK (cleared_at IS NULL OR cleared_at >= at)
    );
    CREATE INDEX health_manual_marks_account ON health_manual_marks (account_id, at);

    -- Decided appeals (the appeal itself lives with the pass API); reason_code: the reason appealed, or
    -- NULL for all of them.
    CREATE TABLE health_appeal_outcomes (
        appeal_id    uuid PRIMARY KEY,
        account_id   uuid        NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
        decision     text        NOT NULL CHECK (decision IN ('approved', 'rejected')),
        reason_code  text,
        decided_by   text        NOT NULL,
        at           timestamptz NOT NULL
    );
    CREATE INDEX health_appeal_outcomes_account ON health_appeal_outcomes (account_id, at);

    -- Rule files activated by ops; the newest activation is in force. Statuses name the version they
    -- were computed under.
    CREATE TABLE health_rule_sets (
        version       text PRIMARY KEY,
        document      jsonb       NOT NULL,
        sha256        bytea       NOT NULL,
        activated_by  text        NOT NULL,
        activated_at  timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX health_rule_sets_activated ON health_rule_sets (activated_at);

    -- The current status per account. version counts changes (colour or reasons); valid_until is the
    -- next moment the rules may give another answer without new inputs (a window ends).
    CREATE TABLE health_status (
        account_id    uuid PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
        colour        text        NOT NULL CHECK (colour IN ('green', 'yellow', 'red')),
        reasons       text[]      NOT NULL,
        rule_id       text,
        since         timestamptz NOT NULL,
        rule_version  text        NOT NULL,
        version       bigint      NOT NULL CHECK (version >= 1),
        valid_until   timestamptz,
        computed_at   timestamptz NOT NULL,
        changed_at    timestamptz NOT NULL
    );

    CREATE TABLE health_status_history (
        account_id    uuid        NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
        version       bigint      NOT NULL,
        colour        text        NOT NULL,
        reasons       text[]      NOT NULL,
        rule_id       text,
        since         timestamptz NOT NULL,
        rule_version  text        NOT NULL,
        changed_at    timestamptz NOT NULL,
        PRIMARY KEY (account_id, version)
    );

    CREATE TABLE health_imports (
        id                 uuid PRIMARY KEY,
        kind               text        NOT NULL CHECK (kind IN ('risk-areas', 'tests', 'vaccinations')),
        file_sha256        bytea       NOT NULL,
        rows_read          bigint      NOT NULL,
        rows_stored        bigint      NOT NULL,
        rows_unknown       bigint      NOT NULL,
        accounts_scheduled bigint      NOT NULL,
        imported_by        text        NOT NULL,
        started_at         timestamptz NOT NULL,
        finished_at        timestamptz NOT NULL DEFAULT now()
    );

    -- The citizen inbox: messages from the platform and mini-apps, newest first (seq: delivery order).
    CREATE TABLE inbox_messages (
        id           uuid PRIMARY KEY,
        seq          bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
        account_id   uuid        NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
        source       text        NOT NULL,
        title        text        NOT NULL,
        body         text        NOT NULL,
        created_at   timestamptz NOT NULL DEFAULT now(),
        read_at      timestamptz
    );
    CREATE INDEX inbox_messages_account ON inbox_messages (account_id, seq DESC);
    """)


def downgrade() -> None:
    op.execute("""
    DROP TABLE inbox_messages;
    DROP TABLE health_imports;
    DROP TABLE health_status_history;
    DROP TABLE health_status;
    DROP TABLE health_rule_sets;
    DROP TABLE health_appeal_outcomes;
    DROP TABLE health_manual_marks;
    DROP TABLE health_vaccinations;
    DROP TABLE health_tests;
    DROP TABLE health_trips;
    DROP TABLE health_risk_areas;
    """)
