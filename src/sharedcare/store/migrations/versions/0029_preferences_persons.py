"""preferences: the persons whose records carried the number when the choices last changed

Revision ID: 0029
Revises: 0028
Create Date: 2026-12-07

A choice that restricts, made after an export's kick-off, withdraws the export if it holds a person the
choice applies to (`export.jobs._Changes`), found through the records that carry the number the choice is
held against. A source that then corrected the NHS number on the record (no merge) left the choice mapped to
nobody, and the export stayed to download. Each change now notes the persons whose records carried the
number as it was made (`persons`), and the withdrawal reads them too. Choices changed before this revision
have none and are matched by number alone, as before. Downgraded, the column goes.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0029"
down_revision = "0028"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("preferences") as batch:
        batch.add_column(sa.Column("persons", sa.JSON().with_variant(JSONB(), "postgresql"), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("preferences") as batch:
        batch.drop_column("persons")
