"""Initial schema: cells, enrollment, prekeys, channels, envelope queues, notices, admin, audit.

Revision ID: 0001_initial_schema
Revises:
Create Date: 2026-11-25

Hand-written from ``liaison.server.schema`` (checked against Alembic's autogenerate output on
SQLite and PostgreSQL, and by ``tests/server/test_migrations.py``, which compares the migrated
database with the metadata). Every constraint and index carries the name the metadata's naming
convention gives it, so later migrations can address them on both databases. Tables are
created parents first and dropped children first.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_initial_schema"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _big_id() -> sa.types.TypeEngine[int]:
    # BIGSERIAL on PostgreSQL; on SQLite it must be exactly INTEGER to alias the rowid.
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _cell_fk(column: str, table: str) -> sa.ForeignKeyConstraint:
    return sa.ForeignKeyConstraint(
        [column], ["cells.id"], name=op.f(f"fk_{table}_{column}_cells"), ondelete="CASCADE"
    )


def upgrade() -> None:
    op.create_table(
        "cells",
        sa.Column("id", sa.LargeBinary(length=16), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("identity_key", sa.LargeBinary(length=32), nullable=True),
        sa.Column("link_key", sa.LargeBinary(length=32), nullable=True),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("enrolled_at_ms", sa.BigInteger(), nullable=True),
        sa.Column("status_changed_at_ms", sa.BigInteger(), nullable=False),
        sa.CheckConstraint(
            "status IN ('pending', 'active', 'suspended', 'revoked')",
            name=op.f("ck_cells_status_known"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_cells")),
        sa.UniqueConstraint("link_key", name=op.f("uq_cells_link_key")),
        sa.UniqueConstraint("name", name=op.f("uq_cells_name")),
    )
    op.create_table(
        "enrollment_codes",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("cell_id", sa.LargeBinary(length=16), nullable=False),
        sa.Column("secret_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("expires_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("used_at_ms", sa.BigInteger(), nullable=True),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        _cell_fk("cell_id", "enrollment_codes"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_enrollment_codes")),
        sa.UniqueConstraint("secret_hash", name=op.f("uq_enrollment_codes_secret_hash")),
    )
    op.create_table(
        "signed_prekeys",
        sa.Column("cell_id", sa.LargeBinary(length=16), nullable=False),
        sa.Column("spk_id", sa.BigInteger(), nullable=False),
        sa.Column("spk_public", sa.LargeBinary(length=32), nullable=False),
        sa.Column("spk_signature", sa.LargeBinary(length=64), nullable=False),
        sa.Column("kem_id", sa.BigInteger(), nullable=False),
        sa.Column("kem_public", sa.LargeBinary(length=1184), nullable=False),
        sa.Column("kem_signature", sa.LargeBinary(length=64), nullable=False),
        sa.Column("updated_at_ms", sa.BigInteger(), nullable=False),
        _cell_fk("cell_id", "signed_prekeys"),
        sa.PrimaryKeyConstraint("cell_id", name=op.f("pk_signed_prekeys")),
    )
    op.create_table(
        "one_time_prekeys",
        sa.Column("cell_id", sa.LargeBinary(length=16), nullable=False),
        sa.Column("prekey_id", sa.BigInteger(), nullable=False),
        sa.Column("public", sa.LargeBinary(length=32), nullable=False),
        _cell_fk("cell_id", "one_time_prekeys"),
        sa.PrimaryKeyConstraint("cell_id", "prekey_id", name=op.f("pk_one_time_prekeys")),
    )
    op.create_table(
        "channels",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("cell_a", sa.LargeBinary(length=16), nullable=False),
        sa.Column("cell_b", sa.LargeBinary(length=16), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.CheckConstraint("cell_a < cell_b", name=op.f("ck_channels_ordered_pair")),
        _cell_fk("cell_a", "channels"),
        _cell_fk("cell_b", "channels"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_channels")),
        sa.UniqueConstraint("cell_a", "cell_b", name=op.f("uq_channels_cell_a_cell_b")),
    )
    op.create_table(
        "envelopes",
        sa.Column("seq", _big_id(), autoincrement=True, nullable=False),
        sa.Column("recipient", sa.LargeBinary(length=16), nullable=False),
        sa.Column("sender", sa.LargeBinary(length=16), nullable=False),
        sa.Column("message_id", sa.LargeBinary(length=16), nullable=False),
        sa.Column("precedence", sa.SmallInteger(), nullable=False),
        sa.Column("expires_at", sa.BigInteger(), nullable=False),
        sa.Column("received_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_envelopes")),
        sa.UniqueConstraint("sender", "message_id", name=op.f("uq_envelopes_sender_message_id")),
        # Never reuse a seq on SQLite (acks and cursors refer to it); see schema.py.
        sqlite_autoincrement=True,
    )
    # Delivery order; ``size`` makes the per-recipient quota count an index-only scan.
    op.create_index(
        op.f("ix_envelopes_recipient_precedence_seq_size"),
        "envelopes",
        ["recipient", "precedence", "seq", "size"],
        unique=False,
    )
    op.create_index(op.f("ix_envelopes_expires_at"), "envelopes", ["expires_at"], unique=False)
    op.create_table(
        "expiry_notices",
        sa.Column("id", _big_id(), autoincrement=True, nullable=False),
        sa.Column("sender", sa.LargeBinary(length=16), nullable=False),
        sa.Column("message_id", sa.LargeBinary(length=16), nullable=False),
        sa.Column("recipient", sa.LargeBinary(length=16), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_expiry_notices")),
    )
    op.create_index(op.f("ix_expiry_notices_sender"), "expiry_notices", ["sender"], unique=False)
    op.create_table(
        "admin_tokens",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("token_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger(), nullable=False),
        sa.Column("revoked_at_ms", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_admin_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_admin_tokens_token_hash")),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", _big_id(), autoincrement=True, nullable=False),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target", sa.String(length=128), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
    )


def downgrade() -> None:
    op.drop_table("audit_log")
    op.drop_table("admin_tokens")
    op.drop_index(op.f("ix_expiry_notices_sender"), table_name="expiry_notices")
    op.drop_table("expiry_notices")
    op.drop_index(op.f("ix_envelopes_expires_at"), table_name="envelopes")
    op.drop_index(op.f("ix_envelopes_recipient_precedence_seq_size"), table_name="envelopes")
    op.drop_table("envelopes")
    op.drop_table("channels")
    op.drop_table("one_time_prekeys")
    op.drop_table("signed_prekeys")
    op.drop_table("enrollment_codes")
    op.drop_table("cells")
