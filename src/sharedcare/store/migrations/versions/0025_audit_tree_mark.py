"""where the server's checkpoint tree has checked the audit log to, so that a restart need not check it again

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-07

The service's checkpoint tree checks each entry it adds to be the service's (governance/checkpoints.py), at
about 70-90 us of CPU an entry; kept only in memory, it was checked afresh after every restart (some 80 s at
a million entries, while the first witness waited). One row now says how far it got: the entry, its chain
hash and the tree head over the entries up to it, with an HMAC under a key derived from the audit chain's key.
The application's own role may write the row (the service writes it); without the key no one can write one
that is trusted, and a row that is not trusted only costs the full check it saves. Downgraded, the table goes.
"""

import sqlalchemy as sa
from alembic import op

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_tree_mark",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("root", sa.String(64), nullable=False),
        sa.Column("mac", sa.String(64), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("audit_tree_mark")
