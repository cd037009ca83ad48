"""Mini-app SDK: openids, session keys, templates, subscriptions.

Openids and unionids are HMAC-SHA256 of the account id under a secret salt per app (openid) and per
organisation (unionid): stable, different per app, and not reversible without the salt. The openid of each
(app, account) that ever logged in is kept for the reverse lookup (subscribe messages, real-name calls).
Session keys and app access tokens live in Redis only: losing them means logging in again, as in WeChat.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    CREATE TABLE miniapp_openid_salts (
        appid       text PRIMARY KEY REFERENCES miniapps (appid) ON DELETE CASCADE,
        salt        bytea       NOT NULL CHECK (length(salt) = 32),
        created_at  timestamptz NOT NULL DEFAULT now()
    );

    CREATE TABLE miniapp_unionid_salts (
        organisation_id  uuid PRIMARY KEY REFERENCES organisations (id) ON DELETE CASCADE,
        salt             bytea       NOT NULL CHECK (length(salt) = 32),
        created_at       timestamptz NOT NULL DEFAULT now()
    );

    CREATE TABLE miniapp_openids (
        appid       text        NOT NULL REFERENCES miniapps (appid) ON DELETE CASCADE,
        openid      text        NOT NULL,
        account_id  uuid        NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
        created_at  timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (appid, openid),
        UNIQUE (appid, account_id)
    );
    CREATE INDEX miniapp_openids_account ON miniapp_openids (account_id);

    -- Subscribe-message templates: a title and its keywords ({"key": "thing1", "label": "办理事项"}, ...).
    CREATE TABLE miniapp_templates (
        template_id  text PRIMARY KEY CHECK (template_id ~ '^[A-Za-z0-9_-]{43}$'),
        appid        text        NOT NULL REFERENCES miniapps (appid) ON DELETE CASCADE,
        title        text        NOT NULL,
        keywords     jsonb       NOT NULL,
        created_by   text        NOT NULL,
        created_at   timestamptz NOT NULL DEFAULT now()
    );
    CREATE INDEX miniapp_templates_app ON miniapp_templates (appid, created_at);

    -- One-time subscriptions: each acceptance lets the app send one message with the template.
    CREATE TABLE miniapp_subscriptions (
        account_id   uuid        NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
        template_id  text        NOT NULL REFERENCES miniapp_templates (template_id) ON DELETE CASCADE,
        remaining    integer     NOT NULL CHECK (remaining >= 0),
        updated_at   timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (account_id, template_id)
    );
    CREATE INDEX miniapp_subscriptions_template ON miniapp_subscriptions (template_id);

    -- Messages accepted for delivery; the job marks each delivered once it is in the citizen's inbox.
    CREATE TABLE miniapp_messages (
        id                uuid PRIMARY KEY,
        appid             text        NOT NULL REFERENCES miniapps (appid) ON DELETE CASCADE,
        template_id       text        NOT NULL,
        account_id        uuid        NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
        title             text        NOT NULL,
        body              text        NOT NULL,
        page              text,
        created_at        timestamptz NOT NULL DEFAULT now(),
        delivered_at      timestamptz,
        inbox_message_id  uuid
    );
    CREATE INDEX miniapp_messages_app ON miniapp_messages (appid, created_at);
    CREATE INDEX miniapp_messages_account ON miniapp_messages (account_id);
    """)


def downgrade() -> None:
    op.execute("""
    DROP TABLE miniapp_messages;
    DROP TABLE miniapp_subscriptions;
    DROP TABLE miniapp_templates;
    DROP TABLE miniapp_openids;
    DROP TABLE miniapp_unionid_salts;
    DROP TABLE miniapp_openid_salts;
    """)
