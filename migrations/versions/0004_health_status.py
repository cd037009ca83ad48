"""Health pass status: rule inputs, statuses and their history, inbox.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22
"""

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # filled in by the capability's work


def downgrade() -> None:
    pass
