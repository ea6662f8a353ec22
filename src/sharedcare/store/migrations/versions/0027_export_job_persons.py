"""an export job records whose data its files hold: its persons (`export_job_persons`) and source organisations

Revision ID: 0027
Revises: 0026
Create Date: 2026-12-07

A choice made or an agreement stopped after an export's kick-off withdraws it only if its files hold that
person or that organisation's data (`export.jobs._Changes`); before, any person's choice and any organisation's
stop withdrew every export, so that in a large ICS none lived to be downloaded. Jobs finished before this
revision recorded neither (`source_orgs` stays null) and any change still withdraws them. Downgraded, the
table and the column go (the older code withdraws every export at any change).
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0027"
down_revision = "0026"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("export_jobs") as batch:
        batch.add_column(sa.Column("source_orgs", sa.JSON().with_variant(JSONB(), "postgresql"), nullable=True))
    op.create_table(
        "export_job_persons",
        sa.Column("job_id", sa.String(36), primary_key=True),
        sa.Column("person_id", sa.String(36), primary_key=True),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_export_job_persons_person", "export_job_persons", ["person_id"])


def downgrade() -> None:
    op.drop_index("ix_export_job_persons_person", table_name="export_job_persons")
    op.drop_table("export_job_persons")
    with op.batch_alter_table("export_jobs") as batch:
        batch.drop_column("source_orgs")
