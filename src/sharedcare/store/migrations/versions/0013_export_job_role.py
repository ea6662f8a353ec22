"""Export jobs record the role their kick-off was decided under

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-04

A job's run goes under the role and organisation of its kick-off, and is refused if the user or backend
client no longer holds them. Jobs recorded before this have no role: their run is refused (start anew).
"""

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("export_jobs") as batch:
        batch.add_column(sa.Column("role", sa.String(length=50), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("export_jobs") as batch:
        batch.drop_column("role")
