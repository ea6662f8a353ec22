"""link moves indexed by the person a record left and the person it went to

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06

A citizen's "who looked at my record" and the IG officer's search by patient ask whether any record ever
left the person (`access_log.holdings`), and the IG review queue asks, for each access on its page, which
records the person held then (`access_log.holders_now`: moves from or to the person). Without these
indexes each of those questions read every link move in the store.
"""

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_link_moves_from_person", "link_moves", ["from_person"])
    op.create_index("ix_link_moves_to_person", "link_moves", ["to_person"])


def downgrade() -> None:
    op.drop_index("ix_link_moves_to_person", table_name="link_moves")
    op.drop_index("ix_link_moves_from_person", table_name="link_moves")
