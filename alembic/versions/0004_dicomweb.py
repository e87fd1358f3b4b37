"""DICOMweb and remote inference: which STOW-RS user sent which study (the sender role reads only its
own studies' results); the edge's de-identification runs and UID map

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

    op.create_table(
        "remote_run",
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("seed", sa.String(length=64), nullable=False),
        sa.Column("deid_study_uid", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["job.id"], name=op.f("fk_remote_run_job_id_job")),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_remote_run")),
    )
    op.create_table(
        "deid_uid",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("original_uid", sa.String(length=64), nullable=False),
        sa.Column("deid_uid", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["job.id"], name=op.f("fk_deid_uid_job_id_job")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_deid_uid")),
        sa.UniqueConstraint("job_id", "original_uid", name="uq_deid_uid_job_original"),
    )
    op.create_index(op.f("ix_deid_uid_job_id"), "deid_uid", ["job_id"])
    op.create_index(op.f("ix_deid_uid_deid_uid"), "deid_uid", ["deid_uid"])


def downgrade() -> None:
    op.drop_index(op.f("ix_deid_uid_deid_uid"), table_name="deid_uid")
    op.drop_index(op.f("ix_deid_uid_job_id"), table_name="deid_uid")
    op.drop_table("deid_uid")
    op.drop_table("remote_run")
    op.drop_table("study_sender")
