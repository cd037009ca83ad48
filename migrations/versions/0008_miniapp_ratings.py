"""Mini-app ratings, rectification cases, visit analytics.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-22
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("""
    -- 好差评: one rating per service transaction of an app; level 5 (非常满意) .. 1 (非常不满意).
    -- account_id is kept for the answer to reach the citizen's inbox; the organisation never sees it.
    CREATE TABLE miniapp_ratings (
        id              uuid PRIMARY KEY,
        appid           text        NOT NULL REFERENCES miniapps (appid) ON DELETE CASCADE,
        transaction_id  text        NOT NULL CHECK (transaction_id ~ '^[0-9A-Za-z_.:-]{1,64}$'),
        account_id      uuid        REFERENCES accounts (id) ON DELETE SET NULL,
        level           smallint    NOT NULL CHECK (level BETWEEN 1 AND 5),
        comment         text        NOT NULL DEFAULT '' CHECK (length(comment) <= 500),
        created_at      timestamptz NOT NULL DEFAULT now(),
        UNIQUE (appid, transaction_id)
    );
    CREATE INDEX miniapp_ratings_app_level ON miniapp_ratings (appid, level);
    CREATE INDEX miniapp_ratings_account ON miniapp_ratings (account_id);

    -- A bad rating (level 1 or 2) opens a rectification case that the app's organisation answers by the end
    -- of due_on (Asia/Shanghai): the 15th working day after the rating, fixed when the case opens.
    CREATE TABLE miniapp_cases (
        id               uuid PRIMARY KEY,
        rating_id        uuid        NOT NULL UNIQUE REFERENCES miniapp_ratings (id) ON DELETE CASCADE,
        appid            text        NOT NULL REFERENCES miniapps (appid) ON DELETE CASCADE,
        organisation_id  uuid        NOT NULL REFERENCES organisations (id),
        status           text        NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'answered')),
        opened_at        timestamptz NOT NULL,
        due_on           date        NOT NULL,
        answer           text        CHECK (length(answer) BETWEEN 1 AND 2000),
        answered_by      uuid,
        answered_at      timestamptz,
        CHECK ((status = 'answered') = (answer IS NOT NULL AND answered_at IS NOT NULL))
    );
    CREATE INDEX miniapp_cases_open_due ON miniapp_cases (due_on) WHERE status = 'open';
    CREATE INDEX miniapp_cases_app ON miniapp_cases (appid, opened_at DESC);

    -- Visits and unique users per app and day (Asia/Shanghai), rolled up from Redis by a periodic job.
    CREATE TABLE miniapp_daily_visits (
        appid         text        NOT NULL REFERENCES miniapps (appid) ON DELETE CASCADE,
        day           date        NOT NULL,
        visits        bigint      NOT NULL CHECK (visits >= 0),
        unique_users  bigint      NOT NULL CHECK (unique_users >= 0),
        rolled_up_at  timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (appid, day)
    );
    """)


def downgrade() -> None:
    op.execute("""
    DROP TABLE miniapp_daily_visits;
    DROP TABLE miniapp_cases;
    DROP TABLE miniapp_ratings;
    """)
