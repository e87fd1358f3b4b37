"""mutual TLS bound to identity: the client certificate a peer added at run time must present (its
subject CN, its SHA-256 fingerprint)

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("peer_config") as batch_op:
        batch_op.add_column(sa.Column("tls_subject_cn", sa.String(length=64), nullable=True))
        batch_op.add_column(sa.Column("tls_sha256", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("peer_config") as batch_op:
        batch_op.drop_column("tls_sha256")
        batch_op.drop_column("tls_subject_cn")
