"""DICOMweb: which STOW-RS user sent which study (the sender role reads only its own studies' results)

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "study_sender",
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("user", sa.String(length=64), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["study_id"], ["study.id"], name=op.f("fk_study_sender_study_id_study")),
        sa.PrimaryKeyConstraint("study_id", "user", name=op.f("pk_study_sender")),
    )


def downgrade() -> None:
    op.drop_table("study_sender")
