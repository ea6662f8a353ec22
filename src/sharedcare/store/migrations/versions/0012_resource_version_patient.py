"""each superseded resource version keeps the source patient record it was sent with

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04

A source may send a resource again for another patient (same source id, new subject). History and
vread decided every version against the resource's current patient, so an earlier patient's version
was served to whoever may see the new one. Each version now names its own patient record. Versions
stored before this revision are given the resource's current patient record: the best there is (a
re-attribution before it cannot be told apart afterwards).
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("resource_versions") as batch:
        batch.add_column(sa.Column("patient_record_id", sa.Integer(), nullable=True))
        batch.create_foreign_key("fk_resource_versions_patient_record", "patient_records",
                                 ["patient_record_id"], ["id"])
    op.execute("""
        UPDATE resource_versions SET patient_record_id =
            (SELECT resources.patient_record_id FROM resources WHERE resources.id = resource_versions.resource_id)""")


def downgrade() -> None:
    with op.batch_alter_table("resource_versions") as batch:
        batch.drop_constraint("fk_resource_versions_patient_record", type_="foreignkey")
        batch.drop_column("patient_record_id")
