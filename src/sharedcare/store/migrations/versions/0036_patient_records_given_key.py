"""patient records: the given name as a patient search compares it

Revision ID: 0036
Revises: 0035
Create Date: 2026-12-07

The patient search (portal Find a patient, FHIR Patient search) compared the given name typed with
`lower(given)` from its start, so on SQLite, whose lower() folds ASCII only, "çağla" or "Élodie" typed in
another case than sent found no one, and on both stores "cagla" did not find Çağla, nor "Mary Jane"
Mary-Jane, nor "D’Arcy" typed on a phone D'Arcy. Each record now stores `given_key` (`compare.search_key`,
as `family_key` since 0033: the MPI's folding of a name, then without hyphens and spaces), compared from
its start. Not indexed: the search reaches records by (family_key, birth_date), and the given name narrows
those few rows. Existing records are given their key here, from their stored `given`, by the same function
ingest uses, in pages of 1,000. Downgraded, the column goes.
"""

import sqlalchemy as sa
from alembic import op

revision = "0036"
down_revision = "0035"
branch_labels = None
depends_on = None

PAGE = 1000


# Added and dropped in place (SQLite's ALTER TABLE ADD / DROP COLUMN), not by a batch's copy of the table: other
# tables' foreign keys name patient_records (as 0030, 0033).
def upgrade() -> None:
    from sharedcare.identity.compare import search_key

    op.add_column("patient_records", sa.Column("given_key", sa.String(200), nullable=True))
    # The table as this revision knows it, not the current model's.
    table = sa.table("patient_records", sa.column("id", sa.Integer), sa.column("given", sa.String),
                     sa.column("given_key", sa.String))
    named = sa.select(table.c.id, table.c.given).where(
        table.c.given.is_not(None), table.c.id > sa.bindparam("after")).order_by(table.c.id).limit(PAGE)
    keyed = sa.update(table).where(table.c.id == sa.bindparam("record")).values(given_key=sa.bindparam("key"))
    connection = op.get_bind()
    after = 0
    while rows := connection.execute(named, {"after": after}).all():
        after = rows[-1].id
        keys = [{"record": row.id, "key": key} for row in rows if (key := search_key(row.given)) is not None]
        if keys:
            connection.execute(keyed, keys)


def downgrade() -> None:
    op.drop_column("patient_records", "given_key")
