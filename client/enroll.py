"""Enrolling a new cell with a relay (SPEC.md §5.4) and writing its first state.

Theory of operation
-------------------
1. Parse the code (``BadCode("malformed")``); fetch the relay's static key with
   ``GET /v1/relay`` and accept it only if it matches the code's fingerprint (M-ENR-3:
   ``BadCode("wrong_relay")`` otherwise). The key is pinned; later links use only it.
2. Generate the identity, link key, signed prekey, KEM prekey and one-time prekeys and commit
   them, with the server URL and the pinned relay key, to a new state file **before** the
   request goes out: if the outcome of the request is unknown (the connection broke), the
   next attempt re-sends the same keys instead of orphaning an enrolled cell.
3. ``POST /v1/enroll`` carries Noise IK message 1 (the secret, encrypted to the pinned key,
   M-ENR-4); the answer is message 2, authenticated, with the cell id (M-ENR-8) or a refusal.
   With ``name`` the request is version 2 and carries it: the relay refuses another cell's
   code with ``name_mismatch`` *without* using it up (M-ENR-10).
4. Success: store the cell id and name. Refusal: ``BadCode(reason)`` saying what to do next,
   and the new state file is removed (it held nothing of value), with the directories this
   attempt created if they are empty again (never a directory that existed before, nor any
   other file). An attempt that resumes earlier keys and hears ``code_used`` checks, over a
   link handshake, whether those keys were in fact enrolled.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import httpx

from liaison.protocol.enrollment import (
    EnrollError,
    EnrollmentCode,
    EnrollmentInitiator,
    EnrollResponse,
    build_request,
)
from liaison.protocol.errors import LiaisonError, MalformedData
from liaison.protocol.keys import (
    IdentityKeyPair,
    KemKeyPair,
    OneTimePrekey,
    SignedKemPrekey,
    SignedPrekey,
    X25519KeyPair,
)

from .errors import AlreadyEnrolled, BadCode, NotEnrolled, ProtocolFailure, RelayUnreachable
from .link import LinkFailed, open_link
from .state import Keys, Store
from .transport import Transport, WebSocketTransport

__all__ = ["ENROLL_ONE_TIME_PREKEYS", "ask_admin", "enroll", "parse_code", "refusal"]

ENROLL_ONE_TIME_PREKEYS = 100


async def enroll(
    home: Path,
    *,
    server: str,
    code: str,
    name: str | None = None,
    passphrase: str | bytes | None = None,
    http: httpx.AsyncClient | None = None,
    transport: Transport | None = None,
    one_time_prekeys: int = ENROLL_ONE_TIME_PREKEYS,
    timeout: float = 10.0,
) -> tuple[bytes, str, bytes]:
    """Enroll the cell of ``home``; returns ``(cell_id, name, identity public key)``. See the
    module docstring."""
    parsed = parse_code(code, name)
    server = server.rstrip("/")
    client = http or httpx.AsyncClient(timeout=timeout)
    home = Path(home)
    created = _missing_dirs(home)
    try:
        relay_key = await _relay_key(client, server)
        if not parsed.matches(relay_key):
            raise BadCode("wrong_relay", f"the enrollment code is not for the relay at {server} "
                          "(its key does not match the code's fingerprint): check --server "
                          "(LIAISON_SERVER)")  # fmt: skip
        store, resumed = await _prepare(home, passphrase, relay_key)
        try:
            return await _enroll(store, resumed, client, server, parsed, relay_key, name,
                                 transport, one_time_prekeys, timeout)  # fmt: skip
        finally:
            store.close()
    except BaseException:
        if not Store.exists(home):  # the attempt kept nothing: neither do its directories
            _remove_empty(created)
        raise
    finally:
        if http is None:
            await client.aclose()


def parse_code(code: str, name: str | None = None) -> EnrollmentCode:
    """The code, or ``BadCode("malformed")`` saying what to do next."""
    try:
        return EnrollmentCode.parse(code)
    except MalformedData as exc:
        raise BadCode("malformed", f"the enrollment code is malformed: {exc}; check it, or "
                      f"{ask_admin(name)}") from None  # fmt: skip


def ask_admin(name: str | None) -> str:
    return f"ask the admin for a new code: liaison admin cell code {name or 'NAME'}"


_REFUSALS = {
    EnrollError.BAD_CODE: "the relay does not know this enrollment code (mistyped, or replaced "
    "by a newer code)",
    EnrollError.CODE_USED: "this enrollment code was already used",
    EnrollError.CODE_EXPIRED: "this enrollment code has expired",
    EnrollError.CELL_NOT_PENDING: "the cell of this code can no longer enroll (suspended or "
    "revoked)",
}


def refusal(reason: str, name: str | None) -> BadCode:
    """The relay's refusal ``reason`` as a ``BadCode`` whose text says what to do next."""
    if reason == EnrollError.NAME_MISMATCH:
        return BadCode(reason, f"this enrollment code is not for a cell named {name!r} (the code "
                       "was not used): check --name, or leave it out")  # fmt: skip
    what = _REFUSALS.get(reason, f"the enrollment code was refused ({reason})")
    return BadCode(reason, f"{what}: {ask_admin(name)}")


def _missing_dirs(home: Path) -> list[Path]:
    """``home`` and its parents that do not exist yet, deepest first."""
    missing: list[Path] = []
    for directory in (home, *home.parents):
        if directory.exists() or directory.is_symlink():
            break
        missing.append(directory)
    return missing


def _remove_empty(directories: list[Path]) -> None:
    for directory in directories:  # deepest first; rmdir removes only an empty directory
        try:
            directory.rmdir()
        except OSError:
            return


async def _relay_key(client: httpx.AsyncClient, server: str) -> bytes:
    try:
        response = await client.get(f"{server}/v1/relay")
    except httpx.HTTPError as exc:
        raise RelayUnreachable(f"cannot reach the relay at {server}: {exc}") from None
    if response.status_code != 200:
        raise RelayUnreachable(f"{server} is not a Liaison relay (HTTP {response.status_code})")
    try:
        key = bytes.fromhex(response.json()["static_key"])
    except (ValueError, KeyError, TypeError):
        raise RelayUnreachable(f"{server} did not describe a Liaison relay") from None
    if len(key) != 32:
        raise RelayUnreachable(f"{server} announced a malformed relay key")
    return key


async def _prepare(home: Path, passphrase: str | bytes | None, relay_key: bytes
                   ) -> tuple[Store, bool]:  # fmt: skip
    """The state file to enroll with, and whether it resumes an interrupted attempt."""
    if Store.exists(home):
        try:
            store = await asyncio.to_thread(Store.open, home, passphrase)
        except NotEnrolled:
            Store.remove(home)  # an empty file left by a crash during creation
        else:
            if store.cell_id is not None:
                enrolled = store.name
                store.close()
                raise AlreadyEnrolled(f"{home} already holds the cell {enrolled!r}")
            if store.keys is not None and store.get_meta("relay_key") == relay_key:
                return store, True
            store.close()  # keys for another relay, never used: start again
            Store.remove(home)
    return await asyncio.to_thread(Store.create, home, passphrase), False


async def _enroll(
    store: Store, resumed: bool, client: httpx.AsyncClient, server: str, code: EnrollmentCode,
    relay_key: bytes, name: str | None, transport: Transport | None, count: int, timeout: float,
) -> tuple[bytes, str, bytes]:  # fmt: skip
    if resumed:
        assert store.keys is not None
        keys, prekeys = store.keys, store.all_one_time_prekeys()[:200]
    else:
        keys = Keys(IdentityKeyPair.generate(), X25519KeyPair.generate(), 1,
                    X25519KeyPair.generate(), 1, KemKeyPair.generate())  # fmt: skip
        with store.transaction():
            store.store_keys(keys)
            prekeys = store.new_one_time_prekeys(min(max(count, 0), 200))
            store.set_meta("server_url", server.encode())
            store.set_meta("relay_key", relay_key)
    request = build_request(
        code.secret, keys.identity, bytes(keys.link.public),
        SignedPrekey.create(keys.identity, keys.spk_id, keys.spk),
        SignedKemPrekey.create(keys.identity, keys.kem_id, keys.kem),
        tuple(OneTimePrekey(i, pair.public) for i, pair in prekeys), name,
    )  # fmt: skip
    initiator = EnrollmentInitiator(keys.link.private_bytes(), relay_key)
    try:
        response = await client.post(f"{server}/v1/enroll", content=initiator.request(request))
    except httpx.HTTPError as exc:  # outcome unknown: keep the keys for the next attempt
        raise RelayUnreachable(f"the enrollment request to {server} failed: {exc}") from None
    if response.status_code != 200:
        _discard(store, resumed)
        if response.status_code >= 500:
            raise RelayUnreachable(f"the relay failed (HTTP {response.status_code})")
        raise ProtocolFailure(f"the relay refused the enrollment message "
                              f"(HTTP {response.status_code})")  # fmt: skip
    try:
        answer = initiator.response(response.content)
    except LiaisonError as exc:
        _discard(store, resumed)
        raise ProtocolFailure(f"the enrollment answer did not authenticate: {exc}") from None
    if answer.error is not None:
        recovered = None
        if resumed and answer.error == "code_used":
            recovered = await _recover(store, server, relay_key, transport, timeout, name)
        if recovered is None:
            _discard(store, resumed)
            raise refusal(answer.error, name)
        answer = recovered
    assert answer.cell_id is not None
    with store.transaction():
        store.set_meta("cell_id", answer.cell_id)
        store.set_meta("cell_name", answer.name.encode())
    if name is not None and name != answer.name:
        raise BadCode("name_mismatch", f"the code enrolled this home as {answer.name!r}, not "
                      f"{name!r} (the enrollment stands)")  # fmt: skip
    return answer.cell_id, answer.name, bytes(keys.identity.public)


def _discard(store: Store, resumed: bool) -> None:
    if not resumed:
        store.close()
        Store.remove(store.path.parent)


async def _recover(store: Store, server: str, relay_key: bytes, transport: Transport | None,
                   timeout: float, name: str | None) -> EnrollResponse | None:  # fmt: skip
    """Did an earlier, interrupted attempt with these keys succeed? Ask the relay's link."""
    assert store.keys is not None
    transport = transport or WebSocketTransport.for_server(server)
    try:
        link = await open_link(transport, store.keys.link, relay_key, None, timeout=timeout)
    except LinkFailed:
        return None
    with contextlib.suppress(Exception):
        await link.close()
    return EnrollResponse(cell_id=link.cell_id, name=name or "")
