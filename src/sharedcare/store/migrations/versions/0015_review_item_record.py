"""review items about a source record name the record, and follow it through merges

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-05

A 'new-source-record' item kept the person id it was queued under, so after an MPI merge it no longer
held back the record it was about (the record's person had changed). Such items now name the patient
record; an item queued about what a feed sent (a competing GP registration) has no audit event, so
`audit_seq` may be empty. Items queued before this revision are given the writer's record of the person
(the writing organisation, from the write's audit event); one whose person no longer holds such a
record (merged since) keeps only its person, as before.
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("review_items") as batch:
        batch.add_column(sa.Column("patient_record_id", sa.Integer(), nullable=True))
        batch.create_foreign_key("fk_review_items_patient_record", "patient_records", ["patient_record_id"], ["id"])
        batch.create_index("ix_review_items_patient_record_id", ["patient_record_id"])
        batch.alter_column("audit_seq", existing_type=sa.Integer(), nullable=True)
    op.execute("""
        UPDATE review_items SET patient_record_id =
            (SELECT min(patient_records.id) FROM patient_records JOIN audit_events
                ON audit_events.seq = review_items.audit_seq
             WHERE patient_records.person_id = review_items.person_id
               AND patient_records.source_org = audit_events.organisation)
        WHERE kind = 'new-source-record'""")


def downgrade() -> None:
    op.execute("DELETE FROM review_items WHERE audit_seq IS NULL")
    with op.batch_alter_table("review_items") as batch:
        batch.alter_column("audit_seq", existing_type=sa.Integer(), nullable=False)
        batch.drop_index("ix_review_items_patient_record_id")
        batch.drop_constraint("fk_review_items_patient_record", type_="foreignkey")
        batch.drop_column("patient_record_id")
