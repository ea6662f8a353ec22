"""the audit chain is keyed from here on: an entry marks where, and an index finds it

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-07

Until now each entry's hash was a plain SHA-256 of its content and the previous hash. The application's own
database role may INSERT into `audit_events`, and the triggers accept any entry that follows the head, so that
role could append a forged entry (a false access on a patient's record) that `audit verify` accepted and the
next signed checkpoint vouched for (audit review of 2026-12-07, HAZ-04). From this revision each entry's hash is
an HMAC under a key made from the deployment's secret, which the database does not hold
(`Settings.audit_chain_key`, governance/audit.py).

A migration has no key, so it appends one unkeyed entry, `audit:chain:keyed`, after everything written so far
(on a new store it is entry 1): `audit verify` checks the entries up to the first such entry as before and every
later one under the key. An entry of that kind appended later moves nothing, since the first stays first and no
entry can be deleted; a partial index finds it without reading the log. Downgraded, the index goes and the
entry stays (it cannot be deleted); the older code writes plain hashes after it, which this code refuses, as it
should: they are what a forger would write.

Upgraded again after such a downgrade, the log already holds its marker, and the first one is the one that counts
(`governance.audit.chain_key`): a second, unkeyed, would come after entries keyed under the deployment's key and be
reported by `audit verify` as forged, for ever (the log is append-only). So the marker is appended only when the
log holds none yet.
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.orm import Session

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None

INDEX = "ix_audit_events_chain_keyed"


def upgrade() -> None:
    from sharedcare.governance.audit import AuditAction, AuditRecord, append_after
    from sharedcare.store.database import AUDIT_KEY

    op.create_index(INDEX, "audit_events", ["seq"],
                    sqlite_where=sa.text(f"action = '{AuditAction.CHAIN_KEYED.value}'"),
                    postgresql_where=sa.text(f"action = '{AuditAction.CHAIN_KEYED.value}'"))
    with Session(bind=op.get_bind(), info={AUDIT_KEY: None}) as session:  # no key: a plain SHA-256, as before
        marked = session.execute(sa.text("SELECT 1 FROM audit_events WHERE action = :action LIMIT 1"),
                                 {"action": AuditAction.CHAIN_KEYED.value}).first()
        if marked is not None:  # upgraded again after a downgrade: the first marker stands
            return
        # the head locked and read as this revision's schema has it (`record_audit` reads 0031's column too)
        seq, prev_hash = session.execute(sa.text("UPDATE audit_head SET seq = seq WHERE id = 1 "
                                                 "RETURNING seq, hash")).one()
        append_after(session, AuditRecord(AuditAction.CHAIN_KEYED, "permit", username=None, detail={
            "migration": revision, "note": "every entry after this one is keyed with the deployment's audit key"}),
            seq, prev_hash)


def downgrade() -> None:
    op.drop_index(INDEX, "audit_events")
