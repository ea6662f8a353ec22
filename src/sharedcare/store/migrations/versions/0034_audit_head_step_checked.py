"""the audit head's guard checks the entry a step names, not who makes the step (PostgreSQL)

Revision ID: 0034
Revises: 0033
Create Date: 2026-12-07

0020's guard let the head move one on whenever the update ran inside a trigger (`pg_trigger_depth() > 1`),
meaning 0006's chain function. But the service's role may CREATE TEMP TABLE, and a trigger of its own on one
runs at that depth too: it stepped the head with no entry written, and `audit verify` then named an entry
missing, as if the tables' owner had deleted it. The guard now lets the head step only to an entry that is
there and follows it (its seq the next, its prev_hash the head's hash, newest_mark as the step sets it): one
lookup by primary key, SQLite's guard since 0020. For the entry to be there, the chain trigger runs AFTER INSERT
(as SQLite's step does), still refusing an entry that does not follow the head; a repeated seq is now refused
first as a duplicate key. A check of the head BEFORE INSERT as well, for that message, cost an append some 90 us
of the database's CPU while the head's old row versions could not yet be pruned (a long transaction open):
each read of the head walks them. The guard's look-up and the AFTER trigger cost about 14 us.

The functions also name their tables with the schema they were made in: a temp table named `audit_head`
comes first on the search path, and the chain function stepped it instead of the head, taking entries
anywhere in the log. SQLite had neither hole (its guard checks the entry; its triggers' tables are in
their own schema). Downgraded, the triggers and functions are 0031's again.
"""

from alembic import op

revision = "0034"
down_revision = "0033"
branch_labels = None
depends_on = None

HEAD_MESSAGE = "audit_head moves only by appending an audit entry"
MARKER = "audit:chain:keyed"  # models.CHAIN_KEYED, as written here


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    schema = op.get_bind().dialect.identifier_preparer.quote_schema(
        op.get_bind().exec_driver_sql("SELECT current_schema()").scalar_one())
    _chain_function(f"{schema}.audit_head")
    _chain_trigger("AFTER")
    _guard_function(f"""(NEW.seq = OLD.seq AND NEW.hash = OLD.hash
                                         AND NEW.newest_mark IS NOT DISTINCT FROM OLD.newest_mark)
                                        OR (NEW.seq = OLD.seq + 1 AND EXISTS (
                                            SELECT 1 FROM {schema}.audit_events
                                            WHERE seq = NEW.seq AND hash = NEW.hash AND prev_hash = OLD.hash
                                            AND CASE WHEN action = '{MARKER}' THEN NEW.newest_mark = NEW.seq
                                                ELSE NEW.newest_mark IS NOT DISTINCT FROM OLD.newest_mark END))""")  # noqa: S608


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    _chain_function("audit_head")
    _chain_trigger("BEFORE")
    _guard_function("""(NEW.seq = OLD.seq AND NEW.hash = OLD.hash
                                         AND NEW.newest_mark IS NOT DISTINCT FROM OLD.newest_mark)
                                        OR (NEW.seq = OLD.seq + 1 AND pg_trigger_depth() > 1)""")


def _chain_function(head: str) -> None:
    """0031's step of the head, on `head`."""
    op.execute(f"""
        CREATE OR REPLACE FUNCTION audit_events_chain() RETURNS trigger AS $$
        BEGIN
            UPDATE {head} SET seq = NEW.seq, hash = NEW.hash,
                newest_mark = CASE WHEN NEW.action = '{MARKER}' THEN NEW.seq ELSE newest_mark END
            WHERE id = 1 AND seq = NEW.seq - 1 AND hash = NEW.prev_hash;
            IF NOT FOUND THEN RAISE EXCEPTION 'an audit entry must follow the head of the chain'; END IF;
            RETURN NEW;
        END;
        $$ LANGUAGE plpgsql""")  # noqa: S608 (constants, no input)


def _chain_trigger(when: str) -> None:
    op.execute("DROP TRIGGER audit_events_chain ON audit_events")
    op.execute(f"""
        CREATE TRIGGER audit_events_chain {when} INSERT ON audit_events
        FOR EACH ROW EXECUTE FUNCTION audit_events_chain()""")


def _guard_function(allowed: str) -> None:
    """0020's guard: an update of the head goes through only when `allowed` holds."""
    op.execute(f"""
        CREATE OR REPLACE FUNCTION audit_head_guard() RETURNS trigger AS $$
        BEGIN
            IF TG_OP = 'UPDATE' THEN  -- NEW and OLD exist only here
                IF NEW.id = OLD.id AND ({allowed}) THEN
                    RETURN NEW;
                END IF;
            END IF;
            RAISE EXCEPTION '{HEAD_MESSAGE}';
        END;
        $$ LANGUAGE plpgsql""")  # noqa: S608 (constants, no input)
