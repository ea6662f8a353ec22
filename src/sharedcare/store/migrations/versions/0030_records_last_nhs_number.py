"""patient records: the NHS number a record carried last, while its source sends none

Revision ID: 0030
Revises: 0029
Create Date: 2026-12-07

A patient's choices are held against an NHS number. When a source corrects the number on its record, the
choices held against the old one are carried to the new one (`consent.follow_number`); when it sends the
record with no usable number at all, there is nothing to carry them to, so the record keeps the number it
carried last (`last_nhs_number`, indexed: the choices of the person are read through it) and the choices
go on applying. Records before this revision have none. Downgraded, the column and its index go.
"""

import sqlalchemy as sa
from alembic import op

revision = "0030"
down_revision = "0029"
branch_labels = None
depends_on = None


# Added and dropped in place (SQLite's ALTER TABLE ADD / DROP COLUMN), not by a batch's copy of the table: other
# tables' foreign keys name patient_records, so dropping the old table for a copy fails with them enforced.
# (DROP COLUMN: SQLite 3.35 or later.)
def upgrade() -> None:
    op.add_column("patient_records", sa.Column("last_nhs_number", sa.String(10), nullable=True))
    op.create_index("ix_patient_records_last_nhs_number", "patient_records", ["last_nhs_number"])


def downgrade() -> None:
    op.drop_index("ix_patient_records_last_nhs_number", table_name="patient_records")
    op.drop_column("patient_records", "last_nhs_number")
