"""a held quarantine item that its source has since sent again, corrected, is marked superseded

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-06

`message_key` names the message as its source does (HL7 MSH-3 and MSH-10, a Bundle's identifier, a resource's
type and id, a CSV mapping's record id: `ingest/resent.py`), so that when the source's corrected copy is
stored the held one is found and marked `superseded`, with what superseded it (`superseded_by`) and when
(`superseded_at`): kept byte for byte, no longer waiting, never replayed. Items held before this revision
have no key and wait as before. Downgraded, a superseded item is held again (the older code cannot say why
it is not waiting, and an item hidden without a reason is a message lost: HAZ-13).
"""

import sqlalchemy as sa
from alembic import op

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("quarantine") as batch:
        batch.add_column(sa.Column("message_key", sa.Text(), nullable=True))
        batch.add_column(sa.Column("superseded_by", sa.Text(), nullable=True))
        batch.add_column(sa.Column("superseded_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_quarantine_message_key", "quarantine", ["source_org", "format", "message_key"])


def downgrade() -> None:
    op.execute("UPDATE quarantine SET status = 'held' WHERE status = 'superseded'")
    op.drop_index("ix_quarantine_message_key", table_name="quarantine")
    with op.batch_alter_table("quarantine") as batch:
        batch.drop_column("superseded_at")
        batch.drop_column("superseded_by")
        batch.drop_column("message_key")
