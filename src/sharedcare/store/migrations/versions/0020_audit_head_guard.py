"""the audit log cannot be emptied, nor its head moved, except by appending

Revision ID: 0020
Revises: 0019
Create Date: 2026-12-06

Migration 0002 refuses UPDATE and DELETE of an audit entry, row by row. On PostgreSQL `TRUNCATE` fires
no row trigger, and nothing guarded `audit_head`: the application's own role could empty the log (or keep
a prefix of it and re-insert it), set the head back to match, and `audit verify` found the chain whole
(TRUST AU6, TE2). Now both tables refuse TRUNCATE, and the head refuses DELETE and every UPDATE but two:
the append's lock (an update that changes nothing) and the chain's step, made by the append trigger of
0006, one entry on. SQLite has no TRUNCATE (a DELETE of every row still fires 0002's trigger); there the
head's step is recognised by the entry it names, which 0006's AFTER INSERT trigger has just written.
Dropping a trigger still needs the tables' owner, which the runtime role should not be (README,
"PostgreSQL").
"""

from alembic import op

revision = "0020"
down_revision = "0019"
branch_labels = None
depends_on = None

HEAD_MESSAGE = "audit_head moves only by appending an audit entry"


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("""
            CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
            FOR EACH STATEMENT EXECUTE FUNCTION audit_events_append_only()""")
        # pg_trigger_depth() > 1: the update is made by a trigger (0006's chain trigger, on an insert into
        # audit_events), not by a statement of a client's own.
        op.execute(f"""
            CREATE FUNCTION audit_head_guard() RETURNS trigger AS $$
            BEGIN
                IF TG_OP = 'UPDATE' THEN  -- NEW and OLD exist only here
                    IF NEW.id = OLD.id AND ((NEW.seq = OLD.seq AND NEW.hash = OLD.hash)
                                            OR (NEW.seq = OLD.seq + 1 AND pg_trigger_depth() > 1)) THEN
                        RETURN NEW;
                    END IF;
                END IF;
                RAISE EXCEPTION '{HEAD_MESSAGE}';
            END;
            $$ LANGUAGE plpgsql""")
        op.execute("""
            CREATE TRIGGER audit_head_guard BEFORE UPDATE OR DELETE ON audit_head
            FOR EACH ROW EXECUTE FUNCTION audit_head_guard()""")
        op.execute("""
            CREATE TRIGGER audit_head_no_truncate BEFORE TRUNCATE ON audit_head
            FOR EACH STATEMENT EXECUTE FUNCTION audit_head_guard()""")
    else:
        op.execute(f"""
            CREATE TRIGGER audit_head_guard BEFORE UPDATE ON audit_head
            WHEN NOT (NEW.id = OLD.id AND (
                (NEW.seq = OLD.seq AND NEW.hash = OLD.hash)
                OR (NEW.seq = OLD.seq + 1 AND EXISTS (
                    SELECT 1 FROM audit_events
                    WHERE seq = NEW.seq AND hash = NEW.hash AND prev_hash = OLD.hash))))
            BEGIN SELECT RAISE(ABORT, '{HEAD_MESSAGE}'); END""")  # noqa: S608 (a constant, no input)
        op.execute(f"""
            CREATE TRIGGER audit_head_no_delete BEFORE DELETE ON audit_head
            BEGIN SELECT RAISE(ABORT, '{HEAD_MESSAGE}'); END""")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_head_no_truncate ON audit_head")
        op.execute("DROP TRIGGER audit_head_guard ON audit_head")
        op.execute("DROP FUNCTION audit_head_guard()")
        op.execute("DROP TRIGGER audit_events_no_truncate ON audit_events")
    else:
        op.execute("DROP TRIGGER audit_head_no_delete")
        op.execute("DROP TRIGGER audit_head_guard")
