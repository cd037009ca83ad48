"""Health pass issuance: certificates, checkpoints, scans, venues, appeals.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22
"""

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass  # filled in by the capability's work


def downgrade() -> None:
    pass
