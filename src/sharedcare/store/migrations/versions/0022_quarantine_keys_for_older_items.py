"""held quarantine items received before 0021 are given the key that lets a corrected copy supersede them;
quarantine bodies can be erased after a retention period

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-06

0021 named each item it held by its message's key (`ingest/resent.py`); items held before it have none and
so were never superseded: they waited for an operator even after their source's corrected copy arrived. Here
each held item without a key is given the one its held body names, read by the same code the pipeline uses
(`resent.identity`, so a CSV row by the sender's mapping as configured when this runs; with the timestamp type,
the only current code this revision runs, as a key is what the pipeline of the day computes); an item whose
body names none keeps no key and waits, as before. Items replayed or superseded are left alone.

Only the next message a source sends supersedes such an item: one whose corrected copy was stored before
this ran stays held for an operator to resolve (the stored copy's bytes are not kept to compare).

Cost: every held item without a key is read once, in pages of 500, and its key written with one UPDATE a
page: about 0.14 ms an item. Measured on 10,000 held items (a third each HL7 v2, FHIR Bundle and CSV row;
`benchmarks/quarantine.py`, medians of 3, 2 cores at load average 3.3-3.5): SQLite 1.42 s, PostgreSQL 1.41 s,
25 times reading every held body once (2.8-5.6 s at load 6-7.5); a million held items would take some
minutes, in the one transaction of the upgrade. A store with no such items does one query.

Retention (`ingest/retention.py`, `sharedcare quarantine purge`): `erased_at` and `payload_sha256` say when an
item's body was erased and what it hashed to; the item's other columns stay. Downgraded, the keys stay (0021
reads them as its own) and an erased item's reason says its body was erased, when and its hash (the older code
has no column for it: an empty body unexplained reads as a message lost).
"""

import sqlalchemy as sa
from alembic import op

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None

PAGE = 500


def upgrade() -> None:
    from sharedcare.ingest.messages import RawMessage
    from sharedcare.ingest.resent import identity
    from sharedcare.store.models import UTCDateTime

    # The table as this revision knows it, not the current model's: a later revision's columns do not exist yet.
    table = sa.table("quarantine", sa.column("id", sa.Integer), sa.column("source_org", sa.String),
                     sa.column("format", sa.String), sa.column("filename", sa.Text), sa.column("location", sa.Text),
                     sa.column("payload", sa.LargeBinary), sa.column("received_at", UTCDateTime),
                     sa.column("status", sa.String), sa.column("message_key", sa.Text))
    unkeyed = sa.select(table.c.id, table.c.source_org, table.c.format, table.c.filename, table.c.location,
                        table.c.payload, table.c.received_at).where(
        table.c.status == "held", table.c.message_key.is_(None), table.c.id > sa.bindparam("after")
    ).order_by(table.c.id).limit(PAGE)
    keyed = sa.update(table).where(
        table.c.id == sa.bindparam("item")).values(message_key=sa.bindparam("key"))
    with op.batch_alter_table("quarantine") as batch:
        batch.add_column(sa.Column("erased_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("payload_sha256", sa.String(64), nullable=True))
    connection = op.get_bind()
    after = 0
    while rows := connection.execute(unkeyed, {"after": after}).all():
        after = rows[-1].id
        keys = []
        for row in rows:
            named = identity(RawMessage(row.filename, row.location, row.payload, row.format,
                                        received_at=row.received_at), row.source_org)
            if named is not None:
                keys.append({"item": row.id, "key": named.key})
        if keys:
            connection.execute(keyed, keys)


def downgrade() -> None:
    op.execute("UPDATE quarantine SET reason = reason || ' [body erased ' || CAST(erased_at AS TEXT) || ', sha256 ' "
               "|| payload_sha256 || ']' WHERE erased_at IS NOT NULL")
    with op.batch_alter_table("quarantine") as batch:
        batch.drop_column("payload_sha256")
        batch.drop_column("erased_at")
