"""resources keep the data category found at ingest; the database chains each audit entry onto the head

Revision ID: 0006
Revises: 0004
Create Date: 2026-11-22

Classifying every resource on every read cost more than deciding on it. Ingest now stores the
category with the key of what it depended on (the rules, the framework's sensitive codes and source
organisations' kinds); a read uses it only when that key is the current framework's and classifies
afresh otherwise, so a changed framework never reads a stale category. Rows stored before this
revision have no key and are classified on read until `sharedcare framework reclassify` runs.

Appending to the audit log took three statements (lock the head, insert, advance the head). A trigger
now advances the head as part of the insert, and refuses an entry that does not follow the head (the
next sequence number, the head's hash as its previous hash), so the chain is kept linear by the database
itself as well as by the appender.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

def upgrade() -> None:
    with op.batch_alter_table("resources") as batch:
        batch.add_column(sa.Column("category", sa.String(length=30), nullable=True))
        batch.add_column(sa.Column("category_key", sa.String(length=24), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        op.execute("""
            CREATE FUNCTION audit_events_chain() RETURNS trigger AS $$
            BEGIN
                UPDATE audit_head SET seq = NEW.seq, hash = NEW.hash
                WHERE id = 1 AND seq = NEW.seq - 1 AND hash = NEW.prev_hash;
                IF NOT FOUND THEN RAISE EXCEPTION 'an audit entry must follow the head of the chain'; END IF;
                RETURN NEW;
            END;
            $$ LANGUAGE plpgsql""")
        op.execute("""
            CREATE TRIGGER audit_events_chain BEFORE INSERT ON audit_events
            FOR EACH ROW EXECUTE FUNCTION audit_events_chain()""")
    else:
        op.execute("""
            CREATE TRIGGER audit_events_chain BEFORE INSERT ON audit_events
            WHEN NOT EXISTS (SELECT 1 FROM audit_head
                             WHERE id = 1 AND seq = NEW.seq - 1 AND hash = NEW.prev_hash)
            BEGIN SELECT RAISE(ABORT, 'an audit entry must follow the head of the chain'); END""")
        op.execute("""
            CREATE TRIGGER audit_events_advance_head AFTER INSERT ON audit_events
            BEGIN UPDATE audit_head SET seq = NEW.seq, hash = NEW.hash WHERE id = 1; END""")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_events_chain ON audit_events")
        op.execute("DROP FUNCTION audit_events_chain()")
    else:
        op.execute("DROP TRIGGER audit_events_advance_head")
        op.execute("DROP TRIGGER audit_events_chain")
    with op.batch_alter_table("resources") as batch:
        batch.drop_column("category_key")
        batch.drop_column("category")
