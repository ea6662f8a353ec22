"""access bases: an index on (person_id, expires_at), so a link event finds a person's active bases

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-07

Every link event that moves records (merge, unmerge, separation, relink, re-match) ends the active
point-of-care bases on the persons it moved records out of or into (`links.end_bases`). Until now nothing
indexed a basis by person and expiry: the event read every active basis of the store and matched them by
person in Python. With this index it looks up the moved persons' bases only. Downgraded, the index goes.
"""

from alembic import op

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_access_bases_person_expires", "access_bases", ["person_id", "expires_at"])


def downgrade() -> None:
    op.drop_index("ix_access_bases_person_expires", table_name="access_bases")
