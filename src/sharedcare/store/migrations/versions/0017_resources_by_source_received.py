"""resources indexed by source and time received, for feed freshness

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-05

`sharedcare feeds` asks, for each source system, when it last sent new or changed data: with this index
that is one look-up a source, not a scan of every resource.
"""

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_resources_source_received", "resources", ["source_org", "source_system", "received_at"])


def downgrade() -> None:
    op.drop_index("ix_resources_source_received", table_name="resources")
