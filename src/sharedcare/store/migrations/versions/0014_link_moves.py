"""each move of a source record between persons becomes a row of its own, indexed by record

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-05

A merge, unmerge or separation kept its moves as one JSON list on the link event. Whose record a past
audit entry was about (a citizen's "who looked at my record" after a merge) needs a record's moves
without reading every event, so they move to `link_moves`, one row per record moved, in the same order.
"""

import json
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def _moves(value: Any) -> list[dict[str, Any]]:
    """The JSON column as a list, whichever driver decoded it (SQLite returns text)."""
    return json.loads(value) if isinstance(value, str) else list(value or [])


def upgrade() -> None:
    # Read the lists first: on SQLite, batch mode rebuilds link_events, which must not yet be referenced.
    rows = op.get_bind().execute(sa.text("SELECT id, moves FROM link_events ORDER BY id")).all()
    copied = [{"link_event_id": event_id, "patient_record_id": int(move["record"]),
               "from_person": str(move["from"]), "to_person": str(move["to"])}
              for event_id, value in rows for move in _moves(value)]
    with op.batch_alter_table("link_events") as batch:
        batch.drop_column("moves")
    moves = op.create_table(
        "link_moves",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("link_event_id", sa.Integer(), nullable=False),
        sa.Column("patient_record_id", sa.Integer(), nullable=False),
        sa.Column("from_person", sa.String(length=36), nullable=False),
        sa.Column("to_person", sa.String(length=36), nullable=False),
        sa.ForeignKeyConstraint(["link_event_id"], ["link_events.id"]),
        sa.ForeignKeyConstraint(["patient_record_id"], ["patient_records.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_link_moves_record", "link_moves", ["patient_record_id"])
    if copied:
        op.bulk_insert(moves, copied)


def downgrade() -> None:
    bind = op.get_bind()
    by_event: dict[int, list[dict[str, Any]]] = {}
    for event_id, record, before, after in bind.execute(sa.text(
            "SELECT link_event_id, patient_record_id, from_person, to_person FROM link_moves ORDER BY id")):
        by_event.setdefault(event_id, []).append({"record": record, "from": before, "to": after})
    op.drop_index("ix_link_moves_record", table_name="link_moves")
    op.drop_table("link_moves")
    with op.batch_alter_table("link_events") as batch:
        batch.add_column(sa.Column("moves", JSON_DOC, nullable=True))
    events = sa.table("link_events", sa.column("id", sa.Integer()), sa.column("moves", JSON_DOC))
    for (event_id,) in bind.execute(sa.text("SELECT id FROM link_events")).all():
        bind.execute(events.update().where(events.c.id == event_id).values(moves=by_event.get(event_id, [])))
    with op.batch_alter_table("link_events") as batch:
        batch.alter_column("moves", existing_type=JSON_DOC, nullable=False)
