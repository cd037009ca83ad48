"""Mini-app SDK: openids, session keys, templates, subscriptions.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-22
"""

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # filled in by the capability's work


def downgrade() -> None:
    pass
