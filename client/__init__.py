"""Liaison client SDK: enroll a cell, send and receive end-to-end-encrypted messages.

``from liaison.client import Cell`` — see :mod:`liaison.client.cell`. The package needs only
the base dependencies (PyNaCl, cryptography, websockets, httpx, click); it never imports the
relay (``liaison.server``).
"""

from __future__ import annotations

from .cell import Cell
from .errors import (
    AlreadyEnrolled,
    AlreadyListening,
    BadCode,
    CellReplaced,
    CellRevoked,
    CellSuspended,
    ClientError,
    CorruptState,
    HandoffFailed,
    KeyChanged,
    LinkHeld,
    MessageExpired,
    MessageTooLarge,
    NotEnrolled,
    NotPaired,
    PassphraseRequired,
    PeerRevoked,
    PeerUnavailable,
    ProtocolFailure,
    RelayUnreachable,
    SafetyNumberMismatch,
    SendFailed,
    StateLocked,
    StatusTimeout,
    UnknownMessage,
    UnknownPeer,
    WrongPassphrase,
)
from .models import Message, OutboxEntry, Peer, Status
from .transport import MemoryTransport, Transport, WebSocketTransport

__all__ = [
    "AlreadyEnrolled",
    "AlreadyListening",
    "BadCode",
    "Cell",
    "CellReplaced",
    "CellRevoked",
    "CellSuspended",
    "ClientError",
    "CorruptState",
    "HandoffFailed",
    "KeyChanged",
    "LinkHeld",
    "MemoryTransport",
    "Message",
    "MessageExpired",
    "MessageTooLarge",
    "NotEnrolled",
    "NotPaired",
    "OutboxEntry",
    "PassphraseRequired",
    "Peer",
    "PeerRevoked",
    "PeerUnavailable",
    "ProtocolFailure",
    "RelayUnreachable",
    "SafetyNumberMismatch",
    "SendFailed",
    "StateLocked",
    "Status",
    "StatusTimeout",
    "Transport",
    "UnknownMessage",
    "UnknownPeer",
    "WebSocketTransport",
    "WrongPassphrase",
]
