"""MPI: matching features (other names, address history, phones, email), link evidence, saved models

Revision ID: 0011
Revises: 0004
Create Date: 2026-11-22
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql")


def upgrade() -> None:
    with op.batch_alter_table("patient_records") as batch:
        batch.add_column(sa.Column("other_names", JSON_DOC, nullable=True))
        batch.add_column(sa.Column("postcodes", JSON_DOC, nullable=True))
        batch.add_column(sa.Column("phones", JSON_DOC, nullable=True))
        batch.add_column(sa.Column("email", sa.String(length=200), nullable=True))
        batch.add_column(sa.Column("name_key", sa.String(length=201), nullable=True))
        batch.add_column(sa.Column("match_weight", sa.Float(), nullable=True))
        batch.add_column(sa.Column("match_evidence", JSON_DOC, nullable=True))
        batch.add_column(sa.Column("link_note", sa.Text(), nullable=True))
        batch.create_index("ix_patient_records_birth_date", ["birth_date"])
        batch.create_index("ix_patient_records_postcode", ["postcode"])
        batch.create_index("ix_patient_records_name_key", ["name_key"])
    op.create_table(
        "mpi_models",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("version", sa.String(length=40), nullable=False),
        sa.Column("trained_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("trained_on", sa.Integer(), nullable=False),
        sa.Column("model", JSON_DOC, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("mpi_models")
    with op.batch_alter_table("patient_records") as batch:
        batch.drop_index("ix_patient_records_name_key")
        batch.drop_index("ix_patient_records_postcode")
        batch.drop_index("ix_patient_records_birth_date")
        for column in ("link_note", "match_evidence", "match_weight", "name_key", "email", "phones", "postcodes",
                       "other_names"):
            batch.drop_column(column)
