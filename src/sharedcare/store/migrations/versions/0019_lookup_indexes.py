"""link moves indexed by the person a record left and the person it went to; sign-in codes by person

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-06

A citizen's "who looked at my record" and the IG officer's search by patient ask whether any record ever
left the person (`access_log.holdings`), and the IG review queue asks, for each access on its page, which
records the person held then (`access_log.holders_now`: moves from or to the person). A citizen signing in
is refused a code when five were issued to them in the last hour (`one_time_codes.issued_in_the_last_hour`),
counted while the sign-in holds the audit chain's write lock. Without these indexes each of those questions
read every link move, or every sign-in code ever issued, in the store.
"""

from alembic import op

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_link_moves_from_person", "link_moves", ["from_person"])
    op.create_index("ix_link_moves_to_person", "link_moves", ["to_person"])
    op.create_index("ix_sign_in_codes_person", "sign_in_codes", ["person_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_sign_in_codes_person", table_name="sign_in_codes")
    op.drop_index("ix_link_moves_to_person", table_name="link_moves")
    op.drop_index("ix_link_moves_from_person", table_name="link_moves")
