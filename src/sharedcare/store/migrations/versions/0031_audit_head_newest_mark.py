"""the audit head keeps the newest epoch marker's position, so that an append reads it with the head

Revision ID: 0031
Revises: 0030
Create Date: 2026-12-07

An append must notice an epoch another process began (`audit rekey`, governance/audit.py `_check_epoch`), so
it reads the newest `audit:chain:keyed` entry's position. It did so in the statement that locks the head (a
subquery in its RETURNING), but on PostgreSQL that subquery runs in the snapshot taken before the statement
waited for the head's row lock, and an append that waited on a rekey missed the new marker; a second
statement read it again, a third of PostgreSQL's append rate. The head now holds the position
(`audit_head.newest_mark`), set by the chain's step (0006's trigger) when the entry it appends is a marker,
in the same transaction: the locking UPDATE's RETURNING gives the head as committed after its wait (the row is
re-read once the lock is taken), marker included. Existing stores take it from the newest marker.

The head's guard (0020) now refuses a change of the column too, except by that step: set back, an append
running with a retired key would not see the rekey and would write entries `audit verify` names forged.
Downgraded, the triggers and guard are 0006's and 0020's again and the column goes.
"""

import sqlalchemy as sa
from alembic import op

revision = "0031"
down_revision = "0030"
branch_labels = None
depends_on = None

HEAD_MESSAGE = "audit_head moves only by appending an audit entry"
MARKER = "audit:chain:keyed"  # models.CHAIN_KEYED, as written here
STEP_MARK = f", newest_mark = CASE WHEN NEW.action = '{MARKER}' THEN NEW.seq ELSE newest_mark END"


def upgrade() -> None:
    op.add_column("audit_head", sa.Column("newest_mark", sa.Integer(), nullable=True))
    # before the guard knows the column (0020's lets an update that keeps seq and hash through)
    op.execute(sa.text("UPDATE audit_head SET newest_mark = (SELECT max(seq) FROM audit_events WHERE action = :marker)")
               .bindparams(marker=MARKER))
    if op.get_bind().dialect.name == "postgresql":
        _chain_function(STEP_MARK)
        # The step (pg_trigger_depth() > 1) is the chain function's alone; an update of a client's own keeps all.
        _guard_function("NEW.seq = OLD.seq AND NEW.hash = OLD.hash AND NEW.newest_mark IS NOT DISTINCT FROM "
                        "OLD.newest_mark")
    else:
        op.execute("DROP TRIGGER audit_events_advance_head")
        _advance_trigger(STEP_MARK)
        op.execute("DROP TRIGGER audit_head_guard")
        _sqlite_guard("NEW.newest_mark IS OLD.newest_mark",
                      f"AND CASE WHEN action = '{MARKER}' THEN NEW.newest_mark = NEW.seq "
                      "ELSE NEW.newest_mark IS OLD.newest_mark END")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _chain_function("")
        _guard_function("NEW.seq = OLD.seq AND NEW.hash = OLD.hash")
    else:
        op.execute("DROP TRIGGER audit_events_advance_head")
        _advance_trigger("")
        op.execute("DROP TRIGGER audit_head_guard")
        _sqlite_guard("1", "")
    op.drop_column("audit_head", "newest_mark")  # SQLite's ALTER TABLE DROP COLUMN: its triggers stay


def _chain_function(also: str) -> None:
    """0006's step of the head, setting `also` with it."""
    op.execute(f"""
        CREATE OR REPLACE FUNCTION audit_events_chain() RETURNS trigger AS $$
        BEGIN
            UPDATE audit_head SET seq = NEW.seq, hash = NEW.hash{also}
            WHERE id = 1 AND seq = NEW.seq - 1 AND hash = NEW.prev_hash;
            IF NOT FOUND THEN RAISE EXCEPTION 'an audit entry must follow the head of the chain'; END IF;
            RETURN NEW;
        END;
        $$ LANGUAGE plpgsql""")  # noqa: S608 (constants, no input)


def _guard_function(unchanged: str) -> None:
    """0020's guard, an update of a client's own allowed only when `unchanged` holds (the append's lock)."""
    op.execute(f"""
        CREATE OR REPLACE FUNCTION audit_head_guard() RETURNS trigger AS $$
        BEGIN
            IF TG_OP = 'UPDATE' THEN  -- NEW and OLD exist only here
                IF NEW.id = OLD.id AND (({unchanged})
                                        OR (NEW.seq = OLD.seq + 1 AND pg_trigger_depth() > 1)) THEN
                    RETURN NEW;
                END IF;
            END IF;
            RAISE EXCEPTION '{HEAD_MESSAGE}';
        END;
        $$ LANGUAGE plpgsql""")


def _advance_trigger(also: str) -> None:
    op.execute(f"""
        CREATE TRIGGER audit_events_advance_head AFTER INSERT ON audit_events
        BEGIN UPDATE audit_head SET seq = NEW.seq, hash = NEW.hash{also} WHERE id = 1; END""")  # noqa: S608 (constants)


def _sqlite_guard(unchanged: str, stepped: str) -> None:
    """0020's guard on SQLite: the lock keeps seq, hash and `unchanged`; the step is to the entry just
    written, and `stepped` of it."""
    op.execute(f"""
        CREATE TRIGGER audit_head_guard BEFORE UPDATE ON audit_head
        WHEN NOT (NEW.id = OLD.id AND (
            (NEW.seq = OLD.seq AND NEW.hash = OLD.hash AND {unchanged})
            OR (NEW.seq = OLD.seq + 1 AND EXISTS (
                SELECT 1 FROM audit_events
                WHERE seq = NEW.seq AND hash = NEW.hash AND prev_hash = OLD.hash {stepped}))))
        BEGIN SELECT RAISE(ABORT, '{HEAD_MESSAGE}'); END""")  # noqa: S608 (a constant, no input)
