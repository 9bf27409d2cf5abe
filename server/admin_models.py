"""The JSON shapes of the admin API, named once (requests reject unknown fields).

Times are ISO 8601 UTC timestamps; ids of cells are 32 lowercase hex digits (16 bytes).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from .admin_auth import TOKEN_NAME_MAX, TOKEN_NAME_PATTERN
from .directory import CellRecord, CellStatus

__all__ = [
    "CELL_NAME_PATTERN",
    "AuditEntryOut",
    "CellCreate",
    "CellCreated",
    "CellDetail",
    "CellListed",
    "CellName",
    "CellPresence",
    "CellSummary",
    "ChannelCreate",
    "ChannelInfo",
    "EnrollmentCodeIssued",
    "TokenCreate",
    "TokenCreated",
    "TokenInfo",
    "ms_to_datetime",
]

CELL_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]*$"

CellName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=64, pattern=CELL_NAME_PATTERN),
    Field(
        description="1-64 characters of [a-z0-9._-], starting with a letter or digit.",
        examples=["attache-paris"],
    ),
]

TokenName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=TOKEN_NAME_MAX, pattern=TOKEN_NAME_PATTERN),
    Field(description=f"1-{TOKEN_NAME_MAX} characters of [A-Za-z0-9._@-].", examples=["ops"]),
]


def ms_to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _maybe_datetime(ms: int | None) -> datetime | None:
    return None if ms is None else ms_to_datetime(ms)


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CellCreate(_Request):
    name: CellName


class ChannelCreate(_Request):
    a: CellName
    b: CellName


class TokenCreate(_Request):
    name: TokenName


class CellCreated(BaseModel):
    id: str = Field(description="32 hex digits.")
    name: str
    status: CellStatus
    enrollment_code: str = Field(description="Shown once: give it to the cell's operator.")
    code_expires_at: datetime


class EnrollmentCodeIssued(BaseModel):
    name: str
    enrollment_code: str = Field(description="Shown once; earlier unused codes stop working.")
    code_expires_at: datetime


class CellSummary(BaseModel):
    id: str
    name: str
    status: CellStatus
    created_at: datetime
    enrolled_at: datetime | None
    status_changed_at: datetime

    @classmethod
    def of(cls, cell: CellRecord) -> CellSummary:
        return cls(
            id=cell.id.hex(),
            name=cell.name,
            status=cell.status,
            created_at=ms_to_datetime(cell.created_at_ms),
            enrolled_at=_maybe_datetime(cell.enrolled_at_ms),
            status_changed_at=ms_to_datetime(cell.status_changed_at_ms),
        )


class CellPresence(BaseModel):
    """Where the cell stands now (``GET /cells``, ``GET /cells/{name}``)."""

    online: bool | None = Field(
        default=None,
        description="Linked to a relay node now (within a second of link up/down; a node that "
        "died leaves it online for at most 2.5 presence refresh intervals). Null where not "
        "reported.",
    )
    last_seen_at: datetime | None = Field(
        default=None,
        description="When a relay node last saw the cell linked (at most one presence refresh "
        "interval, 60 s by default, old while it is linked); null if never since the relay "
        "started recording it.",
    )
    code_expires_at: datetime | None = Field(
        default=None,
        description="Pending cells: when the current unused enrollment code expires (it may "
        "be in the past: then issue a new code).",
    )


class CellListed(CellSummary, CellPresence):
    """A cell in ``GET /cells``."""


class CellDetail(CellListed):
    identity_fingerprint: str | None = Field(
        description="First 16 hex digits of SHA-256(identity key); null until enrolled."
    )
    channels: list[str] = Field(description="Names of the cells this cell is paired with.")
    queue_depth: int = Field(description="Envelopes queued for this cell.")
    one_time_prekeys: int = Field(description="One-time prekeys this cell has left.")


class ChannelInfo(BaseModel):
    a: str = Field(description="The cell with the smaller id.")
    b: str
    created_at: datetime


class TokenCreated(BaseModel):
    id: int
    name: str
    token: str = Field(description="Shown once: the relay keeps only its hash.")
    created_at: datetime


class TokenInfo(BaseModel):
    id: int
    name: str
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def of(cls, row: Any) -> TokenInfo:
        return cls(
            id=row.id,
            name=row.name,
            created_at=ms_to_datetime(row.created_at_ms),
            revoked_at=_maybe_datetime(row.revoked_at_ms),
        )


class AuditEntryOut(BaseModel):
    id: int
    at: datetime
    actor: str = Field(description="The admin token as name#id, or 'console'.")
    action: str = Field(examples=["cell.revoke"])
    target: str
    detail: dict[str, Any]
