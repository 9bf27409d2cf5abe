"""The relay's tables, as SQLAlchemy Core metadata (the single source for Alembic migrations).

Nothing here holds message content in clear or any private key: envelopes are opaque
end-to-end ciphertext, enrollment codes and admin tokens are stored as SHA-256 hashes of
high-entropy secrets, and the audit log records who did what to which cell, never key bytes.
Times are integer unix milliseconds (``*_ms``) or seconds (``expires_at``), matching the wire.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
)

__all__ = [
    "admin_tokens",
    "audit_log",
    "cells",
    "channels",
    "delivered",
    "enrollment_codes",
    "envelopes",
    "expiry_notices",
    "metadata",
    "one_time_prekeys",
    "signed_prekeys",
]

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

CELL_STATUSES = ("pending", "active", "suspended", "revoked")

cells = Table(
    "cells",
    metadata,
    Column("id", LargeBinary(16), primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("status", String(16), nullable=False),
    Column("identity_key", LargeBinary(32), nullable=True),
    Column("link_key", LargeBinary(32), nullable=True, unique=True),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("enrolled_at_ms", BigInteger, nullable=True),
    Column("status_changed_at_ms", BigInteger, nullable=False),
    # Presence (admin ``cell list/show``): ``linked_at_ms`` is the start of the cell's live
    # link (NULL while it has none); ``last_seen_at_ms`` is refreshed on link up and down and
    # every ``presence_refresh_seconds`` while linked, so a link left marked by a node that
    # died shows as offline once it is stale (relay.py, Presence).
    Column("linked_at_ms", BigInteger, nullable=True),
    Column("last_seen_at_ms", BigInteger, nullable=True),
    CheckConstraint("status IN ('pending', 'active', 'suspended', 'revoked')", name="status_known"),
)

enrollment_codes = Table(
    "enrollment_codes",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("cell_id", LargeBinary(16), ForeignKey("cells.id", ondelete="CASCADE"), nullable=False),
    Column("secret_hash", LargeBinary(32), nullable=False, unique=True),
    Column("expires_at_ms", BigInteger, nullable=False),
    Column("used_at_ms", BigInteger, nullable=True),
    Column("created_at_ms", BigInteger, nullable=False),
)

signed_prekeys = Table(
    "signed_prekeys",
    metadata,
    Column(
        "cell_id", LargeBinary(16), ForeignKey("cells.id", ondelete="CASCADE"), primary_key=True
    ),
    Column("spk_id", BigInteger, nullable=False),
    Column("spk_public", LargeBinary(32), nullable=False),
    Column("spk_signature", LargeBinary(64), nullable=False),
    Column("kem_id", BigInteger, nullable=False),
    Column("kem_public", LargeBinary(1184), nullable=False),
    Column("kem_signature", LargeBinary(64), nullable=False),
    Column("updated_at_ms", BigInteger, nullable=False),
)

one_time_prekeys = Table(
    "one_time_prekeys",
    metadata,
    Column(
        "cell_id", LargeBinary(16), ForeignKey("cells.id", ondelete="CASCADE"), primary_key=True
    ),
    Column("prekey_id", BigInteger, primary_key=True),
    Column("public", LargeBinary(32), nullable=False),
)

channels = Table(
    "channels",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    # The pair is stored ordered (cell_a < cell_b) so each channel has exactly one row.
    Column("cell_a", LargeBinary(16), ForeignKey("cells.id", ondelete="CASCADE"), nullable=False),
    Column("cell_b", LargeBinary(16), ForeignKey("cells.id", ondelete="CASCADE"), nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    UniqueConstraint("cell_a", "cell_b"),
    CheckConstraint("cell_a < cell_b", name="ordered_pair"),
)

envelopes = Table(
    "envelopes",
    metadata,
    Column(
        "seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("recipient", LargeBinary(16), nullable=False),
    Column("sender", LargeBinary(16), nullable=False),
    Column("message_id", LargeBinary(16), nullable=False),
    Column("precedence", SmallInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Column("received_at_ms", BigInteger, nullable=False),
    Column("size", Integer, nullable=False),
    Column("data", LargeBinary, nullable=False),
    # Duplicate sends are stored once: the database, not a lookup, decides.
    UniqueConstraint("sender", "message_id"),
    # Delivery order (recipient, precedence, seq); ``size`` rides along so that the quota
    # check's count(*)/sum(size) per recipient is an index-only scan, not a table walk.
    Index(None, "recipient", "precedence", "seq", "size"),
    Index(None, "expires_at"),
    # ``seq`` must never be reused: SQLite's plain rowid hands out max(rowid)+1, which restarts
    # at 1 once a queue drains, so a late or repeated ack could delete a newer message.
    # AUTOINCREMENT keeps it monotonic (PostgreSQL's BIGSERIAL already is).
    sqlite_autoincrement=True,
)

# Tombstones of acknowledged envelopes: the (sender, message_id) pair and its relay_seq stay
# until the envelope's expiry, so a late resend is acknowledged again instead of being stored
# and delivered twice (SPEC.md M-REL-4). No content is kept.
delivered = Table(
    "delivered",
    metadata,
    Column("sender", LargeBinary(16), primary_key=True),
    Column("message_id", LargeBinary(16), primary_key=True),
    Column("seq", BigInteger, nullable=False),
    Column("expires_at", BigInteger, nullable=False),
    Index(None, "expires_at"),
)

# Notices owed to senders about envelopes the relay deleted undelivered (SPEC.md M-REL-12,
# M-REL-20): sent on the sender's live link, or when it next connects. ``error_code`` NULL is
# an expiry (EXPIRED frame); otherwise the notice is ERROR(error_code, ref=message_id), e.g.
# ``revoked`` for an envelope purged with its revoked recipient's queue.
expiry_notices = Table(
    "expiry_notices",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("sender", LargeBinary(16), nullable=False, index=True),
    Column("message_id", LargeBinary(16), nullable=False),
    Column("recipient", LargeBinary(16), nullable=False),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("error_code", String(64), nullable=True),
)

admin_tokens = Table(
    "admin_tokens",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False),
    Column("token_hash", LargeBinary(32), nullable=False, unique=True),
    Column("created_at_ms", BigInteger, nullable=False),
    Column("revoked_at_ms", BigInteger, nullable=True),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column(
        "id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    ),
    Column("at_ms", BigInteger, nullable=False),
    Column("actor", String(64), nullable=False),
    Column("action", String(64), nullable=False),
    Column("target", String(128), nullable=False),
    Column("detail", Text, nullable=False),
)
