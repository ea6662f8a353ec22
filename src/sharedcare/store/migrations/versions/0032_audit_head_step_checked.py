"""the audit head's guard checks the entry a step names, not who makes the step (PostgreSQL)

Revision ID: 0032
Revises: 0031
Create Date: 2026-12-08

0020's guard let the head move one on whenever the update ran inside a trigger (`pg_trigger_depth() > 1`),
meaning 0006's chain function. But the service's role may CREATE TEMP TABLE, and a trigger of its own on one
runs at that depth too: it stepped the head with no entry written, and `audit verify` then named an entry
missing, as if the tables' owner had deleted it. The guard now lets the head step only to an entry that is
there and follows it (its seq the next, its prev_hash the head's hash, newest_mark as the step sets it): one
lookup by primary key, SQLite's guard since 0020. For the entry to be there, the step moves to an AFTER INSERT
trigger (SQLite's `audit_events_advance_head`); the BEFORE INSERT trigger keeps refusing an entry that does not
follow the head, before a repeated seq is refused as a duplicate key.

The functions also name their tables with the schema they were made in: a temp table named `audit_head`
comes first on the search path, and the chain function stepped it instead of the head, taking entries
anywhere in the log. SQLite had neither hole (its guard checks the entry; its triggers' tables are in
their own schema). Downgraded, the triggers and functions are 0031's again.
"""

from alembic import op

revision = "0032"
down_revision = "0031"
branch_labels = None
depends_on = None

HEAD_MESSAGE = "audit_head moves only by appending an audit entry"
FOLLOW_MESSAGE = "an audit entry must follow the head of the chain"
MARKER = "audit:chain:keyed"  # models.CHAIN_KEYED, as written here


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    schema = op.get_bind().dialect.identifier_preparer.quote_schema(
        op.get_bind().exec_driver_sql("SELECT current_schema()").scalar_one())
    head, events = f"{schema}.audit_head", f"{schema}.audit_events"
    op.execute(f"""
        CREATE OR REPLACE FUNCTION audit_events_chain() RETURNS trigger AS $$
        BEGIN
            IF TG_WHEN = 'BEFORE' THEN  -- an entry that does not follow the head is refused
                PERFORM FROM {head} WHERE id = 1 AND seq = NEW.seq - 1 AND hash = NEW.prev_hash;
                IF NOT FOUND THEN RAISE EXCEPTION '{FOLLOW_MESSAGE}'; END IF;
                RETURN NEW;
            END IF;
            -- AFTER: the entry is in the log, where the guard finds it
            UPDATE {head} SET seq = NEW.seq, hash = NEW.hash,
                newest_mark = CASE WHEN NEW.action = '{MARKER}' THEN NEW.seq ELSE newest_mark END
            WHERE id = 1 AND seq = NEW.seq - 1 AND hash = NEW.prev_hash;
            IF NOT FOUND THEN RAISE EXCEPTION '{FOLLOW_MESSAGE}'; END IF;
            RETURN NULL;
        END;
        $$ LANGUAGE plpgsql""")  # noqa: S608 (constants, no input)
    op.execute("""
        CREATE TRIGGER audit_events_advance_head AFTER INSERT ON audit_events
        FOR EACH ROW EXECUTE FUNCTION audit_events_chain()""")
    op.execute(f"""
        CREATE OR REPLACE FUNCTION audit_head_guard() RETURNS trigger AS $$
        BEGIN
            IF TG_OP = 'UPDATE' THEN  -- NEW and OLD exist only here
                IF NEW.id = OLD.id AND NEW.seq = OLD.seq AND NEW.hash = OLD.hash
                   AND NEW.newest_mark IS NOT DISTINCT FROM OLD.newest_mark THEN
                    RETURN NEW;  -- the append's lock
                END IF;
                IF NEW.id = OLD.id AND NEW.seq = OLD.seq + 1 AND EXISTS (
                    SELECT 1 FROM {events} WHERE seq = NEW.seq AND hash = NEW.hash AND prev_hash = OLD.hash
                    AND CASE WHEN action = '{MARKER}' THEN NEW.newest_mark = NEW.seq
                             ELSE NEW.newest_mark IS NOT DISTINCT FROM OLD.newest_mark END) THEN
                    RETURN NEW;  -- the chain's step, to the entry just appended
                END IF;
            END IF;
            RAISE EXCEPTION '{HEAD_MESSAGE}';
        END;
        $$ LANGUAGE plpgsql""")  # noqa: S608 (constants, no input)


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP TRIGGER audit_events_advance_head ON audit_events")
    op.execute(f"""
        CREATE OR REPLACE FUNCTION audit_events_chain() RETURNS trigger AS $$
        BEGIN
            UPDATE audit_head SET seq = NEW.seq, hash = NEW.hash,
                newest_mark = CASE WHEN NEW.action = '{MARKER}' THEN NEW.seq ELSE newest_mark END
            WHERE id = 1 AND seq = NEW.seq - 1 AND hash = NEW.prev_hash;
            IF NOT FOUND THEN RAISE EXCEPTION '{FOLLOW_MESSAGE}'; END IF;
            RETURN NEW;
        END;
        $$ LANGUAGE plpgsql""")  # noqa: S608 (constants, no input)
    op.execute(f"""
        CREATE OR REPLACE FUNCTION audit_head_guard() RETURNS trigger AS $$
        BEGIN
            IF TG_OP = 'UPDATE' THEN  -- NEW and OLD exist only here
                IF NEW.id = OLD.id AND ((NEW.seq = OLD.seq AND NEW.hash = OLD.hash
                                         AND NEW.newest_mark IS NOT DISTINCT FROM OLD.newest_mark)
                                        OR (NEW.seq = OLD.seq + 1 AND pg_trigger_depth() > 1)) THEN
                    RETURN NEW;
                END IF;
            END IF;
            RAISE EXCEPTION '{HEAD_MESSAGE}';
        END;
        $$ LANGUAGE plpgsql""")
