"""Mini-app registry: organisations, apps, versions, review, grey release, catalog.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22
"""

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # filled in by the capability's work


def downgrade() -> None:
    pass
