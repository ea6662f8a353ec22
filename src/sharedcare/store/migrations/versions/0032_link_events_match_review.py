"""link events: the MPI review item whose reviewer's decision a merge or separate carried out

Revision ID: 0032
Revises: 0031
Create Date: 2026-12-07

A relink keeps an operator's separation itself (`links.separations`), and a reviewer's through its review
item; until now it told the two apart by the separation's reason, "review #n: different people: ...", which
`links.decide` writes, checked against the item's records. An operator who worded a separation so (quoting
the item) had it taken for a reviewer's: if the item was undecided, nothing held it and the relink joined
the pair again. `link_events.match_review_id` now names the item, set by `decide` alone (its merges too).

Existing events are read once, as the code read them until now: a separate whose reason starts "review #n:
different people: " and whose record is item n's, and, likewise, a merge whose reason starts "review #n: same
person: " and which moved one of item n's records; so nothing decided before changes its meaning. Downgraded,
the column goes, and the older code reads the reasons again.
"""

import re

import sqlalchemy as sa
from alembic import op

revision = "0032"
down_revision = "0031"
branch_labels = None
depends_on = None

DECIDED = {"separate": re.compile(r"review #(\d+): different people: "),  # `decide`'s reasons, as written
           "merge": re.compile(r"review #(\d+): same person: ")}


def upgrade() -> None:
    op.add_column("link_events", sa.Column("match_review_id", sa.Integer(), nullable=True))
    bind = op.get_bind()
    events = bind.execute(sa.text("SELECT id, kind, reason FROM link_events WHERE kind IN ('separate', 'merge') "
                                  "AND reason LIKE 'review #%' ORDER BY id")).all()
    for event_id, kind, reason in events:
        found = DECIDED[kind].match(reason)
        if found is None:
            continue
        item_id = int(found.group(1))
        item = bind.execute(sa.text("SELECT record_a, record_b FROM match_reviews WHERE id = :id"),
                            {"id": item_id}).first()
        moved = list(bind.execute(sa.text("SELECT patient_record_id FROM link_moves WHERE link_event_id = :id "
                                          "ORDER BY id"), {"id": event_id}).scalars())
        # it moved one of the item's records (a separate moves one: `links._reviewers` checked it was the item's)
        if item is not None and set(moved) & set(item):
            bind.execute(sa.text("UPDATE link_events SET match_review_id = :item WHERE id = :id"),
                         {"item": item_id, "id": event_id})


def downgrade() -> None:
    op.drop_column("link_events", "match_review_id")
