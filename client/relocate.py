"""Moving a cell to a relay at another address: ``liaison cell relocate --server URL``.

Theory of operation
-------------------
The relay's URL and static key are pinned in the home at enrollment (SPEC.md M-ENR-3: a cell
never accepts a relay key from the network). :func:`relocate` fetches the key the relay at the
new URL announces (``GET /v1/relay``) and then:

* **Same key**: the same relay moved (new host name, port, proxy). Only the URL changes.
* **Another key, with a code**: the key is accepted only because a new enrollment code from
  that relay's admin carries its fingerprint (the same proof as a first enrollment). The cell
  then enrolls its *existing* identity and link keys there with the code (fresh one-time
  prekeys), and pins the new URL, relay key, cell id and name in one transaction. The new
  relay has its own channels: its admin pairs the cell again; peers' identity keys, pinned and
  verified here, are unchanged, so safety numbers stay the same.
* **Another key, no code** (or a code for yet another key): refused, nothing changes
  (:class:`RelayMismatch`, exit 38; ``BadCode("wrong_relay")``, exit 14).

Stop a running ``listen`` of the home first; it keeps the address it started with.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

import httpx

from liaison.protocol.enrollment import (
    EnrollmentInitiator,
    build_request,
    relay_key_fingerprint,
)
from liaison.protocol.errors import LiaisonError
from liaison.protocol.keys import OneTimePrekey, SignedKemPrekey, SignedPrekey

from .enroll import ENROLL_ONE_TIME_PREKEYS, _relay_key, parse_code, refusal
from .errors import BadCode, NotEnrolled, ProtocolFailure, RelayMismatch, RelayUnreachable
from .state import Store

__all__ = ["Relocated", "relay_fingerprint", "relocate"]


@dataclass(frozen=True, slots=True)
class Relocated:
    server: str
    relay_fingerprint: str
    same_relay: bool  # False: re-enrolled at another relay with a code
    cell_id: str
    name: str


def relay_fingerprint(key: bytes) -> str:
    """The relay key fingerprint as ``liaison server run`` prints it (8 groups of 4 hex)."""
    raw = relay_key_fingerprint(key).hex()
    return " ".join(raw[i : i + 4] for i in range(0, len(raw), 4))


async def relocate(
    home: Path,
    *,
    server: str,
    code: str | None = None,
    passphrase: str | bytes | None = None,
    http: httpx.AsyncClient | None = None,
    timeout: float = 10.0,
) -> Relocated:
    """Point the cell of ``home`` at ``server`` (see the module docstring)."""
    parsed = None if code is None else parse_code(code)
    server = server.rstrip("/")
    store = await asyncio.to_thread(Store.open, Path(home), passphrase)
    client = http or httpx.AsyncClient(timeout=timeout)
    try:
        if store.cell_id is None or store.keys is None:
            raise NotEnrolled(f"no enrolled cell in {home}")
        key = await _relay_key(client, server)
        if key == store.relay_key:
            with store.transaction():
                store.set_meta("server_url", server.encode())
            return _result(store, server, key, same=True)
        if parsed is None:
            raise RelayMismatch(
                f"the relay at {server} has another key ({relay_fingerprint(key)}) than the one "
                f"this cell pinned ({relay_fingerprint(store.relay_key)}): nothing changed; if "
                "it is a new relay, give --code with an enrollment code from its admin"
            )
        if not parsed.matches(key):
            raise BadCode("wrong_relay", f"the code is not for the relay at {server} (its key "
                          "does not match the code's fingerprint): nothing changed")  # fmt: skip
        await _enroll_here(store, client, server, key, parsed.secret)
        return _result(store, server, key, same=False)
    finally:
        store.close()
        if http is None:
            await client.aclose()


def _result(store: Store, server: str, key: bytes, *, same: bool) -> Relocated:
    assert store.cell_id is not None
    return Relocated(server, relay_fingerprint(key), same, store.cell_id.hex(), store.name)


async def _enroll_here(
    store: Store, client: httpx.AsyncClient, server: str, relay_key: bytes, secret: bytes
) -> None:
    """Enroll the existing keys at the relay of ``relay_key``; pin it on success."""
    keys = store.keys
    assert keys is not None
    with store.transaction():  # fresh ones: never hand one prekey to two relays
        prekeys = store.new_one_time_prekeys(ENROLL_ONE_TIME_PREKEYS)
    request = build_request(
        secret, keys.identity, bytes(keys.link.public),
        SignedPrekey.create(keys.identity, keys.spk_id, keys.spk),
        SignedKemPrekey.create(keys.identity, keys.kem_id, keys.kem),
        tuple(OneTimePrekey(i, pair.public) for i, pair in prekeys),
    )  # fmt: skip
    initiator = EnrollmentInitiator(keys.link.private_bytes(), relay_key)
    try:
        response = await client.post(f"{server}/v1/enroll", content=initiator.request(request))
    except httpx.HTTPError as exc:
        raise RelayUnreachable(f"the enrollment request to {server} failed: {exc}") from None
    if response.status_code != 200:
        raise ProtocolFailure(f"the relay refused the enrollment message "
                              f"(HTTP {response.status_code})")  # fmt: skip
    try:
        answer = initiator.response(response.content)
    except LiaisonError as exc:
        raise ProtocolFailure(f"the enrollment answer did not authenticate: {exc}") from None
    if answer.error is not None:
        raise refusal(answer.error, None)
    assert answer.cell_id is not None
    with store.transaction():
        store.set_meta("server_url", server.encode())
        store.set_meta("relay_key", relay_key)
        store.set_meta("cell_id", answer.cell_id)
        store.set_meta("cell_name", answer.name.encode())
