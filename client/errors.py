"""The errors of the client SDK: one root, a stable ``code`` and a CLI exit status each.

Every failure a user can cause or meet (a wrong passphrase, an unknown peer, a relay that is
down, a peer whose key changed) is a :class:`ClientError` subclass, so an application catches
one type and shows ``error.code`` / ``str(error)``; the ``liaison cell`` CLI exits with
``error.exit_code``. Exceptions of the libraries underneath (sqlite3, PyNaCl, websockets, httpx)
never escape the public API: they are translated here.

==========================  ===========================  ====  =================================
class                       code                         exit  when
==========================  ===========================  ====  =================================
UnknownPeer                 ``unknown_peer``              10   no paired cell has that name/id
NotPaired                   ``not_paired``                11   the relay has no channel with it
KeyChanged                  ``key_changed``               12   the peer's identity key changed
RelayUnreachable            ``relay_unreachable``         13   the relay cannot be reached
BadCode                     ``bad_code``                  14   enrollment code refused (reason)
WrongPassphrase             ``wrong_passphrase``          15   passphrase does not open state
PassphraseRequired          ``passphrase_required``       15   the state is sealed, none given
CorruptState                ``corrupt_state``             16   the state file is unreadable
CellRevoked                 ``cell_revoked``              17   this cell was revoked
CellSuspended               ``cell_suspended``            18   this cell is suspended
NotEnrolled                 ``not_enrolled``              19   no enrolled cell in that home
AlreadyEnrolled             ``already_enrolled``          20   the home already holds a cell
CellReplaced                ``replaced``                  21   another process took the link
PeerRevoked                 ``peer_revoked``              22   the peer cell was revoked
PeerUnavailable             ``peer_unavailable``          23   the peer has no prekeys (yet)
MessageTooLarge             ``message_too_large``         24   the body fits no envelope
UnknownMessage              ``unknown_message``           25   no sent message with that id
ProtocolFailure             ``protocol_error``            26   the relay broke the protocol
StateLocked                 ``state_locked``              27   another process holds the file
AlreadyListening            ``already_listening``         28   another process receives (listen)
LinkHeld                    ``link_held``                 29   another process holds the link
HandoffFailed               ``handoff_failed``            30   the link holder did not answer
StatusTimeout               ``status_timeout``            31   ``wait_status`` timed out first
SendFailed                  ``send_failed``               32   the relay refused the message
MessageExpired              ``message_expired``           33   it expired before that status
SafetyNumberMismatch        ``safety_number_mismatch``    34   the number given is not the one
BackupFailed                ``backup_failed``             35   a backup cannot be written
BadBackup                   ``bad_backup``                36   the file is not a cell backup
StateConflict               ``state_conflict``            37   the home's state forbids it
RelayMismatch               ``relay_mismatch``            38   relocate: another relay's key
==========================  ===========================  ====  =================================

``StatusTimeout`` is also a builtin ``TimeoutError``. ``StatusTimeout``, ``SendFailed`` and
``MessageExpired`` carry ``message_id`` and ``status`` (the status reached);
``SafetyNumberMismatch`` carries ``peer``. ``KeyChanged``'s text names the SDK's
``accept_new_key=True``; the CLI prints its own text naming its flags.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "AlreadyEnrolled",
    "AlreadyListening",
    "BackupFailed",
    "BadBackup",
    "BadCode",
    "CellReplaced",
    "CellRevoked",
    "CellSuspended",
    "ClientError",
    "CorruptState",
    "HandoffFailed",
    "KeyChanged",
    "LinkHeld",
    "MessageExpired",
    "MessageTooLarge",
    "NotEnrolled",
    "NotPaired",
    "PassphraseRequired",
    "PeerRevoked",
    "PeerUnavailable",
    "ProtocolFailure",
    "RelayMismatch",
    "RelayUnreachable",
    "SafetyNumberMismatch",
    "SendFailed",
    "StateConflict",
    "StateLocked",
    "StatusTimeout",
    "UnknownMessage",
    "UnknownPeer",
    "WrongPassphrase",
]


class ClientError(Exception):
    """Root of every error the client SDK raises. ``code`` is stable; ``exit_code`` is the
    status the ``liaison cell`` CLI exits with."""

    code: ClassVar[str] = "client_error"
    exit_code: ClassVar[int] = 1
    default_message: ClassVar[str] = "the operation failed"
    relayed: bool = False
    """Raised again from another process's answer (``error_for_code``): only the message
    came across, already worded for the CLI; no other attribute of the class is set."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.default_message)


class _PeerError(ClientError):
    """An error about one peer, named by ``peer`` (a name or a hex cell id)."""

    def __init__(self, peer: str, message: str | None = None) -> None:
        self.peer = peer
        super().__init__(message or self.default_message.format(peer=peer))


class UnknownPeer(_PeerError):
    code = "unknown_peer"
    exit_code = 10
    default_message = "no paired cell is called {peer!r}"


class NotPaired(_PeerError):
    code = "not_paired"
    exit_code = 11
    default_message = "this cell is not paired with {peer!r}"


class KeyChanged(_PeerError):
    code = "key_changed"
    exit_code = 12
    default_message = (
        "the identity key of {peer!r} has changed: compare the new safety number "
        "(safety_number(peer, new_key=True)) out of band, then accept it with "
        "verify(peer, accept_new_key=True, safety_number=...)"
    )


class RelayUnreachable(ClientError):
    code = "relay_unreachable"
    exit_code = 13
    default_message = "the relay cannot be reached"


class BadCode(ClientError):
    """The enrollment code was refused. ``reason`` is the relay's code (``bad_code``,
    ``code_used``, ``code_expired``, ``cell_not_pending``, ...) or a local one
    (``malformed``, ``wrong_relay``, ``name_mismatch``)."""

    code = "bad_code"
    exit_code = 14
    default_message = "the enrollment code was refused"

    def __init__(self, reason: str, message: str | None = None) -> None:
        self.reason = reason
        super().__init__(message or f"the enrollment code was refused: {reason}")


class WrongPassphrase(ClientError):
    code = "wrong_passphrase"
    exit_code = 15
    default_message = "the passphrase does not open this cell's state"


class PassphraseRequired(WrongPassphrase):
    code = "passphrase_required"
    default_message = "this cell's state is sealed: a passphrase is required"


class CorruptState(ClientError):
    code = "corrupt_state"
    exit_code = 16
    default_message = "the cell's state file is unreadable or corrupted"


class CellRevoked(ClientError):
    code = "cell_revoked"
    exit_code = 17
    default_message = "this cell has been revoked by the relay's administrators"


class CellSuspended(ClientError):
    code = "cell_suspended"
    exit_code = 18
    default_message = "this cell is suspended by the relay's administrators"


class NotEnrolled(ClientError):
    code = "not_enrolled"
    exit_code = 19
    default_message = "no enrolled cell in this home directory"


class AlreadyEnrolled(ClientError):
    code = "already_enrolled"
    exit_code = 20
    default_message = "this home directory already holds an enrolled cell"


class CellReplaced(ClientError):
    code = "replaced"
    exit_code = 21
    default_message = "another connection of this cell replaced this one"


class PeerRevoked(_PeerError):
    code = "peer_revoked"
    exit_code = 22
    default_message = "the cell {peer!r} has been revoked"


class PeerUnavailable(_PeerError):
    code = "peer_unavailable"
    exit_code = 23
    default_message = "{peer!r} has not published prekeys (is it enrolled?)"


class MessageTooLarge(ClientError):
    """``size``: the body's bytes; ``limit``: the most that fit one message (when known)."""

    code = "message_too_large"
    exit_code = 24
    default_message = "the message does not fit the largest envelope"

    def __init__(
        self, message: str | None = None, *, size: int | None = None, limit: int | None = None
    ) -> None:
        self.size = size
        self.limit = limit
        super().__init__(message)


class UnknownMessage(ClientError):
    code = "unknown_message"
    exit_code = 25
    default_message = "no message with that id was sent from this cell"


class ProtocolFailure(ClientError):
    code = "protocol_error"
    exit_code = 26
    default_message = "the relay answered something the protocol does not allow"


class StateLocked(ClientError):
    code = "state_locked"
    exit_code = 27
    default_message = "the cell's state file is locked by another process"


class AlreadyListening(ClientError):
    """Exactly one process receives for a home (``liaison cell listen``)."""

    code = "already_listening"
    exit_code = 28
    default_message = "another process is receiving for this home (a 'liaison cell listen')"


class LinkHeld(ClientError):
    """Another process of this home holds its link to the relay (a ``listen``, a CLI command
    or an SDK program). Opening a second link would replace that one, so it is refused: run
    beside it with ``connect=False``, or let the ``liaison`` CLI hand its work to it."""

    code = "link_held"
    exit_code = 29
    default_message = (
        "another process holds this home's link to the relay; use connect=False beside it"
    )


class HandoffFailed(ClientError):
    """The process holding this home's link took a request and did not answer it (it ended
    meanwhile). The request may or may not have been carried out: check (``outbox``)."""

    code = "handoff_failed"
    exit_code = 30
    default_message = "the process holding this home's link did not answer; check the outbox"


class _StatusError(ClientError):
    """About one sent message: ``message_id`` (hex) and the ``status`` it has."""

    def __init__(self, message_id: str, status: str, message: str | None = None) -> None:
        self.message_id = message_id
        self.status = status
        super().__init__(message or self.default_message)


class StatusTimeout(_StatusError, TimeoutError):
    """``Cell.wait_status`` gave up before the message reached the status asked for: the
    timeout passed (or the cell was closed). ``until`` is the status waited for, ``status``
    the one reached; the message is still in the outbox and may get there later."""

    code = "status_timeout"
    exit_code = 31
    default_message = "the message did not reach the status asked for in time"

    def __init__(self, message_id: str, status: str, until: str, timeout: float | None) -> None:
        self.until = until
        self.timeout = timeout
        within = "" if timeout is None else f" within {timeout:g} s"
        super().__init__(
            message_id, status, f"message {message_id} not {until}{within} (it is {status})"
        )


class SendFailed(_StatusError):
    """The relay refused the message for good (its status is ``failed``). ``reason`` is the
    relay's error code (``bad_expiry``, ``queue_full``, ``not_paired``, ``revoked``,
    ``envelope_too_large``, ...); ``detail`` the relay's explanation, if this process heard
    it (relay-controlled text: escape it before showing it)."""

    code = "send_failed"
    exit_code = 32
    default_message = "the relay refused the message"

    def __init__(self, message_id: str, reason: str | None, detail: str = "") -> None:
        self.reason = reason or "unknown"
        self.detail = detail
        text = f"the relay refused message {message_id}: {self.reason}"
        super().__init__(message_id, "failed", text + (f" ({detail})" if detail else ""))


class MessageExpired(_StatusError):
    """The message expired (its TTL passed) before it reached the status asked for: the
    relay dropped it undelivered, or it never left this cell."""

    code = "message_expired"
    exit_code = 33
    default_message = "the message expired"

    def __init__(self, message_id: str, detail: str | None = None) -> None:
        text = f"message {message_id} expired undelivered"
        super().__init__(message_id, "expired", text + (f" ({detail})" if detail else ""))


class SafetyNumberMismatch(_PeerError):
    """The safety number given to ``Cell.verify(..., safety_number=)`` is not the one with
    the peer (of its new key, when accepting a changed key): nothing was verified or
    accepted."""

    code = "safety_number_mismatch"
    exit_code = 34
    default_message = (
        "the number given is not the safety number with {peer!r}: nothing was verified or accepted"
    )


class BackupFailed(ClientError):
    """``liaison cell backup``: the target exists (never overwritten) or cannot be written."""

    code = "backup_failed"
    exit_code = 35


class BadBackup(ClientError):
    """``liaison cell restore``: the file is not a readable Liaison cell backup."""

    code = "bad_backup"
    exit_code = 36


class StateConflict(ClientError):
    """The home's state does not allow the operation: a restore over an enrolled home
    (without ``--force``), sealing a sealed home, changing the passphrase of an unsealed one."""

    code = "state_conflict"
    exit_code = 37


class RelayMismatch(ClientError):
    """``relocate``: the relay at the new address has another static key than the pinned one,
    and no enrollment code from it vouches for that key."""

    code = "relay_mismatch"
    exit_code = 38
    default_message = "the relay at that address has another key than the pinned one"


def error_for_code(code: str, message: str) -> ClientError:
    """A :class:`ClientError` of the class whose ``code`` is ``code`` (``ClientError`` if none
    is), carrying ``message``: how an error crosses the local hand-off socket."""
    pending: list[type[ClientError]] = [ClientError]
    while pending:
        kind = pending.pop()
        if kind.code == code:
            error = kind.__new__(kind)
            Exception.__init__(error, message)
            error.relayed = True
            return error
        pending.extend(kind.__subclasses__())
    return ClientError(message)
