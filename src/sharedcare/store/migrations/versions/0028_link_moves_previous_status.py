"""link moves: each record's link status and method before the move, so an unmerge restores them

Revision ID: 0028
Revises: 0027
Create Date: 2026-12-07

A merge marks every record it moves linked and placed by hand (`manual`). Until now an unmerge moved the
records back but left them so: a record held for review (too little to match on, an NHS number conflict)
came back linked, and a relink then matched it as any other. Each move now keeps the record's status and
method as they were (`from_status`, `from_method`), and an unmerge puts them back. Moves made before this
revision have neither: their records keep the status they have (as before). Downgraded, the columns go.
"""

import sqlalchemy as sa
from alembic import op

revision = "0028"
down_revision = "0027"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("link_moves") as batch:
        batch.add_column(sa.Column("from_status", sa.String(12), nullable=True))
        batch.add_column(sa.Column("from_method", sa.String(20), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("link_moves") as batch:
        batch.drop_column("from_method")
        batch.drop_column("from_status")
