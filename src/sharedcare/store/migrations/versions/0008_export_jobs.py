"""Bulk Data export jobs (secondary use)

Revision ID: 0008
Revises: 0004
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    op.create_table(
        "export_jobs",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("username", sa.String(length=100), nullable=False),
        sa.Column("organisation", sa.String(length=16), nullable=False),
        sa.Column("purpose", sa.String(length=40), nullable=False),
        sa.Column("kind", sa.String(length=10), nullable=False),
        sa.Column("group_id", sa.String(length=16), nullable=True),
        sa.Column("types", JSON_DOC, nullable=True),
        sa.Column("since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("request_url", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=12), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("people_total", sa.Integer(), nullable=False),
        sa.Column("people_done", sa.Integer(), nullable=False),
        sa.Column("output", JSON_DOC, nullable=False),
        sa.Column("summary", JSON_DOC, nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("out_dir", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_export_jobs_user", "export_jobs", ["username"])


def downgrade() -> None:
    op.drop_index("ix_export_jobs_user", table_name="export_jobs")
    op.drop_table("export_jobs")
