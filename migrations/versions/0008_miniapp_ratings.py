"""Mini-app ratings, rectification cases, visit analytics.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-22
"""

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # filled in by the capability's work


def downgrade() -> None:
    pass
