"""quarantine looked up by where a message came from (file and location), so re-ingesting keeps one copy

Revision ID: 0010
Revises: 0004
Create Date: 2026-11-22
"""

from alembic import op

revision = "0010"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_quarantine_place", "quarantine", ["filename", "location"])


def downgrade() -> None:
    op.drop_index("ix_quarantine_place", table_name="quarantine")
