"""the node asks the PACS: query peers (counts, priors and how to retrieve them), the counts a query peer
gave for a study and its series, and the prior studies found for a job

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("peer_config") as batch_op:
        batch_op.add_column(sa.Column("query", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column("retrieve", sa.String(length=8), nullable=False, server_default="get"))
    with op.batch_alter_table("study") as batch_op:
        batch_op.add_column(sa.Column("pacs_instances", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("pacs_asked_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("pacs_note", sa.Text(), nullable=False, server_default=""))
    with op.batch_alter_table("series") as batch_op:
        batch_op.add_column(sa.Column("pacs_instances", sa.Integer(), nullable=True))
    op.create_table(
        "prior_study",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("series_uid", sa.String(length=64), nullable=False),
        sa.Column("study_date", sa.String(length=8), nullable=False),
        sa.Column("peer", sa.String(length=16), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("instances", sa.Integer(), nullable=False),
        sa.Column("bytes", sa.Integer(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["job.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("job_id", "series_uid", name="uq_prior_study_job_series"),
    )
    op.create_index("ix_prior_study_job_id", "prior_study", ["job_id"])
    op.create_index("ix_prior_study_study_uid", "prior_study", ["study_uid"])


def downgrade() -> None:
    op.drop_index("ix_prior_study_study_uid", table_name="prior_study")
    op.drop_index("ix_prior_study_job_id", table_name="prior_study")
    op.drop_table("prior_study")
    with op.batch_alter_table("series") as batch_op:
        batch_op.drop_column("pacs_instances")
    with op.batch_alter_table("study") as batch_op:
        batch_op.drop_column("pacs_note")
        batch_op.drop_column("pacs_asked_at")
        batch_op.drop_column("pacs_instances")
    with op.batch_alter_table("peer_config") as batch_op:
        batch_op.drop_column("retrieve")
        batch_op.drop_column("query")
