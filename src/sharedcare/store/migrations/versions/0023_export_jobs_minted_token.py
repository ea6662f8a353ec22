"""an export job remembers the operator account and token id of a `sharedcare token` it was started with

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-06

The run (a background thread, after the request has gone) and its withdrawal at a suspension audit entries of
their own; like the kick-off's, they name the operator who minted the token and its id (IHE BALP's second
agent, `governance/audit.py`). Jobs started before this revision have neither and their entries stay unmarked,
as before. Downgraded, the columns go (the older code does not mark a run's entries).
"""

import sqlalchemy as sa
from alembic import op

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("export_jobs") as batch:
        batch.add_column(sa.Column("minted_by", sa.String(100), nullable=True))
        batch.add_column(sa.Column("token_id", sa.String(100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("export_jobs") as batch:
        batch.drop_column("token_id")
        batch.drop_column("minted_by")
