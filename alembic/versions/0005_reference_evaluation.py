"""Local evaluation: incoming reference SEGs judged against the node's results, with Dice and volumes
per segment; an index on instance.sop_class_uid (the evaluation looks up incoming SEGs and SRs)

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "reference_object",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("source_series_uid", sa.String(length=64), nullable=False),
        sa.Column("calling_ae", sa.String(length=16), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("model_id", sa.String(length=64), nullable=True),
        sa.Column("model_version", sa.String(length=32), nullable=True),
        sa.Column("agrees", sa.Boolean(), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reference_object")),
        sa.UniqueConstraint("sop_instance_uid", name=op.f("uq_reference_object_sop_instance_uid")),
    )
    op.create_index(op.f("ix_reference_object_job_id"), "reference_object", ["job_id"])
    op.create_index(op.f("ix_reference_object_model_id"), "reference_object", ["model_id"])
    op.create_index(op.f("ix_reference_object_at"), "reference_object", ["at"])
    op.create_table(
        "reference_segment",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("reference_id", sa.Integer(), nullable=False),
        sa.Column("segment_number", sa.Integer(), nullable=False),
        sa.Column("label", sa.String(length=64), nullable=False),
        sa.Column("dice", sa.Float(), nullable=False),
        sa.Column("node_ml", sa.Float(), nullable=False),
        sa.Column("reference_ml", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["reference_id"], ["reference_object.id"],
                                name=op.f("fk_reference_segment_reference_id_reference_object")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reference_segment")),
    )
    op.create_index(op.f("ix_reference_segment_reference_id"), "reference_segment", ["reference_id"])
    op.create_index(op.f("ix_instance_sop_class_uid"), "instance", ["sop_class_uid"])


def downgrade() -> None:
    op.drop_index(op.f("ix_instance_sop_class_uid"), table_name="instance")
    op.drop_index(op.f("ix_reference_segment_reference_id"), table_name="reference_segment")
    op.drop_table("reference_segment")
    op.drop_index(op.f("ix_reference_object_at"), table_name="reference_object")
    op.drop_index(op.f("ix_reference_object_model_id"), table_name="reference_object")
    op.drop_index(op.f("ix_reference_object_job_id"), table_name="reference_object")
    op.drop_table("reference_object")
