"""Mini-app registry: staff roles, organisations and members, apps, versions, review, grey release, audit,
catalog generation, citizens' recently used apps and favourites.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    -- Platform roles of accounts (staff). The health pass uses health_authority.
    CREATE TABLE staff_roles (
        account_id  uuid        NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
        role        text        NOT NULL CHECK (role IN ('platform_admin', 'reviewer', 'health_authority')),
        granted_by  text        NOT NULL,
        granted_at  timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (account_id, role)
    );

    -- Departments, utilities, hospitals: the owners of mini-apps.
    CREATE TABLE organisations (
        id           uuid PRIMARY KEY,
        name         text        NOT NULL,
        kind         text        NOT NULL CHECK (kind IN ('department', 'utility', 'hospital', 'other')),
        region_code  text        NOT NULL CHECK (region_code ~ '^[0-9]{6}$'),
        created_by   text        NOT NULL,
        created_at   timestamptz NOT NULL DEFAULT now()
    );
    CREATE UNIQUE INDEX organisations_name ON organisations (name);

    CREATE TABLE organisation_members (
        organisation_id  uuid        NOT NULL REFERENCES organisations (id) ON DELETE CASCADE,
        account_id       uuid        NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
        role             text        NOT NULL CHECK (role IN ('admin', 'developer', 'operator')),
        granted_by       text        NOT NULL,
        granted_at       timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (organisation_id, account_id)
    );
    CREATE INDEX organisation_members_account ON organisation_members (account_id);

    -- The AppSecret is kept only as HMAC-SHA256(key = appid, secret): it is shown once and never stored.
    CREATE TABLE miniapps (
        appid              text PRIMARY KEY CHECK (appid ~ '^tb[0-9a-f]{16}$'),
        organisation_id    uuid        NOT NULL REFERENCES organisations (id),
        name               text        NOT NULL,
        description        text        NOT NULL DEFAULT '',
        category           text        NOT NULL,
        region_code        text        NOT NULL CHECK (region_code ~ '^[0-9]{6}$'),
        service_item_code  text,
        icon_url           text,
        secret_hash        bytea       NOT NULL,
        secret_reset_at    timestamptz NOT NULL DEFAULT now(),
        ip_allowlist       cidr[]      NOT NULL DEFAULT '{}',
        status             text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'frozen')),
        frozen_by          text        CHECK (frozen_by IN ('organisation', 'platform')),
        frozen_reason      text,
        created_by         uuid,
        created_at         timestamptz NOT NULL DEFAULT now(),
        updated_at         timestamptz NOT NULL DEFAULT now(),
        CHECK ((status = 'frozen') = (frozen_by IS NOT NULL))
    );
    CREATE UNIQUE INDEX miniapps_name ON miniapps (name);
    CREATE INDEX miniapps_organisation ON miniapps (organisation_id);

    CREATE TABLE miniapp_versions (
        id              uuid PRIMARY KEY,
        appid           text        NOT NULL REFERENCES miniapps (appid) ON DELETE CASCADE,
        version         text        NOT NULL,
        manifest        jsonb       NOT NULL,
        package_sha256  text        NOT NULL CHECK (package_sha256 ~ '^[0-9a-f]{64}$'),
        package_size    bigint      NOT NULL CHECK (package_size > 0),
        package_key     text        NOT NULL,
        state           text        NOT NULL DEFAULT 'development' CHECK (state IN (
                            'development', 'trial', 'submitted', 'approved', 'rejected', 'grey',
                            'released', 'superseded', 'rolled_back', 'offline', 'delisted')),
        trial_accounts  uuid[]      NOT NULL DEFAULT '{}',
        reject_reason   text,
        grey_percent    smallint    CHECK (grey_percent BETWEEN 0 AND 100),
        grey_accounts   uuid[]      NOT NULL DEFAULT '{}',
        grey_regions    text[]      NOT NULL DEFAULT '{}',
        uploaded_by     uuid        NOT NULL,
        created_at      timestamptz NOT NULL DEFAULT now(),
        updated_at      timestamptz NOT NULL DEFAULT now(),
        submitted_at    timestamptz,
        reviewed_at     timestamptz,
        reviewed_by     text,
        released_at     timestamptz,
        superseded_at   timestamptz,
        UNIQUE (appid, version)
    );
    -- At most one released and one grey version per app, whatever races.
    CREATE UNIQUE INDEX miniapp_versions_one_released ON miniapp_versions (appid) WHERE state = 'released';
    CREATE UNIQUE INDEX miniapp_versions_one_grey ON miniapp_versions (appid) WHERE state = 'grey';
    CREATE INDEX miniapp_versions_review_queue ON miniapp_versions (submitted_at) WHERE state = 'submitted';
    CREATE INDEX miniapp_versions_superseded ON miniapp_versions (appid, superseded_at)
        WHERE state = 'superseded';

    -- Every change of an organisation, app or version state, and staff grants: append-only.
    CREATE TABLE miniapp_audit (
        id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        organisation_id  uuid,
        appid            text,
        version_id       uuid,
        action           text        NOT NULL,
        from_state       text,
        to_state         text,
        actor            text        NOT NULL,
        actor_account    uuid,
        detail           jsonb       NOT NULL DEFAULT '{}',
        at               timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX miniapp_audit_app ON miniapp_audit (appid, id);
    CREATE INDEX miniapp_audit_version ON miniapp_audit (version_id, id);
    CREATE INDEX miniapp_audit_organisation ON miniapp_audit (organisation_id, id);
    CREATE FUNCTION miniapp_audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION 'miniapp_audit is append-only';
    END $$;
    CREATE TRIGGER miniapp_audit_append_only BEFORE UPDATE OR DELETE ON miniapp_audit
        FOR EACH ROW EXECUTE FUNCTION miniapp_audit_append_only();

    -- Bumped in the same transaction as every change the catalog shows; API processes compare it with the
    -- generation of their in-memory catalog.
    CREATE TABLE miniapp_catalog_state (
        id          boolean PRIMARY KEY DEFAULT true CHECK (id),
        generation  bigint  NOT NULL
    );
    INSERT INTO miniapp_catalog_state (id, generation) VALUES (true, 1);

    CREATE TABLE miniapp_recent (
        account_id  uuid        NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
        appid       text        NOT NULL REFERENCES miniapps (appid) ON DELETE CASCADE,
        used_at     timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (account_id, appid)
    );
    CREATE INDEX miniapp_recent_account ON miniapp_recent (account_id, used_at DESC);

    CREATE TABLE miniapp_favourites (
        account_id  uuid        NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
        appid       text        NOT NULL REFERENCES miniapps (appid) ON DELETE CASCADE,
        created_at  timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (account_id, appid)
    );
    """)


def downgrade() -> None:
    op.execute("""
    DROP TABLE miniapp_favourites;
    DROP TABLE miniapp_recent;
    DROP TABLE miniapp_catalog_state;
    DROP TABLE miniapp_audit;
    DROP FUNCTION miniapp_audit_append_only();
    DROP TABLE miniapp_versions;
    DROP TABLE miniapps;
    DROP TABLE organisation_members;
    DROP TABLE organisations;
    DROP TABLE staff_roles;
    """)
