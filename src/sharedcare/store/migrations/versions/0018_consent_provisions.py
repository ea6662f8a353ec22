"""patient choices as FHIR Consent provisions

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-05

A patient's Consent holds, besides the three choices it always had (object to all sharing, object to
an organisation, opt out of secondary use), further deny provisions with nested exceptions (TRUST CO1),
and a version that each change increments (audited with it).
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("preferences") as batch:
        batch.add_column(sa.Column("provisions", sa.JSON().with_variant(JSONB(), "postgresql"), nullable=False,
                                   server_default="[]"))
        batch.add_column(sa.Column("version", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("preferences") as batch:
        batch.drop_column("version")
        batch.drop_column("provisions")
