"""Purge notices for senders, and cell presence (online / last seen).

Revision ID: 0003_sender_notices_presence
Revises: 0002_delivered_tombstones
Create Date: 2026-12-01

* ``expiry_notices.error_code``: a notice owed to a sender is either an expiry (NULL, sent as
  EXPIRED) or an ERROR with this code and the message id as ref, e.g. ``revoked`` for an
  envelope deleted with its revoked recipient's queue (SPEC.md M-REL-20). Rows that exist
  are expiries: NULL is right for them.
* ``cells.linked_at_ms`` / ``cells.last_seen_at_ms``: when the cell's live link started (NULL
  while it has none) and when a relay node last saw it linked, for ``liaison admin cell
  list/show``. Both start NULL ("never seen since this version").
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_sender_notices_presence"
down_revision: str | None = "0002_delivered_tombstones"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("expiry_notices", sa.Column("error_code", sa.String(length=64), nullable=True))
    op.add_column("cells", sa.Column("linked_at_ms", sa.BigInteger(), nullable=True))
    op.add_column("cells", sa.Column("last_seen_at_ms", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    # SQLite before 3.35 cannot drop a column in place: batch mode copies the table.
    with op.batch_alter_table("cells") as batch:
        batch.drop_column("last_seen_at_ms")
        batch.drop_column("linked_at_ms")
    with op.batch_alter_table("expiry_notices") as batch:
        batch.drop_column("error_code")
