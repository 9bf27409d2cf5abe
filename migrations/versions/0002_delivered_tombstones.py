"""Tombstones of acknowledged envelopes, so duplicate sends stay deduplicated until expiry.

Revision ID: 0002_delivered_tombstones
Revises: 0001_initial_schema
Create Date: 2026-11-25

SPEC.md M-REL-4: the relay remembers each acknowledged ``(sender, message_id)`` with its
relay sequence number until the envelope's expiry. Before this, the unique constraint on
``envelopes`` lasted only until the ACK deleted the row, so a late resend was stored and
delivered a second time.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_delivered_tombstones"
down_revision: str | None = "0001_initial_schema"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "delivered",
        sa.Column("sender", sa.LargeBinary(length=16), nullable=False),
        sa.Column("message_id", sa.LargeBinary(length=16), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("sender", "message_id", name=op.f("pk_delivered")),
    )
    op.create_index(op.f("ix_delivered_expires_at"), "delivered", ["expires_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_delivered_expires_at"), table_name="delivered")
    op.drop_table("delivered")
