"""review items not worked within their due time are escalated, once

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-05

`escalated_at` is when an overdue item was escalated (`sharedcare audit escalate`, TRUST BG2): written
once, so the escalation's audit event is not repeated at every run.
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("review_items") as batch:
        batch.add_column(sa.Column("escalated_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("review_items") as batch:
        batch.drop_column("escalated_at")
