"""patient records: the surname as a patient search compares it, indexed with the date of birth

Revision ID: 0033
Revises: 0032
Create Date: 2026-12-07

The patient search (portal Find a patient, FHIR Patient search) compared `lower(family)` with the name typed
lower-cased, so "O’Brien" typed on a phone, "OBrien", "Smith Jones" for SMITH-JONES or a double space found
no one, nor on SQLite did any name outside ASCII spelled exactly ("Özdemir": its lower() folds ASCII only).
Each record now stores `family_key` (`compare.search_key`: the MPI's folding of a name, then without hyphens
and spaces), indexed with `birth_date` in place of the (family, birth_date) index, which the lower-cased
comparison could not use. Existing records are given their key here, from their stored `family`, by the
same function ingest uses, in pages of 1,000. Downgraded, the column and its index go and the old index
comes back.
"""

import sqlalchemy as sa
from alembic import op

revision = "0033"
down_revision = "0032"
branch_labels = None
depends_on = None

PAGE = 1000


# Added and dropped in place (SQLite's ALTER TABLE ADD / DROP COLUMN), not by a batch's copy of the table: other
# tables' foreign keys name patient_records (as 0030).
def upgrade() -> None:
    from sharedcare.identity.compare import search_key

    op.add_column("patient_records", sa.Column("family_key", sa.String(200), nullable=True))
    # The table as this revision knows it, not the current model's.
    table = sa.table("patient_records", sa.column("id", sa.Integer), sa.column("family", sa.String),
                     sa.column("family_key", sa.String))
    named = sa.select(table.c.id, table.c.family).where(
        table.c.family.is_not(None), table.c.id > sa.bindparam("after")).order_by(table.c.id).limit(PAGE)
    keyed = sa.update(table).where(table.c.id == sa.bindparam("record")).values(family_key=sa.bindparam("key"))
    connection = op.get_bind()
    after = 0
    while rows := connection.execute(named, {"after": after}).all():
        after = rows[-1].id
        keys = [{"record": row.id, "key": key} for row in rows if (key := search_key(row.family)) is not None]
        if keys:
            connection.execute(keyed, keys)
    op.drop_index("ix_patient_records_name_dob", table_name="patient_records")
    op.create_index("ix_patient_records_family_key_dob", "patient_records", ["family_key", "birth_date"])


def downgrade() -> None:
    op.drop_index("ix_patient_records_family_key_dob", table_name="patient_records")
    op.create_index("ix_patient_records_name_dob", "patient_records", ["family", "birth_date"])
    op.drop_column("patient_records", "family_key")
