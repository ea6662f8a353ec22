"""kept searches: a clinician's patient search kept on the server for its results page

Revision ID: 0037
Revises: 0036
Create Date: 2026-12-07

The portal's search was POSTed (an NHS number, a name and date of birth stay out of URLs and logs) and its
results were the POST's answer, so Back from a record asked to resubmit the form (Chrome's "Confirm Form
Resubmission", ERR_CACHE_MISS). Now the POST keeps the criteria here, bound to the user and the session, and
answers 303 to `GET /search/results/{id}`, which runs the search again through the governance gateway.
Rows are deleted at sign-out and once expired. Downgraded, the table goes (and the results page with the code).
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0037"
down_revision = "0036"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "kept_searches",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("username", sa.String(length=100), nullable=False),
        sa.Column("session_id", sa.String(length=100), nullable=False),
        sa.Column("criteria", sa.JSON().with_variant(JSONB(), "postgresql"), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_kept_searches_session", "kept_searches", ["session_id"])
    op.create_index("ix_kept_searches_expires", "kept_searches", ["expires_at"])


def downgrade() -> None:
    op.drop_index("ix_kept_searches_expires", table_name="kept_searches")
    op.drop_index("ix_kept_searches_session", table_name="kept_searches")
    op.drop_table("kept_searches")
